"""A vector index split into N shards over disjoint ids: search every shard, merge the top-k.

For catalogs whose index does not fit one node. Item ``i`` lives in shard ``i % n_shards``
(``shard_of``), so adds and removals route without a lookup table and every shard gets an even
share. Each shard is an ordinary ``VectorIndex`` sized for its own share (Flat, IVF or IVF-PQ by
``choose_factory``), saved as its own FAISS file, so one Serve replica group can load just
``shard-<i>.faiss`` (``load_shard``) and a router merges the groups' answers with ``merge_topk``.
Exact (Flat) shards give the same top-k as one unsharded Flat index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltray.config import IndexConfig
from ltray.index.faiss_index import VectorIndex

MANIFEST = "shards.json"


def shard_of(ids, n_shards: int) -> np.ndarray:
    """The shard each id belongs to."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return np.asarray(ids, np.int64) % n_shards


def shard_file(i: int) -> str:
    return f"shard-{i:04d}.faiss"


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(scores (m, k_i), ids (m, k_i))`` into the global ``(m, min(k, sum k_i))``.

    Best score first; equal scores are ordered by id, so the merge is deterministic.
    """
    m = parts[0][1].shape[0] if parts else 0
    parts = [p for p in parts if p[1].shape[1] > 0]
    if not parts:
        return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
    scores = np.concatenate([np.asarray(s, np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, np.int64) for _, i in parts], axis=1)
    kk = int(min(max(k, 0), scores.shape[1]))
    order = np.lexsort((ids, -scores), axis=1)[:, :kk]  # last key is the primary one
    return (np.ascontiguousarray(np.take_along_axis(scores, order, axis=1)),
            np.ascontiguousarray(np.take_along_axis(ids, order, axis=1)))


class ShardedIndex:
    """``VectorIndex``-like: build / add / remove / search / save / load, over N shards."""

    def __init__(self, shards: Sequence[VectorIndex]):
        if not shards:
            raise ValueError("a ShardedIndex needs at least one shard")
        dims = {s.dim for s in shards}
        if len(dims) != 1:
            raise ValueError(f"shards disagree on the dimension: {sorted(dims)}")
        self.shards = list(shards)
        self.dim = dims.pop()

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def __len__(self) -> int:
        return self.ntotal

    @classmethod
    def build(cls, ids, vectors, n_shards: int, cfg: IndexConfig | None = None,
              factory: str | None = None) -> ShardedIndex:
        """Split (ids, vectors) by ``shard_of`` and build one index per shard, sized for its share."""
        cfg = cfg or IndexConfig()
        ids = np.asarray(ids, np.int64)
        x = np.asarray(vectors, np.float32)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        where = shard_of(ids, n_shards)
        shards = []
        for i in range(n_shards):
            mask = where == i
            idx = (VectorIndex(x.shape[1], factory, nprobe=cfg.ivf_nprobe, ef_search=cfg.hnsw_ef_search,
                               ef_construction=cfg.hnsw_ef_construction, train_sample=cfg.train_sample)
                   if factory else VectorIndex.for_size(int(mask.sum()), x.shape[1], cfg))
            shards.append(idx.build(ids[mask], x[mask]))
        return cls(shards)

    def add(self, ids, vectors) -> None:
        ids = np.asarray(ids, np.int64)
        x = np.asarray(vectors, np.float32)
        where = shard_of(ids, self.n_shards)
        for i, shard in enumerate(self.shards):
            mask = where == i
            if mask.any():
                shard.add(ids[mask], x[mask])

    def remove(self, ids) -> int:
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        where = shard_of(ids, self.n_shards)
        return sum(shard.remove(ids[where == i]) for i, shard in enumerate(self.shards))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's top-k, merged: ``(scores (m, k'), ids (m, k'))`` with k' = min(k, ntotal)."""
        q = np.asarray(queries, np.float32)
        return merge_topk([shard.search(q, k) for shard in self.shards], k)

    # ------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, shard in enumerate(self.shards):
            shard.save(folder / shard_file(i))
        (folder / MANIFEST).write_text(json.dumps({
            "n_shards": self.n_shards, "dim": self.dim, "routing": "id % n_shards",
            "shards": [{"file": shard_file(i), "ntotal": s.ntotal, "factory": s.factory}
                       for i, s in enumerate(self.shards)],
        }, indent=2))
        return folder

    @staticmethod
    def read_manifest(folder: str | Path) -> dict:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: not a sharded index folder")
        return json.loads(path.read_text())

    @classmethod
    def load_shard(cls, folder: str | Path, i: int, cfg: IndexConfig | None = None) -> VectorIndex:
        """One shard only: what a replica group holds."""
        n = cls.read_manifest(folder)["n_shards"]
        if not 0 <= i < n:
            raise ValueError(f"shard {i} does not exist; the index has {n} shards")
        return VectorIndex.load(Path(folder) / shard_file(i), cfg)

    @classmethod
    def load(cls, folder: str | Path, cfg: IndexConfig | None = None) -> ShardedIndex:
        n = cls.read_manifest(folder)["n_shards"]
        return cls([cls.load_shard(folder, i, cfg) for i in range(n)])
