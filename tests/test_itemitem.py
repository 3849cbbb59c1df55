"""The item-item CF model (RP3beta, EASE) and its place in candidates, features and the CF score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ltray.cf import itemitem
from ltray.cf.itemitem import ItemItemRecall, ease_weights, rp3beta_weights
from ltray.config import ItemItemConfig

X = np.array([[1, 1, 0, 0, 1],
              [0, 1, 1, 0, 0],
              [1, 0, 1, 1, 0],
              [0, 0, 1, 1, 1],
              [1, 1, 1, 0, 0],
              [0, 0, 0, 1, 1]], np.float32)


def _top(w: np.ndarray, k: int) -> np.ndarray:
    w = w.copy()
    np.fill_diagonal(w, 0.0)
    out = np.zeros_like(w)
    for i, row in enumerate(w):
        keep = np.argsort(-row, kind="stable")[:k]
        keep = keep[row[keep] > 0]
        out[i, keep] = row[keep]
    return out


def test_rp3beta_matches_the_formula():
    alpha, beta = 0.7, 0.4
    p_ui = X / X.sum(1, keepdims=True)
    p_iu = X.T / X.T.sum(1, keepdims=True)
    w = (p_iu ** alpha) @ (p_ui ** alpha) / X.sum(0)[None, :] ** beta  # alpha on each step, as P^3_alpha
    got = rp3beta_weights(sp.csr_matrix(X), alpha, beta, neighbours=3).toarray()
    np.testing.assert_allclose(got, _top(w, 3), rtol=1e-5, atol=1e-7)


def test_ease_matches_the_closed_form():
    lam = 2.0
    p = np.linalg.inv(X.T.astype(np.float64) @ X + lam * np.eye(5))
    b = -p / np.diag(p)[None, :]
    got = ease_weights(sp.csr_matrix(X), lam, neighbours=5).toarray()  # 6 users > 5 items: the items route
    np.testing.assert_allclose(got, _top(b, 5), rtol=1e-4, atol=1e-6)
    few_users = X[:4]  # 4 users < 5 items: Woodbury's users route, the same B
    p = np.linalg.inv(few_users.T.astype(np.float64) @ few_users + lam * np.eye(5))
    got = ease_weights(sp.csr_matrix(few_users), lam, neighbours=5).toarray()
    np.testing.assert_allclose(got, _top(-p / np.diag(p)[None, :], 5), rtol=1e-4, atol=1e-6)


def test_rp3beta_blocks_equal_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((60, 40)) < 0.15).astype(np.float32))
    whole = rp3beta_weights(x, 1.0, 0.3, 7)
    monkeypatch.setattr(itemitem, "_BLOCK_CELLS", 3 * 40)  # three item rows per block
    blocked = rp3beta_weights(x, 1.0, 0.3, 7)
    np.testing.assert_allclose(blocked.toarray(), whole.toarray(), rtol=1e-6)


def test_items_without_interactions_get_no_weights_and_ease_keeps_catalog_rows():
    x = sp.csr_matrix(np.hstack([X, np.zeros((6, 2), np.float32)]))  # two cold items at the end
    for w in (ease_weights(x, 2.0, 5), rp3beta_weights(x, 1.0, 0.0, 5)):
        assert w.shape == (7, 7)
        assert w[:, 5:].nnz == 0 and w[5:, :].nnz == 0


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    seen = sp.csr_matrix((rng.random((80, 50)) < 0.1).astype(np.float32))
    return ItemItemRecall(ItemItemConfig(kind="rp3beta", neighbours=10)).fit(seen), seen


def test_recommend_leaves_out_the_history_and_ranks_by_score(model):
    m, seen = model
    hist = [seen[r].indices.astype(np.int64) for r in range(5)]
    ids, z = m.recommend(hist, 8, exclude=hist)
    dense = m.scores(hist).toarray()
    for r in range(5):
        assert not np.isin(ids[r], hist[r]).any()
        assert np.all(np.diff(z[r]) <= 1e-6)
        np.testing.assert_allclose(z[r], m.z_scores([hist[r]], ids[r]), rtol=1e-5)
        unseen = np.setdiff1d(np.flatnonzero(dense[r] > 0), hist[r])
        assert set(ids[r]) == set(unseen[np.argsort(-dense[r][unseen], kind="stable")][:8]) or len(unseen) > 8


def test_z_scores_standardise_over_the_catalog_per_user(model, monkeypatch):
    m, seen = model
    hist = [seen[r].indices.astype(np.int64) for r in range(12)]
    dense = m.scores(hist).toarray().astype(np.float64)
    rows = np.repeat(np.arange(12), 50)
    items = np.tile(np.arange(50), 12)
    monkeypatch.setattr(itemitem, "_HISTORY_CHUNK", 5)  # several chunks, rows out of order below
    order = np.random.default_rng(1).permutation(len(rows))
    z = m.z_scores(hist, items[order], row_of=rows[order])
    want = ((dense - dense.mean(1, keepdims=True)) / dense.std(1, keepdims=True))[rows[order], items[order]]
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-5)


def test_save_and_load_round_trip(model, tmp_path):
    m, _ = model
    m.save(tmp_path)
    back = ItemItemRecall.load(tmp_path)
    assert back.cfg == m.cfg
    np.testing.assert_array_equal(back.weights.toarray(), m.weights.toarray())
    assert ItemItemRecall.load(tmp_path / "nothing-here") is None


# -- in the candidates, the features and the CF score ----------------------------------------------------
def test_item_item_is_recalled_flagged_and_scored(small_config, small_synthetic):
    from ltray.candidates import CandidateGenerator, CandidateModels
    from ltray.data.segments import segment_code_array
    from ltray.recommend import feature_context

    cfg = small_config.model_copy(update={"cf": small_config.cf.model_copy(update={"mix": 0.5})})
    ds = small_synthetic
    item_ids = ds.items["item_id"].to_numpy().astype(str)
    vectors = np.random.default_rng(0).normal(size=(len(item_ids), 16)).astype(np.float32)
    seg = segment_code_array(item_ids, ds.interactions, cfg.data.head_share)
    models = CandidateModels.fit(ds.interactions, item_ids, vectors, seg, cfg)
    assert models.item_item is not None and models.cf.mix == 0.5
    gen = CandidateGenerator(models, cfg)
    user = models.user_ids[3]
    state = gen.state(user)
    cols = gen.candidate_columns(state)
    from_item = cols["from_item"] == 1
    assert from_item.any()
    ids, z = models.item_item.recommend([state.seen], cfg.blend.n_item, [state.seen])
    assert set(cols["item_idx"][from_item]) == set(ids[0])
    np.testing.assert_allclose(np.sort(cols["item_score"][from_item]), np.sort(z[0]), rtol=1e-5)
    # The CF score mixes the two z-scores; the ranker sees the item-item z-score as a feature.
    als_z = models.cf.als_z(state.factor, cols["item_idx"])[0]
    ii_z = models.item_item.z_scores([state.seen], cols["item_idx"])
    np.testing.assert_allclose(models.cf.z(state.factor, state.seen, cols["item_idx"]), 0.5 * als_z + 0.5 * ii_z,
                               rtol=1e-4, atol=1e-5)
    from ltray.rank.features import FeatureBuilder

    ctx = feature_context(models)
    b = FeatureBuilder(cfg.rank).fit(ctx, np.flatnonzero(models.item_pop > 0))
    table = {"user_id": user, "item_idx": cols["item_idx"], "from_item": cols["from_item"]}
    raw = b._raw_dense(ctx, table, None, False)
    names = b.dense_names()
    np.testing.assert_allclose(raw[:, names.index("item_z")], ii_z, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(raw[:, names.index("from_item")], cols["from_item"])


def _mixed_cf_models(small_config, small_synthetic):
    """(config, item ids, candidate models) with CF = 0.75 ALS + 0.25 item-item, random text vectors."""
    from ltray.candidates import CandidateModels
    from ltray.data.segments import segment_code_array

    cfg = small_config.model_copy(update={"cf": small_config.cf.model_copy(update={"mix": 0.25})})
    ds = small_synthetic
    item_ids = ds.items["item_id"].to_numpy().astype(str)
    vectors = np.random.default_rng(0).normal(size=(len(item_ids), 16)).astype(np.float32)
    models = CandidateModels.fit(ds.interactions, item_ids, vectors,
                                 segment_code_array(item_ids, ds.interactions, 0.8), cfg)
    return cfg, item_ids, models


def test_the_cf_only_list_is_the_top_of_the_mixed_score(small_config, small_synthetic):
    cfg, item_ids, models = _mixed_cf_models(small_config, small_synthetic)
    seen = models.als.seen
    rows = np.arange(6)
    hist = [seen.indices[seen.indptr[r]:seen.indptr[r + 1]].astype(np.int64) for r in rows]
    lists = models.cf.recommend(models.als.user_factors[rows], hist, 10, exclude=hist)
    for r in rows:
        every = np.arange(len(item_ids))
        s = models.cf.z(models.als.user_factors[r], hist[r], every).astype(np.float64)
        s[hist[r]] = -np.inf
        assert not np.isin(lists[r], hist[r]).any()
        np.testing.assert_allclose(s[lists[r]], np.sort(s)[::-1][:10], rtol=1e-5)


def test_the_recall_floor_is_set_by_the_best_single_cf_source(small_config, small_synthetic):
    """ALS alone, the item-item model alone and their mix each give a CF-only list; the floor takes the best."""
    import pandas as pd

    from ltray.candidates import CandidateGenerator
    from ltray.recommend import Recommender
    from ltray.tuning import cf_only_rows, operating_curve

    cfg, item_ids, models = _mixed_cf_models(small_config, small_synthetic)
    gen = CandidateGenerator(models, cfg)
    users = models.user_ids[:12].astype(str)
    lists = cf_only_rows(models, gen, users, 10)
    assert set(lists) == {"cf", "als", "item"}
    seen = models.als.seen
    for j, u in enumerate(users):
        r = gen.user_row(u)
        hist = seen.indices[seen.indptr[r]:seen.indptr[r + 1]].astype(np.int64)
        for name, score in (("als", models.cf.als_z(models.als.user_factors[r])[0]),
                            ("item", models.cf.item_item.z_scores([hist], np.arange(len(item_ids))))):
            s = np.asarray(score, np.float64).copy()
            s[hist] = -np.inf
            np.testing.assert_allclose(s[lists[name][j]], np.sort(s)[::-1][:10], rtol=1e-5, err_msg=name)
    assert not all(np.array_equal(lists["item"][j], lists["cf"][j]) for j in range(len(users)))
    # Held-out items that only the item-item list finds: the floor is the item-item model's recall.
    valid = pd.DataFrame([(u, item_ids[i], 0) for j, u in enumerate(users) for i in lists["item"][j][:3]
                          if i not in lists["cf"][j] and i not in lists["als"][j]], columns=["user_id", "item_id", "ts"])
    assert len(valid)
    rec = Recommender(models, None, cfg, tail_share=0.0)
    _, floor = operating_curve([(rec, users)], gen, valid, cfg)
    assert floor["source"] == "item" and floor["Recall@20"] > 0
