"""The stage deployments: the plain stages of `deployments.stages` with Ray at the edges (replica
options, request batching, metrics). The chain runs CFRecall -> TailRetrieval -> CTRRanker; the
colocated `Pipeline` runs the whole path in one replica.

Handlers are async: a few ms of numpy run on the replica's event loop rather than hopping to Serve's
thread pool.
"""

from typing import Any

import numpy as np
from ray import serve

from deployments.metrics import BatchStats, StageMetrics
from deployments.stages import (
    Artifacts,
    Ranked,
    RankStage,
    Recall,
    RecallStage,
    RetrievalStage,
    limit_threads,
)
from ltray.candidates import CandidateTable
from ltray.config import ServeConfig
from ltray.data.segments import HEAD, TAIL, Segment
from ltray.user_state import Ask


def _sized(batched, cfg: ServeConfig) -> None:
    """`@serve.batch`'s arguments are placeholders: the sizes come from the config."""
    batched.set_max_batch_size(cfg.max_batch_size)
    batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)


class _Stage:
    version: str

    def ready(self) -> str:
        return self.version


class _Batched:
    batches: BatchStats

    def batch_stats(self) -> dict[str, Any]:
        """This replica's id, and its forward passes, requests scored and largest batch."""
        return self.batches.stats()


class _ItemQueries(_Stage):
    """/similar and /search, from the replica's RetrievalStage."""

    retrieval: RetrievalStage
    metrics: StageMetrics

    def similar(self, item_id: str, k: int, segment: str | None):
        with self.metrics.timed("similar"):
            try:
                return self.retrieval.similar(item_id, k, segment)
            except KeyError:  # not in the catalog
                return None

    def search(self, text: str, k: int, segment: str | None):
        with self.metrics.timed("search"):
            return self.retrieval.search(text, k, segment)


@serve.deployment(name="CFRecall")
class CFRecall(_Stage):
    """ALS factors and user state; folds unseen users in from `recent_items`."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = ServeConfig.model_validate(serve_cfg)
        self.stage = RecallStage(Artifacts(artifacts, cfg))
        self.version = self.stage.version
        limit_threads(cfg.threads)
        self.metrics = StageMetrics("CFRecall")

    async def recall(self, user_id: str, recent_items: list[str] | None, exclude_seen: bool) -> Recall:
        with self.metrics.timed("recall"):
            out = self.stage.recall(user_id, recent_items, exclude_seen)
        rows = np.concatenate([p[1] for p in out.parts]) if out.parts else np.zeros(0, np.int64)
        off_head = self.stage.generator.models.item_segment[rows] != Segment.HEAD
        self.metrics.tail_share(np.where(off_head, TAIL, HEAD))
        return out


@serve.deployment(name="TailRetrieval")
class TailRetrieval(_ItemQueries):
    """FAISS tail/full indexes, the text->CF bridge and the query text encoder."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = ServeConfig.model_validate(serve_cfg)
        self.retrieval = RetrievalStage(Artifacts(artifacts, cfg))
        self.retrieval.encoder  # load the encoder now, not on the first /search  # noqa: B018
        self.version = self.retrieval.version
        limit_threads(cfg.threads)
        _sized(self._candidates_batched, cfg)
        self.metrics = StageMetrics("TailRetrieval")

    async def candidates(self, recall: Recall) -> CandidateTable | None:
        with self.metrics.timed("candidates"):
            out = await self._candidates_batched(recall)
        if out is not None:
            self.metrics.tail_share(out["segment"])
        return out

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _candidates_batched(self, recalls: list[Recall]) -> list[CandidateTable | None]:
        """Requests waiting together share one FAISS search per index."""
        return self.retrieval.candidates_many(recalls)


@serve.deployment(name="CTRRanker")
class CTRRanker(_Stage, _Batched):
    """FeatureBuilder + CTR model, batched; then the tail-aware blend and reasons."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = ServeConfig.model_validate(serve_cfg)
        self.ranking = RankStage(Artifacts(artifacts, cfg))
        self.version = self.ranking.version
        limit_threads(cfg.threads)
        _sized(self._rank_batched, cfg)
        self.batches = BatchStats()
        self.metrics = StageMetrics("CTRRanker")

    async def rank(self, user_id: str, state, cands, k: int, tail_share: float | None, version: str) -> Ranked:
        """The top k of the candidates (columns), or `top=None` when they came from another artifacts version."""
        if version != self.version:
            return Ranked(None, 0.0, self.version)
        with self.metrics.timed("rank"):
            ranked = await self._rank_batched((Ask(user_id, k, tail_share), state, cands))
        self.metrics.tail_share(ranked.top["segment"])
        return ranked

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _rank_batched(self, requests: list[tuple]) -> list[Ranked]:
        """Requests waiting together go through the CTR model in one forward pass."""
        self.batches.count(len(requests))
        return self.ranking.rank_many(*zip(*requests, strict=True))


@serve.deployment(name="Pipeline")
class Pipeline(_ItemQueries, _Batched):
    """All three stages in one replica (topology=colocated): no hops between them."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = ServeConfig.model_validate(serve_cfg)
        art = Artifacts(artifacts, cfg)
        # one set of models (with the FAISS indexes) for the whole path and /similar, /search
        self.ranking, self.retrieval = RankStage(art, faiss_indexes=True), RetrievalStage(art)
        self.retrieval.encoder  # noqa: B018
        self.version = self.ranking.version
        limit_threads(cfg.threads)
        _sized(self._recommend_batched, cfg)
        self.batches = BatchStats()
        self.metrics = StageMetrics("Pipeline")

    async def recommend(self, user_id: str, k: int, tail_share: float | None, exclude_seen: bool,
                        recent_items: list[str] | None) -> dict[str, Any]:
        with self.metrics.timed("recommend"):
            body = await self._recommend_batched(Ask(user_id, k, tail_share, exclude_seen, recent_items))
        self.metrics.tail_share([it["segment"] for it in body["items"]])
        return body

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _recommend_batched(self, asks: list[Ask]) -> list[dict[str, Any]]:
        """The requests waiting together go through one FAISS search per index and one forward pass."""
        self.batches.count(len(asks))
        return self.ranking.recommend_many(asks)
