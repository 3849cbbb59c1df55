"""ltray's own CF values are chosen on a validation split carved from train, as the baselines' are."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.cf.als import ALSRecall
from ltray.cf.tune import chosen_params, tune_cf, with_cf
from ltray.config import Config, ConfigError, load_config
from ltray.data.synthetic import generate
from ltray.validation import coordinate_search, one_se_largest


def _with_cf(cfg: Config, **cf) -> Config:
    d = cfg.to_dict()
    return Config.model_validate({**d, "cf": {**d["cf"], **cf}})


def test_tune_picks_the_point_with_the_best_validation_recall(small_config, small_synthetic):
    cfg = _with_cf(small_config, iterations=4, tune=True, mix=None,
                   tune_grid={"factors": [4, 32], "weighting": ["binary", "alpha"]})
    chosen, search = tune_cf(small_synthetic.interactions, small_synthetic.items["item_id"].to_numpy(), cfg)
    trials = search["als"]["trials"]
    best = max(trials, key=lambda t: t["Recall@20"])
    assert (chosen.factors, chosen.weighting) == (best["factors"], best["weighting"])
    assert len({round(t["Recall@20"], 6) for t in trials}) > 1  # the grid points really differ
    # The item-item model and the mix are chosen the same way, and the mix includes either source alone.
    assert chosen.item.kind in search["item"]
    by_mix = search["mix"]["Recall@20"]
    assert {0.0, 1.0} <= set(by_mix) and by_mix[chosen.mix] == max(by_mix.values())
    assert with_cf(cfg, chosen_params(chosen)).cf == chosen


def test_tune_off_keeps_the_configured_values(small_config, small_synthetic):
    cfg = _with_cf(small_config, tune=False, factors=12, mix=None)
    chosen, search = tune_cf(small_synthetic.interactions, small_synthetic.items["item_id"].to_numpy(), cfg)
    assert search == {} and chosen.factors == 12 and chosen.mix == 0.0


@pytest.mark.parametrize(("synthetic", "high"), [
    # Few items, many interactions each, weak topics: confident positives pay (validation picks alpha 40).
    ({"n_items": 300, "n_users": 400, "interactions_per_user": 60, "topic_affinity": 0.3}, True),
    # A sparse catalog of a few interactions per user: high confidence over-fits them (alpha 1).
    ({"n_items": 3000, "n_users": 400, "interactions_per_user": 8}, False),
])
def test_alpha_follows_the_data(synthetic, high):
    over = [f"data.synthetic.{k}={v}" for k, v in synthetic.items()]
    cfg = load_config(overrides=[*over, "cf.iterations=8", "cf.weighting=binary", "cf.mix=0",
                                 'cf.tune_grid={"alpha": [1.0, 4.0, 16.0, 40.0]}', "cf.item.tune_grid={}"])
    ds = generate(cfg.data.synthetic)
    chosen, search = tune_cf(ds.interactions, ds.items["item_id"].to_numpy(), cfg)
    assert chosen.alpha == max(search["als"]["trials"], key=lambda t: t["Recall@20"])["alpha"]
    assert chosen.alpha >= 16 if high else chosen.alpha <= 4


def test_coordinate_search_moves_one_field_at_a_time_and_keeps_the_start_on_ties():
    grid = {"a": [0, 1, 2], "b": [0, 1, 2]}
    score = lambda p: -((p["a"] - 2) ** 2) - (p["b"] - 1) ** 2  # noqa: E731
    best, value, trials = coordinate_search(grid, {"a": 0, "b": 0}, score)
    assert best == {"a": 2, "b": 1} and value == 0
    assert len(trials) == 5  # start, a=1, a=2, b=1, b=2: each point once
    flat, _, _ = coordinate_search(grid, {"a": 1, "b": 1}, lambda p: 0.0)
    assert flat == {"a": 1, "b": 1}


def test_a_penalty_takes_the_largest_value_within_one_standard_error_of_the_best():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 500)
    noise = rng.normal(0, 0.2, 500)
    near = {20.0: base + 0.004 + noise - noise.mean(), 200.0: base, 2000.0: base - 0.1}
    point, value, trials = one_se_largest("l2", [200.0, 20.0, 2000.0], lambda p: near[p["l2"]])
    assert near[20.0].mean() > near[200.0].mean()  # 20 leads, within its noise: the stronger penalty wins
    assert point == {"l2": 200.0} and value == pytest.approx(base.mean())
    assert [t["l2"] for t in trials] == [200.0, 20.0, 2000.0] and all("fit_s" in t for t in trials)
    clear = {20.0: base + 0.05, 200.0: base, 2000.0: base - 0.1}  # 20 better at every user
    assert one_se_largest("l2", [20.0, 200.0, 2000.0], lambda p: clear[p["l2"]])[0] == {"l2": 20.0}


def test_binary_weighting_ignores_the_weights():
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 40, 600), rng.integers(0, 60, 600)
    cfg = load_config(overrides=["cf.factors=8", "cf.iterations=3", "cf.weighting=binary", "cf.num_threads=1"]).cf
    a = ALSRecall(cfg).fit(u, i, rng.uniform(0.5, 5.0, 600).astype(np.float32), n_users=40, n_items=60)
    b = ALSRecall(cfg).fit(u, i, None, n_users=40, n_items=60)
    np.testing.assert_allclose(a.item_factors, b.item_factors, rtol=1e-5, atol=1e-6)


def test_a_grid_key_that_is_not_a_cf_field_is_a_config_error():
    with pytest.raises(ConfigError, match="tune_grid"):
        load_config(overrides=['cf.tune_grid={"factorz": [8]}'])


def test_held_out_maps_ids_to_rows_and_drops_or_refuses_unknown_ones():
    import pandas as pd

    from ltray.validation import held_out

    df = pd.DataFrame({"user_id": ["b", "a", "a", "b", "z"], "item_id": ["i2", "i1", "i1", "i9", "i1"]})
    users, items = pd.Index(["a", "b"]), pd.Index(["i0", "i1", "i2"])
    held = held_out(df, users, items)
    assert {k: v.tolist() for k, v in held.items()} == {0: [1], 1: [2]}  # i9 and user z dropped, i1 once
    with pytest.raises(ValueError, match="outside"):
        held_out(df, users, items, strict=True)


def test_grid_search_scores_every_point_and_keeps_the_first_best():
    from ltray.validation import grid_search

    best, score, trials = grid_search({"a": [1, 2], "b": [0, 1]}, lambda p: float(p["a"] + p["b"] > 1), "m")
    assert (best, score) == ({"a": 1, "b": 1}, 1.0) and len(trials) == 4 and trials[0]["m"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        grid_search({"a": []}, lambda p: 0.0)
