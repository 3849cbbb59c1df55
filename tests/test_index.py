"""FAISS indexes: factory choice, add/remove, save/load, k > size, empty, no -1 ids, tail vs full."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ltray.config import IndexConfig
from ltray.data import COLD, HEAD, TAIL, compute_segments, global_time_cut
from ltray.index.faiss_index import (
    VectorIndex,
    build_tail_and_full,
    choose_factory,
    ivf_nlist,
    resolve_nprobe,
    tail_mask,
    use_gpu_decision,
)

DIM = 32
FACTORIES = ["Flat", "IVF16,Flat", "HNSW16", "IVF8,PQ16x4"]


def clustered(n: int, dim: int = DIM, centres: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(centres, size=n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """faiss's OpenMP threads spin-wait: on a shared 2-core box one thread is ~7x faster for these sizes."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vecs():
    return clustered(2000)


def test_choose_factory_by_size():
    cfg = IndexConfig()
    assert choose_factory(500, 384, cfg) == "Flat"
    assert choose_factory(cfg.flat_max_items, 384, cfg) == "Flat"
    assert choose_factory(1_000_000, 384, cfg) == "IVF4096,Flat"
    assert choose_factory(1_000_000, 384, cfg.model_copy(update={"large_kind": "hnsw"})) == "HNSW32"
    assert choose_factory(10_000_000, 384, cfg) == "IVF4096,PQ96,Refine(SQ8)"
    assert choose_factory(10_000_000, 384, cfg.model_copy(update={"pq_refine": None})) == "IVF4096,PQ96"
    assert choose_factory(10, 384, cfg.model_copy(update={"factory": "IVF2,SQ8"})) == "IVF2,SQ8"
    # nlist never outgrows the k-means training sample
    assert ivf_nlist(150_000, cfg.model_copy(update={"train_sample": 10_000})) * 39 <= 10_000
    for n in (1, 10, 1000, 10**5, 10**6, 10**8):
        nl = ivf_nlist(n, cfg)
        assert nl >= 1 and nl & (nl - 1) == 0


def test_nprobe_is_a_share_of_cells_unless_given():
    assert resolve_nprobe(4096, None) == 64  # 1/64 of the cells: measured recall@100 0.97 at 1M
    assert resolve_nprobe(1024, None) == 16
    assert resolve_nprobe(8, None) == 8  # never more than nlist
    assert resolve_nprobe(4096, 10) == 10
    assert resolve_nprobe(4096, None, probe_share=0.5, min_nprobe=1) == 2048
    x = clustered(1000)
    idx = VectorIndex.for_size(1000, DIM, IndexConfig(factory="IVF32,Flat", ivf_min_nprobe=4, ivf_probe_share=0.25))
    idx.build(np.arange(1000), x)
    assert faiss.try_extract_index_ivf(idx.index).nprobe == 8


def test_gpu_decision_is_pure_and_strict():
    assert use_gpu_decision("auto", 0, "Flat") is False
    assert use_gpu_decision("auto", 2, "IVF1024,Flat") is True
    assert use_gpu_decision("never", 4, "Flat") is False
    assert use_gpu_decision("auto", 1, "HNSW32") is False  # no GPU HNSW in faiss
    with pytest.raises(RuntimeError):
        use_gpu_decision("always", 0, "Flat")
    # on this CPU-only build to_gpu must leave the index usable on CPU
    idx = VectorIndex(DIM, "Flat").build(np.arange(3), clustered(3))
    assert idx.to_gpu("auto") is (faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False)
    assert idx.search(clustered(1), 2)[1].shape == (1, 2)


@pytest.mark.parametrize("factory", FACTORIES)
def test_build_search_finds_itself_with_ids(vecs, factory):
    ids = np.arange(len(vecs), dtype=np.int64) * 7 + 3
    idx = VectorIndex(DIM, factory, nprobe=16, ef_search=64).build(ids, vecs)
    assert idx.ntotal == len(vecs)
    scores, got = idx.search(vecs[:50], 10)
    assert got.shape == scores.shape == (50, 10)
    assert got.dtype == np.int64 and scores.dtype == np.float32
    if "PQ" in factory:  # lossy codes: the item itself is near the top, not always first
        assert (got == ids[:50, None]).any(axis=1).mean() >= 0.8
    else:
        np.testing.assert_array_equal(got[:, 0], ids[:50])
    assert (np.diff(scores, axis=1) <= 1e-5).all()


@pytest.mark.parametrize("factory", FACTORIES)
def test_add_remove_round_trip(vecs, factory):
    ids = np.arange(len(vecs), dtype=np.int64) + 1000
    idx = VectorIndex(DIM, factory, nprobe=16, ef_search=64).build(ids[:1500], vecs[:1500])
    idx.add(ids[1500:], vecs[1500:])
    assert idx.ntotal == 2000
    gone = ids[::3]
    assert idx.remove(np.concatenate([gone, [5, 6]])) == len(gone)  # unknown ids are ignored
    assert idx.ntotal == 2000 - len(gone)
    assert set(idx.ids().tolist()) == set(ids.tolist()) - set(gone.tolist())
    np.testing.assert_array_equal(idx.contains(np.concatenate([ids, [5, 10**9]])),
                                  np.concatenate([~np.isin(ids, gone), [False, False]]))
    _, got = idx.search(vecs, 20)
    assert not np.isin(got, gone).any()
    # the remaining ids still map to their own vectors (faiss's IDMap2-over-IVF gets this wrong)
    if "PQ" not in factory:
        kept = np.flatnonzero(~np.isin(ids, gone))
        _, top = idx.search(vecs[kept], 1)
        np.testing.assert_array_equal(top[:, 0], ids[kept])
    idx.add(gone, vecs[::3])
    assert idx.ntotal == 2000
    _, top = idx.search(vecs[::3][:30], 1)
    if "PQ" not in factory:
        np.testing.assert_array_equal(top[:, 0], gone[:30])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(ids[:2], vecs[:2])


@pytest.mark.parametrize("factory", FACTORIES)
def test_save_load_round_trip(vecs, factory, tmp_path):
    cfg = IndexConfig(ivf_nprobe=5, hnsw_ef_search=77)
    idx = VectorIndex(DIM, factory, nprobe=5, ef_search=77).build(np.arange(2000) * 2, vecs)
    idx.remove([0, 2, 4])
    path = idx.save(tmp_path / "x.faiss")
    back = VectorIndex.load(path, cfg)
    assert back.ntotal == idx.ntotal and back.kind == idx.kind
    np.testing.assert_array_equal(back.ids(), idx.ids())
    s1, i1 = idx.search(vecs[:100], 15)
    s2, i2 = back.search(vecs[:100], 15)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    # search parameters come from the config after load, not from whatever the file held
    if back.kind == "ivf":
        assert faiss.try_extract_index_ivf(back.index).nprobe == 5
    other = VectorIndex.load(path, IndexConfig(ivf_nprobe=8, hnsw_ef_search=200))
    if other.kind == "ivf":
        assert faiss.try_extract_index_ivf(other.index).nprobe == 8
    if other.kind == "hnsw":
        assert faiss.downcast_index(other.index.index).hnsw.efSearch == 200
    back.add([1], vecs[:1])  # a loaded index is still mutable
    assert back.ntotal == idx.ntotal + 1
    assert back.factory == factory
    back.build(np.arange(300), vecs[:300])  # and can be rebuilt from its factory string
    assert back.ntotal == 300 and back.kind == idx.kind


@pytest.mark.parametrize("factory", FACTORIES)
def test_k_larger_than_index_and_no_minus_one(vecs, factory):
    # nprobe=1 leaves most IVF cells unprobed: without the exhaustive retry rows come back short
    idx = VectorIndex(DIM, factory, nprobe=1, ef_search=8).build(np.arange(300), vecs[:300])
    scores, ids = idx.search(vecs[:20], 1000)
    assert ids.shape == (20, 300)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert all(len(np.unique(r)) == 300 for r in ids)
    small = VectorIndex(DIM, "Flat").build([4, 9], vecs[:2])
    s, i = small.search(vecs[:3], 5)
    assert i.shape == (3, 2) and set(i.ravel().tolist()) <= {4, 9}


def test_empty_index_and_bad_input(vecs):
    idx = VectorIndex(DIM, "Flat")
    s, i = idx.search(vecs[:4], 10)
    assert s.shape == i.shape == (4, 0)
    idx.build(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))
    assert idx.ntotal == 0 and idx.search(vecs[0], 3)[1].shape == (1, 0)
    assert not idx.contains([0, 1]).any()
    full = VectorIndex(DIM, "Flat").build([1, 2], vecs[:2])
    full.remove([1, 2])
    assert full.ntotal == 0 and full.search(vecs[:2], 3)[1].shape == (2, 0)
    with pytest.raises(ValueError, match="shape"):
        full.search(np.zeros((2, DIM + 1), np.float32), 3)
    with pytest.raises(ValueError, match="duplicate"):
        full.add([3, 3], vecs[:2])
    with pytest.raises(ValueError, match=">= 0"):
        full.add([-1], vecs[:1])
    assert full.search(np.zeros((0, DIM), np.float32), 3)[1].shape == (0, 0)


def test_vectors_are_normalised_so_scores_are_cosines(vecs):
    idx = VectorIndex(DIM, "Flat").build(np.arange(100), vecs[:100] * 5.0)
    s, i = idx.search(vecs[:10] * 0.1, 1)
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(i[:, 0], np.arange(10))


def _segment_codes(ds, head_share):
    train, _, _ = global_time_cut(ds.interactions, 0.2)
    return compute_segments(ds.items["item_id"], train, head_share).table["segment"].to_numpy()


@pytest.mark.parametrize("dataset", ["synthetic", "movielens"])
def test_tail_index_holds_exactly_tail_and_cold(dataset, small_synthetic, movielens):
    ds = small_synthetic if dataset == "synthetic" else movielens
    seg = _segment_codes(ds, 0.8)
    counts = {s: int((seg == s).sum()) for s in (HEAD, TAIL, COLD)}
    assert counts[HEAD] and counts[TAIL] and counts[COLD]  # all three present, or the test says little
    # text vectors do not matter for membership; random ones keep the MovieLens case fast
    x = clustered(len(seg), seed=1)
    cfg = IndexConfig(flat_max_items=1000)  # MovieLens's full index then is an IVF
    tail, full = build_tail_and_full(x, seg, cfg)
    want = np.flatnonzero(np.isin(seg, [TAIL, COLD]))
    np.testing.assert_array_equal(tail.ids(), want)
    np.testing.assert_array_equal(full.ids(), np.arange(len(seg)))
    _, got = tail.search(x[:50], 25)
    assert np.isin(got, want).all()
    # a bool mask works the same
    tail2, _ = build_tail_and_full(x, tail_mask(seg), cfg)
    np.testing.assert_array_equal(tail2.ids(), want)
    with pytest.raises(ValueError, match="segment labels"):
        build_tail_and_full(x[:-1], seg, cfg)


def test_ivf_pq_with_refine_recall_remove_and_reload(tmp_path):
    """IVF-PQ + Refine(SQ8), the large-catalog default: re-ranking lifts recall over PQ alone."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((20, 64)).astype(np.float32)
    x = centres[rng.integers(20, size=4000)] + 0.4 * rng.standard_normal((4000, 64)).astype(np.float32)
    q = x[:50] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    _, gt = VectorIndex(64, "Flat").build(ids, x).search(q, 20)

    def recall(index):
        _, got = index.search(q, 20)
        return np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(got, gt, strict=True)])

    # "np": no polysemous training. It only permutes the 8-bit codes for Hamming-filtered search, which
    # VectorIndex never turns on (polysemous_ht = 0): same codes, same distances, same recall, and it cost
    # ~50 s of simulated annealing per training here (three trainings: pq, refined, refined's rebuild).
    pq = VectorIndex(64, "IVF16,PQ8np", nprobe=16).build(ids, x)
    refined = VectorIndex(64, "IVF16,PQ8np,Refine(SQ8)", nprobe=16, refine_k_factor=4).build(ids, x)
    assert refined.kind == "refine" and recall(refined) > 2 * recall(pq) and recall(refined) >= 0.7
    assert refined.remove([0, 1, 2]) == 3 and refined.ntotal == 3997
    assert not np.isin([0, 1, 2], refined.search(q, 20)[1]).any()
    loaded = VectorIndex.load(refined.save(tmp_path / "r.faiss"), IndexConfig(ivf_nprobe=16))
    np.testing.assert_array_equal(loaded.search(q, 20)[1], refined.search(q, 20)[1])
    assert loaded.factory.endswith("Refine(SQ8)")
    assert choose_factory(10**7, 384, IndexConfig()).endswith(",Refine(SQ8)")
