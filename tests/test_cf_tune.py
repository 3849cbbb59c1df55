"""ltray's own ALS values are chosen on a validation split carved from train, as the baselines' are."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.cf.als import ALSRecall
from ltray.cf.tune import tune_cf, with_cf
from ltray.config import Config, ConfigError, load_config


def _with_cf(cfg: Config, **cf) -> Config:
    d = cfg.to_dict()
    return Config.model_validate({**d, "cf": {**d["cf"], **cf}})


def test_tune_picks_the_grid_point_with_the_best_validation_recall(small_config, small_synthetic):
    cfg = _with_cf(small_config, iterations=4, tune=True,
                   tune_grid={"factors": [4, 32], "weighting": ["binary", "alpha"]})
    chosen, trials = tune_cf(small_synthetic.interactions, small_synthetic.items["item_id"].to_numpy(), cfg)
    assert len(trials) == 4
    best = max(trials, key=lambda t: t["Recall@20"])
    assert (chosen.factors, chosen.weighting) == (best["factors"], best["weighting"])
    assert len({round(t["Recall@20"], 6) for t in trials}) > 1  # the grid points really differ
    assert with_cf(cfg, {"factors": chosen.factors}).cf.factors == chosen.factors


def test_tune_off_keeps_the_configured_values(small_config, small_synthetic):
    cfg = _with_cf(small_config, tune=False, factors=12)
    chosen, trials = tune_cf(small_synthetic.interactions, small_synthetic.items["item_id"].to_numpy(), cfg)
    assert trials == [] and chosen.factors == 12


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
