"""FAISS vector indexes: inner product on L2-normalised vectors, int64 ids, no -1 ever returned.

Index kinds and how ids and removal work (faiss 1.15):
- ``Flat`` and other flat-code indexes: wrapped in ``IndexIDMap2``; ``remove_ids`` compacts in place.
- ``IVF...`` (IVF-Flat, IVF-PQ, with or without a pre-transform): ids stored natively in the inverted
  lists (``add_with_ids``), removal is native. They are *not* wrapped in ``IndexIDMap2``: in faiss 1.15
  ``IndexIDMap2(IVF).remove_ids`` compacts the id map while the IVF keeps its old internal ids, so
  later searches return wrong ids (checked; ``tests/test_index.py`` guards our removal path).
- ``HNSW...``: wrapped in ``IndexIDMap2`` (add works), but HNSW cannot remove; ``remove`` then rebuilds
  the graph from the stored vectors minus the removed ids (O(n log n); fine for rare removals).
Which one ``choose_factory`` picks: Flat up to ``flat_max_items``, then IVF-Flat (or HNSW when
``large_kind == "hnsw"``), then IVF-PQ above ``pq_over_items``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import faiss
import numpy as np

from ltray.config import IndexConfig
from ltray.data.segments import COLD, TAIL

# Searches of 2+ queries go through one BLAS pass over the stored vectors. FAISS's default (below 20
# queries) reads the whole index once per query, which is memory-bound: a user's few queries are one pass.
faiss.cvar.distance_compute_blas_threshold = 2


# ----------------------------------------------------------------- decisions
def ivf_nlist(n: int, cfg: IndexConfig) -> int:
    """IVF cells: cfg.ivf_nlist, else the power of 2 nearest 4*sqrt(n), capped so every cell gets
    ``ivf_min_points_per_cell`` training points (k-means is poor below that)."""
    cap = max(1, min(n, cfg.train_sample) // cfg.ivf_min_points_per_cell)
    if cfg.ivf_nlist is not None:
        return int(cfg.ivf_nlist)
    want = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(n, 1)))))
    return int(min(want, 2 ** int(math.log2(cap))))


def pq_m(dim: int, cfg: IndexConfig) -> int:
    """PQ sub-quantizers: cfg.pq_m, else dim/4 (4 dims per byte), rounded down to a divisor of dim."""
    m = cfg.pq_m or max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def resolve_nprobe(nlist: int, nprobe: int | None, probe_share: float = 1 / 64, min_nprobe: int = 16) -> int:
    """Cells probed per query: nprobe when given, else a share of the cells (recall at fixed nprobe falls
    as nlist grows with the catalog; a fixed share keeps it roughly level), never more than nlist."""
    want = nprobe if nprobe is not None else max(min_nprobe, math.ceil(nlist * probe_share))
    return int(max(1, min(want, nlist)))


def choose_factory(n: int, dim: int, cfg: IndexConfig) -> str:
    """The FAISS ``index_factory`` string for ``n`` vectors of ``dim`` dimensions."""
    if cfg.factory:
        return cfg.factory
    if n <= cfg.flat_max_items:
        return "Flat"
    if n > cfg.pq_over_items:
        refine = f",Refine({cfg.pq_refine})" if cfg.pq_refine else ""
        return f"IVF{ivf_nlist(n, cfg)},PQ{pq_m(dim, cfg)}{refine}"
    if cfg.large_kind == "hnsw":
        return f"HNSW{cfg.hnsw_m}"
    return f"IVF{ivf_nlist(n, cfg)},Flat"


def use_gpu_decision(use_gpu: str, num_gpus: int, factory: str) -> bool:
    """Whether to move an index to the GPU. HNSW has no GPU version in faiss, so it stays on CPU."""
    if use_gpu == "never" or "HNSW" in factory.upper():
        if use_gpu == "always" and num_gpus > 0:
            raise ValueError(f"index.use_gpu=always but {factory} has no GPU implementation")
        return False
    if use_gpu == "always" and num_gpus == 0:
        raise RuntimeError("index.use_gpu=always but faiss sees no GPU (is faiss-gpu installed?)")
    return num_gpus > 0


def _normalised(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :] if x.size else x.reshape(0, dim)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _unwrap(index):
    """The innermost index under IDMap / PreTransform wrappers, downcast."""
    idx = faiss.downcast_index(index)
    while True:
        if isinstance(idx, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        else:
            return idx


# -------------------------------------------------------------------- index
class VectorIndex:
    """A FAISS index over int64 ids with add / remove / search / save / load.

    Vectors are L2-normalised on the way in, so scores are cosines. ``search`` returns at most
    ``min(k, ntotal)`` results per query and never an id of -1.
    """

    def __init__(self, dim: int, factory: str = "Flat", *, nprobe: int | None = None, probe_share: float = 1 / 64,
                 min_nprobe: int = 16, ef_search: int = 128, ef_construction: int = 40, train_sample: int = 200_000,
                 train_iters: int = 10, seed: int = 0, refine_k_factor: float = 4.0):
        self.dim, self.factory = int(dim), factory
        self.probe_share, self.min_nprobe, self.train_iters = float(probe_share), int(min_nprobe), int(train_iters)
        self.nprobe, self.ef_search, self.ef_construction = nprobe, ef_search, ef_construction
        self.train_sample, self.seed = train_sample, seed
        self.refine_k_factor = float(refine_k_factor)
        self.on_gpu = False
        self.index = self._new_index()
        self._ids = np.zeros(0, np.int64)  # sorted, for membership checks

    @classmethod
    def for_size(cls, n: int, dim: int, cfg: IndexConfig | None = None) -> VectorIndex:
        cfg = cfg or IndexConfig()
        return cls(dim, choose_factory(n, dim, cfg), nprobe=cfg.ivf_nprobe, probe_share=cfg.ivf_probe_share,
                   min_nprobe=cfg.ivf_min_nprobe, ef_search=cfg.hnsw_ef_search,
                   ef_construction=cfg.hnsw_ef_construction, train_sample=cfg.train_sample,
                   train_iters=cfg.ivf_train_iters, refine_k_factor=cfg.pq_refine_k_factor)

    # ---------------------------------------------------------------- internals
    def _new_index(self):
        base = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        inner = _unwrap(base)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efConstruction = self.ef_construction
        if isinstance(faiss.downcast_index(base), faiss.IndexRefine):
            faiss.downcast_index(base).k_factor = float(self.refine_k_factor)
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None and not isinstance(faiss.downcast_index(base), faiss.IndexRefine):
            ivf.cp.niter = self.train_iters
            index = base  # native ids (see the module docstring for why not IndexIDMap2)
        else:  # IndexRefine has no add_with_ids: ids live in the map; removal rebuilds (see remove)
            if ivf is not None:
                ivf.cp.niter = self.train_iters
            index = faiss.IndexIDMap2(base)
        self._apply_search_params(index)
        return index

    @property
    def kind(self) -> str:
        if self.on_gpu:
            return self._gpu_kind[0]
        inner = _unwrap(self.index)
        if isinstance(inner, faiss.IndexIVF):
            return "ivf"
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexRefine):
            return "refine"
        return "flat"

    def _apply_search_params(self, index=None) -> None:
        index = self.index if index is None else index
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = resolve_nprobe(ivf.nlist, self.nprobe, self.probe_share, self.min_nprobe)
        inner = _unwrap(index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = int(self.ef_search)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        if nprobe is not None:
            self.nprobe = int(nprobe)
        if ef_search is not None:
            self.ef_search = int(ef_search)
        if not self.on_gpu:
            self._apply_search_params()
        else:
            self._gpu_nprobe()

    def _gpu_nprobe(self) -> None:
        nlist = self._gpu_kind[1]
        faiss.GpuParameterSpace().set_index_parameter(
            self.index, "nprobe", resolve_nprobe(nlist, self.nprobe, self.probe_share, self.min_nprobe))

    def _check_ids(self, ids: np.ndarray, n: int) -> np.ndarray:
        ids = np.ascontiguousarray(np.atleast_1d(np.asarray(ids)).astype(np.int64))
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} vectors")
        if len(ids) and ids.min() < 0:
            raise ValueError("ids must be >= 0 (-1 is FAISS's 'no result')")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        if len(self._ids) and np.isin(ids, self._ids).any():
            dup = ids[np.isin(ids, self._ids)][:5].tolist()
            raise ValueError(f"ids already in the index: {dup}; remove them first")
        return ids

    def _train(self, x: np.ndarray) -> None:
        if len(x) > self.train_sample:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(len(x), self.train_sample, replace=False))]
        self.index.train(x)

    def _cpu(self):
        return faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index

    # ------------------------------------------------------------------- build
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def contains(self, ids) -> np.ndarray:
        """Which of ``ids`` are in the index (a boolean mask)."""
        ids = np.asarray(ids, np.int64)
        if not len(self._ids):
            return np.zeros(ids.shape, bool)
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        return self._ids[pos] == ids

    def build(self, ids, vectors) -> VectorIndex:
        """Replace the content with these vectors, training first where the index type needs it."""
        x = _normalised(vectors, self.dim, "vectors")
        self.on_gpu = False
        self.index = self._new_index()
        self._ids = np.zeros(0, np.int64)
        if len(x):
            self.add(ids, x)
        return self

    def add(self, ids, vectors) -> None:
        x = _normalised(vectors, self.dim, "vectors")
        ids = self._check_ids(ids, len(x))
        if not len(x):
            return
        if not self.index.is_trained:
            self._train(x)
        self.index.add_with_ids(x, ids)
        self._ids = np.sort(np.concatenate([self._ids, ids]))

    def remove(self, ids) -> int:
        """Remove these ids (unknown ids are ignored); returns how many were removed."""
        ids = np.unique(np.atleast_1d(np.asarray(ids)).astype(np.int64))
        ids = ids[np.isin(ids, self._ids)]
        if not len(ids):
            return 0
        if self.on_gpu:  # GPU indexes do not support removal: come back to the CPU for it
            self.index, self.on_gpu = self._cpu(), False
        if self.kind in ("hnsw", "refine"):
            keep = self._ids[~np.isin(self._ids, ids)]
            vecs = self.index.reconstruct_batch(keep) if len(keep) else np.zeros((0, self.dim), np.float32)
            self.build(keep, vecs)
            return len(ids)
        n = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._ids = self._ids[~np.isin(self._ids, ids)]
        assert n == len(ids) and self.ntotal == len(self._ids), "faiss removed a different set of ids"
        return n

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (m, k'), ids (m, k'))`` with ``k' = min(k, ntotal)``, best first, never -1.

        IVF / HNSW can come back short of k' (few vectors in the probed cells): those rows are searched
        again exhaustively (nprobe = nlist) or with a wider beam. If a row is still short the width is
        cut to the shortest row, so every entry is a real id.
        """
        q = _normalised(queries, self.dim, "queries")
        m = len(q)
        kk = int(min(max(int(k), 0), self.ntotal))
        if m == 0 or kk == 0:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        scores, ids = self.index.search(q, kk)
        short = (ids < 0).any(axis=1)
        if short.any() and not self.on_gpu:
            params = None
            if self.kind == "ivf":
                params = faiss.SearchParametersIVF(nprobe=int(faiss.try_extract_index_ivf(self.index).nlist))
            elif self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=int(max(4 * kk, self.ef_search)))
            if params is not None:
                s2, i2 = self.index.search(q[short], kk, params=params)
                scores[short], ids[short] = s2, i2
                short = (ids < 0).any(axis=1)
        if short.any():
            width = int((ids >= 0).sum(axis=1).min())
            scores, ids = scores[:, :width], ids[:, :width]
        return np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(ids, np.int64)

    # --------------------------------------------------------------------- GPU
    def to_gpu(self, use_gpu: str = "auto") -> bool:
        """Move to all visible GPUs when allowed and possible; returns whether it is on GPU now."""
        if self.on_gpu:
            return True
        if not hasattr(faiss, "index_cpu_to_all_gpus") or not use_gpu_decision(
                use_gpu, faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0, self.factory):
            return False
        ivf = faiss.try_extract_index_ivf(self.index)
        self._gpu_kind = (self.kind, int(ivf.nlist) if ivf is not None else 1)  # GPU indexes do not downcast
        try:
            self.index = faiss.index_cpu_to_all_gpus(self.index)
            self.on_gpu = True
            if self.kind == "ivf":
                self._gpu_nprobe()
        except RuntimeError as e:  # e.g. an index type without a GPU version
            if use_gpu == "always":
                raise
            warnings.warn(f"FAISS index {self.factory} stays on CPU: {e}", RuntimeWarning, stacklevel=2)
        return self.on_gpu

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._cpu(), str(p))
        return p

    @classmethod
    def load(cls, path: str | Path, cfg: IndexConfig | None = None, *, nprobe: int | None = None,
             ef_search: int | None = None) -> VectorIndex:
        """Read an index written by ``save``; search parameters come from cfg (or the keywords)."""
        cfg = cfg or IndexConfig()
        index = faiss.read_index(str(path))
        obj = cls.__new__(cls)
        obj.dim, obj.on_gpu, obj.index = int(index.d), False, index
        obj.nprobe = nprobe if nprobe is not None else cfg.ivf_nprobe
        obj.probe_share, obj.min_nprobe = cfg.ivf_probe_share, cfg.ivf_min_nprobe
        obj.ef_search = int(ef_search if ef_search is not None else cfg.hnsw_ef_search)
        obj.ef_construction, obj.train_sample, obj.seed = cfg.hnsw_ef_construction, cfg.train_sample, 0
        obj.train_iters = cfg.ivf_train_iters
        obj.refine_k_factor = cfg.pq_refine_k_factor
        obj.factory = _describe(index)
        obj._apply_search_params()
        obj._ids = np.sort(_stored_ids(index))
        return obj


def _describe(index) -> str:
    """The index_factory string of a loaded index, so that ``build`` can make a fresh one like it."""
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return type(faiss.downcast_index(index)).__name__  # e.g. OPQ: not rebuilt from a string
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        ref = faiss.downcast_index(inner.refine_index)
        ref_s = "SQ8" if isinstance(ref, faiss.IndexScalarQuantizer) else "Flat"
        return f"{_describe(inner.base_index)},Refine({ref_s})"
    if isinstance(inner, faiss.IndexHNSWFlat):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexIVFFlat):
        return f"IVF{inner.nlist},Flat"
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits}"
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    return type(inner).__name__


def _stored_ids(index) -> np.ndarray:
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.vector_to_array(idx.id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"cannot read the ids of a {type(idx).__name__}; save a VectorIndex instead")
    inv = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            ptr = inv.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            inv.release_ids(lst, ptr)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------- tail and full
def tail_mask(segments) -> np.ndarray:
    """Boolean mask of tail + cold items from a bool mask or an array of segment labels."""
    seg = np.asarray(segments)
    if seg.dtype == bool:
        return seg
    return np.isin(seg.astype(str), [TAIL, COLD])


def build_tail_and_full(item_vectors: np.ndarray, segments, cfg: IndexConfig | None = None
                        ) -> tuple[VectorIndex, VectorIndex]:
    """Two indexes over catalog rows (ids = row numbers): tail + cold items only, and every item."""
    cfg = cfg or IndexConfig()
    x = np.asarray(item_vectors, np.float32)
    mask = tail_mask(segments)
    if len(mask) != len(x):
        raise ValueError(f"{len(mask)} segment labels for {len(x)} item vectors")
    return build_subset(x, mask, cfg), build_subset(x, np.ones(len(x), bool), cfg)


def build_subset(item_vectors: np.ndarray, mask: np.ndarray, cfg: IndexConfig | None = None) -> VectorIndex:
    """An index over the catalog rows where `mask` is True (ids = row numbers), its kind picked by size."""
    cfg = cfg or IndexConfig()
    x = np.asarray(item_vectors, np.float32)
    mask = np.asarray(mask, bool)
    rows = np.arange(len(x), dtype=np.int64)
    return VectorIndex.for_size(int(mask.sum()), x.shape[1], cfg).build(rows[mask], x[mask])
