"""User profiles, multi-interest search and the text->CF bridge (real ALS factors, real MiniLM vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.cf.als import ALSRecall
from ltray.config import CFConfig
from ltray.data import HEAD, compute_segments
from ltray.index.bridge import TextToCFBridge
from ltray.index.faiss_index import VectorIndex
from ltray.index.profiles import multi_interest_search, recent_items_of, user_profiles

DAY = 86_400


# ------------------------------------------------------------------ profiles
def test_profile_recency_weighting_by_hand():
    # user 0: item 0 today (latest), item 1 ten days earlier, item 2 twenty days earlier; half-life 10 days
    # -> weights 1, 0.5, 0.25. User 1: one item. User 2: nothing.
    vecs = np.eye(4, dtype=np.float32)
    t0 = 1_700_000_000
    users = np.array([0, 0, 0, 1])
    items = np.array([1, 0, 2, 3])
    ts = np.array([t0 - 10 * DAY, t0, t0 - 20 * DAY, t0 - 99 * DAY])
    prof = user_profiles(users, items, ts, vecs, half_life_days=10, recent_items=10, n_users=3)
    want = np.array([1.0, 0.5, 0.25, 0.0]) / np.sqrt(1 + 0.25 + 0.0625)
    np.testing.assert_allclose(prof[0], want, rtol=1e-6)
    np.testing.assert_allclose(prof[1], [0, 0, 0, 1])  # age is relative to the user's own latest item
    np.testing.assert_array_equal(prof[2], 0.0)
    assert prof.dtype == np.float32 and prof.shape == (3, 4)
    # only the last 2 items count; a non-positive interaction is dropped when weights are given
    prof2 = user_profiles(users, items, ts, vecs, 10, recent_items=2, n_users=3)
    np.testing.assert_allclose(prof2[0], np.array([1.0, 0.5, 0, 0]) / np.sqrt(1.25), rtol=1e-6)
    prof3 = user_profiles(users, items, ts, vecs, 10, 10, n_users=3, weights=np.array([1, 0, 1, 1]))
    # without item 0 the latest is item 1: weights 1 (item 1) and 0.5 (item 2)
    np.testing.assert_allclose(prof3[0], np.array([0, 1.0, 0.5, 0]) / np.sqrt(1.25), rtol=1e-6)


def test_recent_items_most_recent_first_and_distinct():
    users = np.array([1, 1, 1, 1, 0])
    items = np.array([5, 6, 5, 7, 2])
    ts = np.array([10, 20, 30, 30, 5])  # item 5 twice (latest at 30); a tie at 30 -> the later row is newer
    rec = recent_items_of(users, items, ts, n=10, n_users=3)
    assert [r.tolist() for r in rec] == [[2], [7, 5, 6], []]
    assert [r.tolist() for r in recent_items_of(users, items, ts, n=2, n_users=2)] == [[2], [7, 5]]


def test_multi_interest_merges_by_max_and_drops_history():
    # two tastes along axes 0 and 1; the index holds items around both
    vecs = np.array([[1, 0, 0], [0, 1, 0],                      # 0, 1: history items
                     [0.9, 0.1, 0], [0.8, 0.2, 0],               # 2, 3: near item 0
                     [0.1, 0.9, 0], [0.2, 0.8, 0.1],             # 4, 5: near item 1
                     [0, 0, 1]], np.float32)                     # 6: far from both
    idx = VectorIndex(3, "Flat").build(np.arange(7), vecs)
    ids, scores = multi_interest_search(idx, vecs, [0, 1], k=4)
    assert set(ids.tolist()) == {2, 3, 4, 5}  # both tastes, no history item, not the far one
    assert (np.diff(scores) <= 1e-6).all()
    # an item returned by both queries appears once, with its best score
    ids2, scores2 = multi_interest_search(idx, vecs, [0, 1], k=10)
    assert len(ids2) == len(set(ids2.tolist())) == 5 and not np.isin([0, 1], ids2).any()
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    best = np.max(unit[[0, 1]] @ unit.T, axis=0)
    np.testing.assert_allclose(scores2, best[ids2], rtol=1e-5)
    # an explicit history (longer than the query items) is dropped as a whole
    ids_hist, _ = multi_interest_search(idx, vecs, [0], k=3, history=[0, 1, 2])
    assert not np.isin([0, 1, 2], ids_hist).any()
    assert multi_interest_search(idx, vecs, [], k=3)[0].shape == (0,)


def test_profiles_on_movielens_shapes(movielens):
    inter = movielens.interactions
    items = movielens.items["item_id"].to_numpy().astype(str)
    rows = {v: i for i, v in enumerate(items)}
    _, users = np.unique(inter["user_id"].to_numpy().astype(str), return_inverse=True)
    item_rows = np.array([rows[v] for v in inter["item_id"].astype(str)])
    vecs = np.random.default_rng(0).standard_normal((len(items), 16)).astype(np.float32)
    prof = user_profiles(users, item_rows, inter["ts"].to_numpy(), vecs, 180, 50,
                         weights=inter["weight"].to_numpy() >= 3.5)
    assert prof.shape == (users.max() + 1, 16)
    norms = np.linalg.norm(prof, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0)) and (norms > 0).mean() > 0.95


# -------------------------------------------------------------------- bridge
def encode(texts: list[str]) -> np.ndarray:
    """Real all-MiniLM-L6-v2 vectors through the project's encoder."""
    from ltray.embed.encoder import TextEncoder

    return TextEncoder(threads=2).encode(list(texts))


def cf_and_text(ds, n_items_max: int | None = None, factors: int = 32):
    """ALS item factors on the dataset, head items (most popular first), and text vectors for them."""
    item_ids = ds.items["item_id"].to_numpy().astype(str)
    rows = {v: i for i, v in enumerate(item_ids)}
    inter = ds.interactions
    _, users = np.unique(inter["user_id"].to_numpy().astype(str), return_inverse=True)
    item_rows = np.array([rows[v] for v in inter["item_id"].astype(str)])
    als = ALSRecall(CFConfig(factors=factors, iterations=15, regularization=0.1)).fit(
        users, item_rows, np.ones(len(users), np.float32), n_items=len(item_ids))
    seg = compute_segments(item_ids, inter, 0.8).table
    head = np.flatnonzero(seg["segment"].to_numpy() == HEAD)
    head = head[np.argsort(-seg["count"].to_numpy()[head], kind="stable")][:n_items_max]
    texts = ds.items["text"].to_numpy()[head].tolist()
    return als.item_factors, head, encode(texts)


def check_bridge(factors, head, x, l2, min_gain):
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(head))
    n_test = len(head) // 5
    test, train = perm[:n_test], perm[n_test:]
    bridge = TextToCFBridge(l2).fit(x[train], factors[head[train]])
    m = bridge.evaluate(x[test], factors[head[test]], factors, k=10, heldout_rows=head[test])
    assert m["cosine"] > m["random_projection_cosine"] + min_gain, m
    assert m["cosine"] > m["mean_factor_cosine"] + min_gain, m  # it learned from the text, not the mean
    assert m["recall_at_k"] > m["random_projection_recall_at_k"], m
    # the default heldout_rows lookup finds the same rows
    assert bridge.evaluate(x[test], factors[head[test]], factors, k=10)["recall_at_k"] == m["recall_at_k"]
    return bridge, m


def test_bridge_beats_controls_on_synthetic(small_synthetic, tmp_path):
    factors, head, x = cf_and_text(small_synthetic)
    bridge, m = check_bridge(factors, head, x, l2=1.0, min_gain=0.25)
    assert m["cosine"] > 0.4 and m["n_heldout"] == len(head) // 5  # measured 0.47 (mean factor: 0.08)
    path = bridge.save(tmp_path / "bridge.npz")
    back = TextToCFBridge.load(path)
    np.testing.assert_array_equal(back.predict(x), bridge.predict(x))
    assert back.l2 == bridge.l2
    assert bridge.predict(x).shape == (len(x), factors.shape[1])


def test_bridge_beats_controls_on_movielens(movielens):
    # the 800 most-rated head movies keep encoding to a few seconds. Measured: cosine 0.60 vs 0.32 for the
    # mean factor and 0.07 for the random projection; recall@10 among all 9,742 movies 0.30 vs 0.0
    factors, head, x = cf_and_text(movielens, n_items_max=800)
    check_bridge(factors, head, x, l2=3.0, min_gain=0.15)


def test_bridge_rejects_bad_input():
    with pytest.raises(ValueError):
        TextToCFBridge(-1.0)
    with pytest.raises(ValueError, match="same n"):
        TextToCFBridge().fit(np.zeros((3, 4)), np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        TextToCFBridge().predict(np.zeros((1, 4)))
