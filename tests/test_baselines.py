"""Baselines on the small synthetic catalog: shapes, no seen items, orderings, tuning."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ltray.data import compute_segments, temporal_holdout
from ltray.eval.baselines import (
    ALSBaseline,
    ALSTailQuota,
    ContentKNN,
    ItemKNN,
    LightFMBaseline,
    MostPop,
    holdout_sets,
    interaction_matrices,
    text_bag_features,
    top_k,
    tune,
)
from ltray.eval.metrics import HEAD_CODE, evaluate, segment_codes

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
    long_tail = split["seg"][recs] != HEAD_CODE
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
