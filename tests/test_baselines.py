"""Baselines on the small synthetic catalog: shapes, no seen items, orderings, tuning."""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ltray.cf.itemitem import spd_inverse
from ltray.config import ItemItemConfig
from ltray.data import compute_segments, temporal_holdout
from ltray.data.segments import Segment, segment_codes
from ltray.eval.baselines import (
    EASE,
    EASE_MAX_ITEMS,
    ALSBaseline,
    ALSTailQuota,
    ALSTextBlend,
    BaselineSkipped,
    ContentKNN,
    ItemKNN,
    LightFMBaseline,
    MostPop,
    RP3beta,
    holdout_sets,
    interaction_matrices,
    text_bag_features,
    top_k,
    tune,
)
from ltray.eval.metrics import evaluate
from ltray.validation import grid_points

K = 20


@pytest.fixture(scope="module")
def split(small_synthetic):
    ds = small_synthetic
    train_df, test_df = temporal_holdout(ds.interactions, 0.2, 5)
    users = pd.Index(sorted(ds.interactions["user_id"].unique()))
    items = pd.Index(ds.items["item_id"])
    train, train_ts = interaction_matrices(train_df, users, items)
    test = holdout_sets(test_df, users, items)
    seg = segment_codes(compute_segments(items, train_df, 0.8).table["segment"])
    pop = train.getnnz(axis=0).astype(float)
    # Text vectors for ContentKNN: LSA of the item texts (fast, deterministic, text-derived).
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer().fit_transform(ds.items["text"])
    vectors = TruncatedSVD(48, random_state=0).fit_transform(tfidf).astype(np.float32)
    return dict(
        train_df=train_df,
        users=users,
        items=items,
        train=train,
        train_ts=train_ts,
        test=test,
        seg=seg,
        pop=pop,
        vectors=vectors,
        test_users=np.array(sorted(test)),
    )


def _assert_valid(recs, split, rows):
    assert recs.shape == (len(rows), K) and recs.dtype == np.int64
    seen = split["train"][rows]
    for r, u in enumerate(rows):
        got = recs[r][recs[r] >= 0]
        assert len(np.unique(got)) == len(got)
        assert not np.intersect1d(got, seen[r].indices).size, f"user {u} got a seen item"


def _systems(split):
    out = [
        MostPop(),
        ALSBaseline(factors=16, iterations=8),
        ItemKNN(neighbours=50),
        ContentKNN(90.0),
        ALSTailQuota(split["seg"], 0.4, dict(factors=16, iterations=8), dict(half_life_days=90.0)),
    ]
    if LightFMBaseline.available():
        out.append(LightFMBaseline(None, no_components=16, epochs=3))
    return out


def test_every_baseline_returns_full_lists_without_seen_items(split):
    rows = split["test_users"]
    for model in _systems(split):
        model.fit(split["train"], split["vectors"], split["train_ts"])
        recs = model.recommend(rows, K)
        _assert_valid(recs, split, rows)
        assert (recs >= 0).all(), f"{model.name} padded a list over a 600-item catalog"
    # Without exclusion, at least one user gets a seen item back from a CF model.
    als = ALSBaseline(factors=16, iterations=8).fit(split["train"])
    again = als.recommend(rows, K, exclude_seen=False)
    assert any(np.intersect1d(again[r], split["train"][u].indices).size for r, u in enumerate(rows))


def test_mostpop_lists_items_by_training_popularity(split):
    model = MostPop().fit(split["train"])
    recs = model.recommend(split["test_users"], K)
    pop = split["train"].getnnz(axis=0)
    for r, u in enumerate(split["test_users"]):
        # Non-increasing popularity down the list, and nothing unseen more popular than the last pick.
        assert (np.diff(pop[recs[r]]) <= 0).all()
        unseen = np.setdiff1d(np.arange(len(pop)), np.union1d(split["train"][u].indices, recs[r]))
        assert pop[unseen].max() <= pop[recs[r][-1]]


def test_als_beats_mostpop_on_a_temporal_holdout(split):
    def recall(model):
        model.fit(split["train"], split["vectors"], split["train_ts"])
        recs = model.recommend(split["test_users"], K)
        return evaluate(
            recs, split["test"], split["seg"], split["pop"], ks=(K,), user_rows=split["test_users"]
        )["Recall@20"]

    # ALS tuned on a validation split carved from train, as the protocol does; popularity is strong
    # on this small Zipf catalog, so tuned ALS wins by a modest margin (about 10-20%).
    fit_df, valid_df = temporal_holdout(split["train_df"], 0.2, 5)
    fit, fit_ts = interaction_matrices(fit_df, split["users"], split["items"])
    valid = holdout_sets(valid_df, split["users"], split["items"])
    grid = {"factors": [8, 16, 32], "regularization": [1.0, 10.0], "alpha": [5.0]}
    best = tune(ALSBaseline, grid, fit, valid, "Recall@20", train_ts=fit_ts).best_params
    als, pop = recall(ALSBaseline(**best)), recall(MostPop())
    assert als > pop * 1.05, (als, pop, best)


def test_contentknn_profile_is_the_recency_weighted_mean():
    # Two items, one user who saw item 0 at t=0 and item 1 one half-life (10 days) later:
    # weights 0.5 and 1, so the profile points to (0.5, 1) / |.|; items 2 and 3 rank by cosine to it.
    vecs = np.array([[1, 0], [0, 1], [1, 2], [2, 1]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32))
    ts = sp.csr_matrix(np.array([[0.0, 10 * 86_400.0, 0, 0]]))  # times are looked up, zeros included
    model = ContentKNN(half_life_days=10.0).fit(train, vecs, ts)
    expected = np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0])
    assert model.profiles[0] == pytest.approx(expected, rel=1e-5)
    assert model.recommend([0], 2).tolist() == [[2, 3]]  # (1,2) is closer to (0.5,1) than (2,1)
    # Without decay the profile is the plain mean (1, 1): items 2 and 3 tie, broken by item row.
    flat = ContentKNN(half_life_days=None).fit(train, vecs, ts)
    assert flat.profiles[0] == pytest.approx(np.array([1.0, 1.0]) / np.sqrt(2), rel=1e-5)
    # recent_items=1 keeps only the newest item (item 1): the profile is its vector.
    newest = ContentKNN(half_life_days=None, recent_items=1).fit(train, vecs, ts)
    assert newest.profiles[0] == pytest.approx([0.0, 1.0], abs=1e-6)
    # center subtracts the catalog mean (1, 1): item 1 becomes (-1, 0), and so does that profile.
    centred = ContentKNN(half_life_days=None, recent_items=1, center=True).fit(train, vecs, ts)
    assert centred.profiles[0] == pytest.approx([-1.0, 0.0], abs=1e-6)
    assert centred.item_vectors[2] == pytest.approx([0.0, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="item_vectors"):
        ContentKNN().fit(train)


def test_tail_quota_gives_the_tail_its_share_of_slots(split):
    model = ALSTailQuota(split["seg"], 0.4, dict(factors=16, iterations=8), dict(half_life_days=90.0))
    model.fit(split["train"], split["vectors"], split["train_ts"])
    recs = model.recommend(split["test_users"], K)
    long_tail = split["seg"][recs] != Segment.HEAD
    # round(0.4 * 20) = 8 slots are ContentKNN's tail / cold picks (ALS may add more tail items).
    assert (long_tail.sum(axis=1) >= 8).all()
    # The tail slots are spread: the top 10 already hold 4 of them.
    assert (long_tail[:, :10].sum(axis=1) >= 4).all()
    # The segments may also come with fit, like the other inputs.
    als_only = ALSTailQuota(tail_share=0.0, als_params=dict(factors=16, iterations=8)).fit(
        split["train"], split["vectors"], split["train_ts"], item_segment=split["seg"]
    )
    with pytest.raises(ValueError, match="item_segment"):
        ALSTailQuota().fit(split["train"], split["vectors"])
    plain = ALSBaseline(factors=16, iterations=8).fit(split["train"])
    assert np.array_equal(als_only.recommend(split["test_users"], K), plain.recommend(split["test_users"], K))


def test_top_k_pads_when_too_few_items_are_allowed():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[0, 0, 0, 1]]))
    assert top_k(scores, 4, exclude).tolist() == [[1, 0, -1, -1]]


def test_tune_picks_the_grid_point_with_the_best_validation_score(split):
    # Validation carved from train exactly as test is carved from the whole log.
    fit_df, valid_df = temporal_holdout(split["train_df"], 0.2, 5)
    fit, fit_ts = interaction_matrices(fit_df, split["users"], split["items"])
    valid = holdout_sets(valid_df, split["users"], split["items"])
    grid = {"factors": [2, 32], "regularization": [0.1], "iterations": [8]}
    res = tune(ALSBaseline, grid, fit, valid, "Recall@20", train_ts=fit_ts)
    assert len(res.trials) == 2
    scores = [t["Recall@20"] for t in res.trials]
    assert res.best_score == max(scores)
    assert res.best_params == {k: v for k, v in res.trials[int(np.argmax(scores))].items() if k in grid}
    params, score = res  # unpacks
    assert (params, score) == (res.best_params, res.best_score)
    with pytest.raises(TypeError, match="metric must be a metric name"):
        tune(ALSBaseline, grid, fit, valid, np.arange(3))
    # The validation users are all in train, and nothing of valid leaks into the fitted matrix.
    v = holdout_sets(valid_df, split["users"], split["items"])
    assert all(not np.intersect1d(items, fit[u].indices).size for u, items in v.items())


def test_lightfm_available_matches_the_installation():
    assert LightFMBaseline.available() == (importlib.util.find_spec("lightfm") is not None)


@pytest.mark.skipif(not LightFMBaseline.available(), reason="lightfm not installed (optional extra)")
def test_lightfm_with_text_features_beats_random(split, small_synthetic):
    feats = text_bag_features(small_synthetic.items["text"].tolist())
    model = LightFMBaseline(feats, no_components=16, epochs=10).fit(split["train"])
    recs = model.recommend(split["test_users"], K)
    _assert_valid(recs, split, split["test_users"])
    m = evaluate(recs, split["test"], split["seg"], split["pop"], ks=(K,), user_rows=split["test_users"])
    assert m["Recall@20"] > 3 * K / len(split["items"])  # random lists score about K / n_items


# ----------------------------------------------------------------------------- EASE, RP3beta, hybrids

# 6 users x 5 items; item 4 has no interaction (EASE never recommends it).
TINY = np.array(
    [
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [1, 0, 0, 1, 0],
    ],
    dtype=np.float32,
)


def _ease_by_hand(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck's closed form, written out densely in float64 over the items with an interaction."""
    active = x.sum(axis=0) > 0
    xa = x[:, active].astype(np.float64)
    p = np.linalg.inv(xa.T @ xa + lam * np.eye(active.sum()))
    b = np.eye(len(p)) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    out = np.full(x.shape, -np.inf)
    out[:, active] = xa @ b
    return out


@pytest.mark.parametrize("solver", ["items", "users"])
def test_ease_matches_the_closed_form_on_a_tiny_matrix(solver):
    expected = _ease_by_hand(TINY, 2.0)
    model = EASE(regularization=2.0, solver=solver, dtype="float64").fit(sp.csr_matrix(TINY))
    got = model.scores(np.arange(6))
    assert np.isneginf(got[:, 4]).all() and np.isneginf(expected[:, 4]).all()
    assert got[:, :4] == pytest.approx(expected[:, :4], abs=1e-6)
    # "auto" takes the cheaper route: the item x item inverse here, Woodbury's user x user with fewer users.
    assert EASE(2.0).fit(sp.csr_matrix(TINY)).route == "items"
    assert EASE(2.0).fit(sp.csr_matrix(TINY[:3])).route == "users"  # 3 users, 4 active items
    # Weights are binarised: EASE's X is binary.
    heavy = EASE(regularization=2.0, solver=solver, dtype="float64").fit(sp.csr_matrix(TINY * 3))
    assert heavy.scores(np.arange(6))[:, :4] == pytest.approx(expected[:, :4], abs=1e-6)
    # Lists: unseen active items by score; the never-seen item 4 is not listed (-1 pads).
    recs = model.recommend(np.arange(6), 3)
    for u in range(6):
        unseen = [i for i in range(4) if TINY[u, i] == 0]
        assert recs[u][: len(unseen)].tolist() == sorted(unseen, key=lambda i: (-expected[u, i], i))
        assert (recs[u][len(unseen) :] == -1).all()


def test_ease_in_float32_matches_float64(split):
    # float32 is the default: it halves the inverse's time and memory; both routes keep the scores
    # within 1e-4 of float64 relative to their scale, and the lists all but identical.
    rows = split["test_users"]
    for solver in ("items", "users"):
        ref = EASE(200.0, solver=solver, dtype="float64").fit(split["train"])
        f32 = EASE(200.0, solver=solver).fit(split["train"])
        a, b = ref.scores(rows), f32.scores(rows)
        finite = np.isfinite(a)
        assert (finite == np.isfinite(b)).all()
        assert np.abs(a[finite] - b[finite]).max() <= 1e-4 * np.abs(a[finite]).max(), solver
        same = (ref.recommend(rows, K) == f32.recommend(rows, K)).mean()
        assert same >= 0.99, (solver, same)
    # The two routes are one model.
    items = EASE(200.0, solver="items", dtype="float64").fit(split["train"]).scores(rows)
    users = EASE(200.0, solver="users", dtype="float64").fit(split["train"]).scores(rows)
    assert np.allclose(items[np.isfinite(items)], users[np.isfinite(users)], atol=1e-5)


def test_spd_inverse_is_the_inverse_in_place():
    rng = np.random.default_rng(0)
    a = rng.random((70, 70))
    a = a @ a.T + np.eye(70)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        m = a.astype(dtype)
        inv = spd_inverse(m, block=16)  # blocks that do not divide n
        assert np.shares_memory(inv, m)
        assert np.allclose(inv, np.linalg.inv(a), atol=tol * np.abs(np.linalg.inv(a)).max())
        assert np.array_equal(inv, inv.T)


def test_ease_max_items_guard_skips_cleanly():
    assert ItemItemConfig().ease_max_items == EASE_MAX_ITEMS
    with pytest.raises(BaselineSkipped, match="4 items with a training interaction > max_items 3"):
        EASE(max_items=3).fit(sp.csr_matrix(TINY))  # 4 active items; the never-seen one does not count
    EASE(max_items=4).fit(sp.csr_matrix(TINY))


def _rp3beta_by_hand(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """W = (P_iu ** alpha) @ (P_ui ** alpha), columns / pop ** beta, zero diagonal; dense float64."""
    x = (x > 0).astype(np.float64)
    p_ui = x / x.sum(axis=1, keepdims=True)
    pop = x.sum(axis=0)
    p_iu = np.divide(x.T, pop[:, None], out=np.zeros_like(x.T), where=pop[:, None] > 0)
    w = (p_iu**alpha) @ (p_ui**alpha)
    w = w * np.divide(1.0, pop**beta, out=np.zeros_like(pop), where=pop > 0)[None, :]
    np.fill_diagonal(w, 0.0)
    return w


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.3), (1.0, 0.6)])
def test_rp3beta_matches_the_random_walk_on_a_tiny_matrix(alpha, beta):
    w = _rp3beta_by_hand(TINY, alpha, beta)
    model = RP3beta(alpha=alpha, beta=beta, neighbours=5).fit(sp.csr_matrix(TINY))
    assert model.similarity.toarray() == pytest.approx(w, abs=1e-6)
    s = TINY @ w
    got = model.scores(np.arange(6))
    assert got[s > 0] == pytest.approx(s[s > 0], abs=1e-6)
    assert (got[s == 0] < -1).all()  # unreached: popularity fallback under every walk score
    # neighbours keeps each row's largest entries (values compared: ties may pick either item).
    top2 = RP3beta(alpha=alpha, beta=beta, neighbours=2).fit(sp.csr_matrix(TINY)).similarity.toarray()
    assert ((top2 > 0).sum(axis=1) <= 2).all()
    for i in range(5):
        assert np.sort(top2[i][top2[i] > 0]) == pytest.approx(np.sort(w[i][w[i] > 0])[-2:], abs=1e-6)


def test_rp3beta_blocks_equal_the_unblocked_computation(split, monkeypatch):
    from ltray.cf import itemitem

    whole = RP3beta(alpha=0.5, beta=0.3, neighbours=20).fit(split["train"])
    monkeypatch.setattr(itemitem, "_BLOCK_CELLS", 7 * len(split["items"]))  # seven item rows per block
    blocked = RP3beta(alpha=0.5, beta=0.3, neighbours=20).fit(split["train"])
    assert whole.similarity.shape == (len(split["items"]),) * 2
    assert (whole.similarity != blocked.similarity).nnz == 0
    assert (np.diff(whole.similarity.indptr) <= 20).all() and whole.similarity.diagonal().sum() == 0
    rows = split["test_users"]
    assert np.array_equal(whole.recommend(rows, K), blocked.recommend(rows, K))
    _assert_valid(whole.recommend(rows, K), split, rows)


def _parts(split, train=None, ts=None):
    train = split["train"] if train is None else train
    ts = split["train_ts"] if ts is None else ts
    als = ALSBaseline(factors=16, iterations=8).fit(train)
    content = ContentKNN(half_life_days=90.0).fit(train, split["vectors"], ts)
    return als, content


def test_hybrids_at_zero_weight_or_share_are_als(split):
    rows = split["test_users"]
    parts = _parts(split)
    als_list = parts[0].recommend(rows, K)
    blend = ALSTextBlend(text_weight=0.0, components=parts).fit(split["train"])
    quota = ALSTailQuota(split["seg"], 0.0, components=parts).fit(split["train"])
    assert np.array_equal(blend.recommend(rows, K), als_list)
    assert np.array_equal(quota.recommend(rows, K), als_list)
    # Fitted here from parameters, the same ALS: the same lists.
    own = ALSTextBlend(0.0, dict(factors=16, iterations=8), dict(half_life_days=90.0)).fit(
        split["train"], split["vectors"], split["train_ts"]
    )
    assert np.array_equal(own.recommend(rows, K), als_list)
    # A weight: z(ALS) + w * z(ContentKNN), each standardised per user over the catalog.
    half = ALSTextBlend(text_weight=0.5, components=parts).fit(split["train"])
    a, c = parts[0].scores(rows[:5]).astype(np.float64), parts[1].scores(rows[:5]).astype(np.float64)
    z = lambda s: (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)  # noqa: E731
    assert half.scores(rows[:5]) == pytest.approx(z(a) + 0.5 * z(c), abs=1e-4)
    _assert_valid(half.recommend(rows, K), split, rows)
    # Components fitted on another train are refused.
    other = split["train"].copy()
    other.data[:1] = 0
    other.eliminate_zeros()
    with pytest.raises(ValueError, match="components must be fitted on the train"):
        ALSTextBlend(0.3, components=parts).fit(other)


def test_tuning_the_new_baselines_picks_from_their_grids(split):
    fit_df, valid_df = temporal_holdout(split["train_df"], 0.2, 5)
    fit, fit_ts = interaction_matrices(fit_df, split["users"], split["items"])
    valid = holdout_sets(valid_df, split["users"], split["items"])
    parts = _parts(split, fit, fit_ts)
    cases = [
        (EASE, {"regularization": [10.0, 200.0, 2000.0]}),
        (RP3beta, {"alpha": [0.5, 1.0], "beta": [0.0, 0.6], "neighbours": [20]}),
        (lambda **p: ALSTextBlend(components=parts, **p), {"text_weight": [0.0, 0.3, 3.0]}),
        (lambda **p: ALSTailQuota(components=parts, **p), {"tail_share": [0.0, 0.2, 0.4]}),
    ]
    for make, grid in cases:
        res = tune(make, grid, fit, valid, "Recall@20", train_ts=fit_ts, item_vectors=split["vectors"])
        assert res.best_params in grid_points(grid)
        scores = [t["Recall@20"] for t in res.trials]
        assert len(scores) == len(grid_points(grid)) and res.best_score == max(scores) > 0
    # The hybrids' grid search refit neither part.
    assert parts[0].train.shape == fit.shape and (parts[0].train != fit).nnz == 0


def test_run_baselines_tunes_the_hybrids_only_and_notes_every_choice(split, small_synthetic, monkeypatch, tmp_path,
                                                                     caplog):
    """run_baselines on the small catalog: every new row, its chosen parameters, ALS tuned once (the
    hybrids reuse it), EASE skipped cleanly above its guard; the report shows every row and note."""
    from ltray.config import load_config
    from ltray.eval import baselines as B
    from ltray.eval.report import write_report
    from ltray.eval.stage import baseline_notes, run_baselines

    ds = small_synthetic
    cfg = load_config(overrides=["eval.baselines=[als, contentknn, ease, rp3beta, als_tail_quota, als_text_blend]"])
    cfg.eval.baseline_grids = {
        "als": {"factors": [8, 16], "iterations": [8]},
        "contentknn": {"half_life_days": [None]},
        "ease": {"regularization": [50.0, 500.0]},
        "rp3beta": {"alpha": [1.0], "beta": [0.0, 0.5], "neighbours": [50]},
        "als_text_blend": {"text_weight": [0.0, 0.3]},
        "als_tail_quota": {"tail_share": [0.1, 0.2]},
    }
    bundle = SimpleNamespace(items=ds.items, train=split["train_df"], item_segment=split["seg"],
                             item_ids=ds.items["item_id"].astype(str).to_numpy())
    users = np.unique(split["train_df"]["user_id"].astype(str))[:50]
    fits = []
    orig = B.ALSBaseline._fit
    monkeypatch.setattr(B.ALSBaseline, "_fit", lambda self, *a: (fits.append(self.params), orig(self, *a))[1])
    lists, info = run_baselines(bundle, split["vectors"], cfg, users, None)
    assert set(lists) == {"ALS", "ContentKNN", "EASE", "RP3beta", "ALS + tail quota", "ALS + text blend"}
    assert all(v.shape == (50, 20) for v in lists.values())
    # ALS: 2 grid points + the refit on train + one fit on the tuning split shared by both hybrids.
    assert len(fits) == 4
    assert info["ALS + tail quota"]["params"].keys() == {"tail_share"}
    assert info["ALS + text blend"]["params"]["text_weight"] in (0.0, 0.3)
    for name in ("ALS", "EASE", "RP3beta", "ALS + tail quota", "ALS + text blend"):
        assert info[name]["tuned"] and info[name]["Recall@20"] is not None and info[name]["seconds"] >= 0
    notes = baseline_notes(info, "Recall@20")
    assert any(n.startswith("EASE: regularization=") and "chosen on validation from 2 grid points" in n
               for n in notes)
    # Above its guard EASE is skipped with a log line and a note; the other rows are unaffected.
    cfg.cf.item.ease_max_items = 10
    caplog.set_level(logging.INFO, logger="ltray")
    lists, info = run_baselines(bundle, split["vectors"], cfg, users, None)
    assert "EASE" not in lists and "max_items 10" in info["EASE"]["skipped"]
    assert any(line.startswith("eval: baseline EASE skipped:") for line in caplog.messages)
    # The report: a row per baseline that ran, a note per baseline (the skipped one's says why).
    table = {name: {"Recall@20": 0.1, "TailRecall@20": 0.01} for name in lists}
    md, _ = write_report(tmp_path, dataset_name="synthetic", metrics_table=table,
                         notes=baseline_notes(info, "Recall@20"))
    text = md.read_text()
    for row in ("| RP3beta |", "| ALS + tail quota |", "| ALS + text blend |"):
        assert row in text, row
    assert "| EASE |" not in text and "- EASE: skipped (" in text and "max_items 10" in text
    assert "- ALS + text blend: text_weight=" in text and "- RP3beta: alpha=1" in text
