"""Sharded retrieval on Ray Serve: one deployment per index shard, a router that merges the top-k.

For catalogs whose index does not fit one node. ``RetrievalShard{i}`` replicas each load only shard
``i`` of a ``ShardedIndex`` folder (``ShardedIndex.load_shard``), so a replica holds about 1/N of the
index; every shard deployment autoscales on its own (a replica group per shard). ``ShardRouter``
sends the query vectors to all N groups concurrently through DeploymentHandles and merges their
answers with ``merge_topk`` (the same merge as ``ShardedIndex.search``).

    serve run deployments.sharded:build_sharded_app index_dir=/path/to/sharded-index
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request

from ltray.index.sharded import ShardedIndex, merge_topk


@serve.deployment(name="RetrievalShard")
class RetrievalShard:
    """Holds one shard of the index; answers (scores, ids) of its own top-k."""

    def __init__(self, index_dir: str, shard: int, threads: int = 1):
        import faiss

        faiss.omp_set_num_threads(int(threads))  # replicas share the node's cores
        self.shard = int(shard)
        self.index = ShardedIndex.load_shard(index_dir, self.shard)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.asarray(queries, np.float32), int(k))

    def ntotal(self) -> int:
        return self.index.ntotal


@serve.deployment(name="ShardRouter")
class ShardRouter:
    """Fans a query out to every shard group and keeps the global top-k."""

    def __init__(self, *shards):
        self.shards = list(shards)

    async def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = await asyncio.gather(*[h.search.remote(queries, k) for h in self.shards])
        return merge_topk(parts, int(k))

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        q = np.atleast_2d(np.asarray(body["vector"], np.float32))
        scores, ids = await self.search(q, int(body.get("k", 10)))
        return {"ids": ids.tolist(), "scores": scores.tolist()}


def build_sharded_app(args: dict[str, Any]):
    """args: index_dir (a ShardedIndex folder), num_cpus per replica (default 0.25), threads (default 1)."""
    index_dir = str(args["index_dir"])
    cpus = float(args.get("num_cpus", 0.25))
    threads = int(args.get("threads", 1))
    n = ShardedIndex.read_manifest(index_dir)["n_shards"]
    shards = [RetrievalShard.options(name=f"RetrievalShard{i}", ray_actor_options={"num_cpus": cpus})
              .bind(index_dir, i, threads) for i in range(n)]
    return ShardRouter.options(ray_actor_options={"num_cpus": cpus}).bind(*shards)
