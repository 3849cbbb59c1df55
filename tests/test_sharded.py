"""Sharded retrieval against unsharded retrieval on real text vectors of the synthetic catalog."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.config import IndexConfig
from ltray.index.faiss_index import VectorIndex
from ltray.index.sharded import ShardedIndex, merge_topk, shard_of

K = 20


@pytest.fixture(scope="module")
def catalog_vectors(small_synthetic):
    from ltray.embed.encoder import TextEncoder

    texts = small_synthetic.items["text"].tolist()
    vecs = TextEncoder(max_length=32).encode(texts)
    return np.arange(len(texts), dtype=np.int64), vecs


def _assert_same_topk(s_a, i_a, s_b, i_b, tol=1e-5):
    """Same scores; same ids wherever the score is not tied with a neighbour (ties may swap)."""
    assert s_a.shape == s_b.shape == i_a.shape == i_b.shape
    np.testing.assert_allclose(s_a, s_b, atol=tol)
    gap_prev = np.diff(s_a, axis=1, prepend=np.inf)
    gap_next = -np.diff(s_a, axis=1, append=-np.inf)
    untied = (np.abs(gap_prev) > tol) & (np.abs(gap_next) > tol)
    assert untied.mean() > 0.5  # the comparison must cover most positions
    np.testing.assert_array_equal(i_a[untied], i_b[untied])
    for r in range(len(i_a)):  # above the k-th score the id sets agree exactly (ties only at the cut)
        above_a = set(i_a[r][s_a[r] > s_a[r, -1] + tol])
        above_b = set(i_b[r][s_b[r] > s_b[r, -1] + tol])
        assert above_a == above_b


@pytest.mark.parametrize("n_shards", [1, 3, 4])
def test_flat_shards_match_unsharded_flat(catalog_vectors, n_shards):
    ids, vecs = catalog_vectors
    queries = vecs[::7] + 0.05 * np.random.default_rng(0).standard_normal(vecs[::7].shape).astype(np.float32)
    full = VectorIndex(vecs.shape[1], "Flat").build(ids, vecs)
    sharded = ShardedIndex.build(ids, vecs, n_shards, factory="Flat")
    assert sharded.ntotal == full.ntotal == len(ids)
    assert [s.ntotal for s in sharded.shards] == [int((shard_of(ids, n_shards) == i).sum())
                                                   for i in range(n_shards)]
    _assert_same_topk(*sharded.search(queries, K), *full.search(queries, K))


def test_size_rule_per_shard_and_ivf_recall(catalog_vectors):
    """Each shard picks its own factory from its own size; IVF shards keep high recall against exact."""
    ids, vecs = catalog_vectors
    cfg = IndexConfig(flat_max_items=200, ivf_min_points_per_cell=10, ivf_nprobe=4)
    sharded = ShardedIndex.build(ids, vecs, 2, cfg)  # 300 items per shard > 200: IVF
    assert all(s.kind == "ivf" for s in sharded.shards)
    small = ShardedIndex.build(ids, vecs, 4, cfg)  # 150 per shard: Flat
    assert all(s.kind == "flat" for s in small.shards)
    queries = vecs[::5]
    _, exact = VectorIndex(vecs.shape[1], "Flat").build(ids, vecs).search(queries, K)
    _, approx = sharded.search(queries, K)
    assert (approx >= 0).all() and approx.shape == exact.shape
    recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.8, recall


def test_add_remove_route_to_the_owning_shard(catalog_vectors):
    ids, vecs = catalog_vectors
    keep = ids < 500
    sharded = ShardedIndex.build(ids[keep], vecs[keep], 3, factory="Flat")
    sharded.add(ids[~keep], vecs[~keep])
    for i, shard in enumerate(sharded.shards):
        assert (shard_of(shard.ids(), 3) == i).all()
    assert sharded.ntotal == len(ids)
    gone = np.array([0, 1, 2, 599, 12345])
    assert sharded.remove(gone) == 4
    _, found = sharded.search(vecs[[0, 1, 2, 599]], 5)
    assert not np.isin(found, gone).any()


def test_save_load_and_one_shard_per_replica_group(catalog_vectors, tmp_path):
    ids, vecs = catalog_vectors
    sharded = ShardedIndex.build(ids, vecs, 3, factory="Flat")
    sharded.save(tmp_path / "tail")
    back = ShardedIndex.load(tmp_path / "tail")
    q = vecs[:30]
    np.testing.assert_array_equal(back.search(q, K)[1], sharded.search(q, K)[1])
    # What a router does with three replica groups, each holding one shard file.
    groups = [ShardedIndex.load_shard(tmp_path / "tail", i) for i in range(3)]
    routed = merge_topk([g.search(q, K) for g in groups], K)
    np.testing.assert_array_equal(routed[1], sharded.search(q, K)[1])
    with pytest.raises(ValueError, match="shard 3 does not exist"):
        ShardedIndex.load_shard(tmp_path / "tail", 3)
    with pytest.raises(FileNotFoundError, match="not a sharded index"):
        ShardedIndex.load(tmp_path)


def test_merge_topk_orders_by_score_then_id_and_handles_short_shards():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[4, 8]]))
    b = (np.array([[0.9]], np.float32), np.array([[2]]))
    empty = (np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64))
    s, i = merge_topk([a, b, empty], 10)
    assert i.tolist() == [[2, 4, 8]] and s.shape == (1, 3)
    s, i = merge_topk([empty, empty], 5)
    assert s.shape == (1, 0) and i.shape == (1, 0)
