"""The Ray Serve application: Ingress -> CFRecall -> TailRetrieval -> CTRRanker.

    serve run deployments.app:build_app artifacts=artifacts/movielens-latest-small
    serve run deployments.app:build_app artifacts=DIR serve.topology=colocated serve.max_replicas=4
    serve deploy deployments/serve_config.yaml
    ltray serve --artifacts DIR

The stage logic lives in `deployments.stages` (plain classes); this module only adds Ray: the
deployments, handles between them, request batching, metrics and the FastAPI ingress. With
`serve.topology=colocated` one `Pipeline` deployment runs the three stages in one process
(Ingress -> Pipeline: one hop instead of three).
"""


import asyncio
import contextlib
import json
import math
import os
import signal
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

import ltray
from deployments.docs import install_offline_docs
from deployments.schemas import (
    ErrorBody,
    Health,
    ItemsResponse,
    Ready,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
    Segment,
)
from deployments.stages import (
    Artifacts,
    Candidates,
    Ranked,
    RankStage,
    Recall,
    RecallStage,
    RetrievalStage,
    artifacts_version,
    limit_threads,
    recommendation,
    scored_items,
    tail_share_of,
)
from ltray.config import ServeConfig, load_config

# Histogram buckets of request latency (ms): sub-ms stage calls up to multi-second cold starts.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]
_REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class StageUnavailable(RuntimeError):
    """A stage deployment had no live replica for a call, after the configured retries."""


# -- metrics -------------------------------------------------------------------------------------
class StageMetrics:
    """Request count, latency and served tail share of one stage (Serve adds deployment/replica tags)."""

    def __init__(self, stage: str):
        from ray.serve import metrics

        self.stage = stage
        self.requests = metrics.Counter("ltray_requests", description="requests handled, by stage/route/status",
                                        tag_keys=("stage", "route", "status"))
        self.latency = metrics.Histogram("ltray_latency_ms", description="request latency in ms",
                                         boundaries=LATENCY_BUCKETS_MS, tag_keys=("stage", "route"))
        self.tail = metrics.Gauge("ltray_tail_share", description="share of tail/cold items in the last answer",
                                  tag_keys=("stage",))

    @contextlib.contextmanager
    def timed(self, route: str):
        t0 = time.perf_counter()
        status = "error"
        try:
            yield
            status = "ok"
        finally:
            tags = {"stage": self.stage, "route": route}
            self.latency.observe((time.perf_counter() - t0) * 1e3, tags=tags)
            self.requests.inc(tags={**tags, "status": status})

    def record(self, route: str, status: int | str, ms: float) -> None:
        self.requests.inc(tags={"stage": self.stage, "route": route, "status": str(status)})
        self.latency.observe(ms, tags={"stage": self.stage, "route": route})

    def tail_share(self, segments) -> None:
        self.tail.set(tail_share_of(segments), tags={"stage": self.stage})


def _part_segments(stage: RecallStage, recall: Recall):
    import numpy as np

    from ltray.data.segments import HEAD, TAIL, Segment

    rows = np.concatenate([p[1] for p in recall.parts]) if recall.parts else np.zeros(0, np.int64)
    return np.where(stage.generator.models.item_segment[rows] == Segment.HEAD, HEAD, TAIL)  # tail: off the head


def _serve_config(serve_cfg: dict | ServeConfig) -> ServeConfig:
    return serve_cfg if isinstance(serve_cfg, ServeConfig) else ServeConfig.model_validate(serve_cfg)


# -- stage deployments: plain stages with Ray at the edges ------------------------------------------
class _BatchedRanking:
    """`@serve.batch`: concurrent requests' features go through the CTR model in one forward pass.

    Features and the blend run on the replica's event loop (a few ms of numpy, no thread hops); the
    forward pass awaits the batcher, which joins the features of the requests waiting at that moment.
    """

    ranking: RankStage

    def _init_batching(self, cfg: ServeConfig) -> None:
        self._forward_batched.set_max_batch_size(cfg.max_batch_size)
        self._forward_batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.batches = {"passes": 0, "requests": 0, "largest": 0}
        from ray.serve import metrics

        self.batch_size = metrics.Histogram("ltray_ranker_batch_size", description="requests per forward pass",
                                            boundaries=BATCH_BUCKETS)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # set from the config in _init_batching
    async def _forward_batched(self, feats: list[dict]) -> list:
        self._count_batch(len(feats))
        return self.ranking.forward(feats)

    def _count_batch(self, n: int) -> None:
        self.batches["passes"] += 1
        self.batches["requests"] += n
        self.batches["largest"] = max(self.batches["largest"], n)
        self.batch_size.observe(n)

    def batch_stats(self) -> dict[str, Any]:
        """This replica's id, and its forward passes, requests scored and largest batch since it started
        (a handle call reaches any one replica: the id tells them apart)."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, **self.batches}

    async def _rank(self, user_id: str, state, cands, k: int, tail_share: float | None) -> Ranked:
        feats = self.ranking.features(user_id, state, cands)
        probs = None if feats is None else await self._forward_batched(feats)
        top = self.ranking.finish(state, cands, probs, k, tail_share)
        share = self.ranking.applied_tail_share(state, tail_share)
        return Ranked(top, share, self.ranking.version)


@serve.deployment(name="CFRecall")
class CFRecall:
    """ALS factors and user state; folds unseen users in from `recent_items`."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = _serve_config(serve_cfg)
        self.stage = RecallStage(Artifacts(artifacts, cfg))
        limit_threads(cfg.threads)
        self.metrics = StageMetrics("CFRecall")

    async def recall(self, user_id: str, recent_items: list[str] | None, exclude_seen: bool) -> Recall:
        # async: a ms of numpy runs on the replica's loop rather than hopping to Serve's thread pool
        with self.metrics.timed("recall"):
            out = self.stage.recall(user_id, recent_items, exclude_seen)
        self.metrics.tail_share(_part_segments(self.stage, out))
        return out

    def ready(self) -> str:
        return self.stage.version


@serve.deployment(name="TailRetrieval")
class TailRetrieval:
    """FAISS tail/full indexes, the text->CF bridge and the query text encoder."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = _serve_config(serve_cfg)
        self.stage = RetrievalStage(Artifacts(artifacts, cfg))
        self.stage.encoder  # load the encoder now, not on the first /search  # noqa: B018
        limit_threads(cfg.threads)
        self._candidates_batched.set_max_batch_size(cfg.max_batch_size)
        self._candidates_batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.metrics = StageMetrics("TailRetrieval")

    async def candidates(self, recall: Recall) -> Candidates:
        # async: on the replica's loop, no hop to Serve's thread pool (FAISS search + merge take a few ms)
        with self.metrics.timed("candidates"):
            out = await self._candidates_batched(recall)
        if out.consistent:
            self.metrics.tail_share(out.table["segment"])
        return out

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # set from the config in __init__
    async def _candidates_batched(self, recalls: list[Recall]) -> list[Candidates]:
        """Requests waiting together share one FAISS search per index."""
        return self.stage.candidates_many(recalls)

    def similar(self, item_id: str, k: int, segment: str | None):
        with self.metrics.timed("similar"):
            try:
                return self.stage.similar(item_id, k, segment)
            except KeyError:
                return None

    def search(self, text: str, k: int, segment: str | None):
        with self.metrics.timed("search"):
            return self.stage.search(text, k, segment)

    def ready(self) -> str:
        return self.stage.version


@serve.deployment(name="CTRRanker")
class CTRRanker(_BatchedRanking):
    """FeatureBuilder + CTR model, batched; then the tail-aware blend and reasons."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = _serve_config(serve_cfg)
        self.ranking = RankStage(Artifacts(artifacts, cfg))
        limit_threads(cfg.threads)
        self._init_batching(cfg)
        self.metrics = StageMetrics("CTRRanker")

    async def rank(self, user_id: str, state, cands, k: int, tail_share: float | None, version: str) -> Ranked:
        """The top k of the candidates (columns), or `top=None` when they came from another artifacts version."""
        if version != self.ranking.version:
            return Ranked(None, 0.0, self.ranking.version)
        with self.metrics.timed("rank"):
            ranked = await self._rank(user_id, state, cands, k, tail_share)
        self.metrics.tail_share(ranked.top["segment"])
        return ranked

    def ready(self) -> str:
        return self.ranking.version


@serve.deployment(name="Pipeline")
class Pipeline(_BatchedRanking):
    """All three stages in one replica (topology=colocated): no hops between them."""

    def __init__(self, artifacts: str, serve_cfg: dict):
        cfg = _serve_config(serve_cfg)
        art = Artifacts(artifacts, cfg)
        self.recall_stage, self.retrieval, self.ranking = RecallStage(art), RetrievalStage(art), RankStage(art)
        self.retrieval.encoder  # noqa: B018
        limit_threads(cfg.threads)
        self._init_batching(cfg)
        self._recommend_batched.set_max_batch_size(cfg.max_batch_size)
        self._recommend_batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.metrics = StageMetrics("Pipeline")

    async def recommend(self, user_id: str, k: int, tail_share: float | None, exclude_seen: bool,
                        recent_items: list[str] | None) -> dict[str, Any]:
        with self.metrics.timed("recommend"):
            body = await self._recommend_batched((user_id, k, tail_share, exclude_seen, recent_items))
        self.metrics.tail_share([it["segment"] for it in body["items"]])
        return body

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # set from the config in __init__
    async def _recommend_batched(self, requests: list[tuple]) -> list[dict[str, Any]]:
        """The requests waiting together go through one FAISS search per index and one forward pass."""
        recalls = [self.recall_stage.recall(u, recent, excl) for u, _, _, excl, recent in requests]
        cands = self.retrieval.candidates_many(recalls)
        feats = [self.ranking.features(req[0], r.state, c.table) for req, r, c in zip(requests, recalls, cands,
                                                                                        strict=True)]
        live = [f for f in feats if f is not None]
        probs = iter(self.ranking.forward(live) if live else [])
        self._count_batch(len(requests))
        out = []
        for (user_id, k, share, _, _), recall, cand, f in zip(requests, recalls, cands, feats, strict=True):
            top = self.ranking.finish(recall.state, cand.table, None if f is None else next(probs), k, share)
            share = self.ranking.applied_tail_share(recall.state, share)
            out.append(recommendation(user_id, recall, cand, top, share, self.ranking.version))
        return out

    def similar(self, item_id: str, k: int, segment: str | None):
        try:
            return self.retrieval.similar(item_id, k, segment)
        except KeyError:
            return None

    def search(self, text: str, k: int, segment: str | None):
        return self.retrieval.search(text, k, segment)

    def ready(self) -> str:
        return self.ranking.version


# -- ingress ----------------------------------------------------------------------------------------
api = FastAPI(
    title="ltray",
    version=ltray.__version__,
    description="Long-tail recommendations: CF recall -> FAISS tail retrieval -> CTR ranking.",
    docs_url=None, redoc_url=None,  # FastAPI's pages load their JS from a CDN: deployments.docs serves it
)
install_offline_docs(api)
_DEFAULTS = ServeConfig()
# set per replica from the config (the middleware is built by Starlette, not by us)
_BODY = {"max_bytes": _DEFAULTS.max_body_bytes, "read_timeout_s": _DEFAULTS.body_read_timeout_s}
ECHO_CHARS = 80  # what an error answer repeats of an input string: enough to recognise it


class BodyLimit:
    """Reads the request body here, whole, before the app sees it: 413 for a body over the limit (by
    Content-Length, or counted as it arrives), 408 for one not received within the read timeout (a
    client that declares 10 bytes and sends 2 would otherwise hold the connection)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, timeout = _BODY["max_bytes"], _BODY["read_timeout_s"]
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _error(send, 413, f"request body is over the limit of {limit} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return  # the client went away
                    chunks.append(msg.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        return await _error(send, 413, f"request body is over the limit of {limit} bytes")
                    if not msg.get("more_body"):
                        break
        except TimeoutError:
            return await _error(send, 408, f"request body not received within {timeout} s")
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        return await self.app(scope, replay, send)


async def _error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 408:
        headers.append((b"connection", b"close"))  # the rest of that body is never read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


api.add_middleware(BodyLimit)


def echo(value: Any) -> Any:
    """An input as an error answer may repeat it: JSON-safe (no NaN, no lone surrogate) and short."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 10**15:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, dict | list):
        with contextlib.suppress(ValueError, TypeError):  # NaN, lone surrogates, odd types
            if len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")) <= ECHO_CHARS:
                return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value) if isinstance(value, int) else repr(value)  # huge ints, NaN, long containers
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate -> "\\ud800"
    return value if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]}... ({len(value)} characters)"


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError):
    """FastAPI's 422, but what it echoes is made safe: its own handler fails (500) on a NaN or a lone
    surrogate in the input, and repeats a 100 KB text whole."""
    detail = [{"type": e.get("type"), "loc": [echo(p) for p in e.get("loc", ())], "msg": echo(e.get("msg", "")),
               "input": echo(e.get("input"))} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


@api.exception_handler(StageUnavailable)
async def _stage_unavailable(request: Request, exc: StageUnavailable):
    return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})


_ERRORS = {
    404: {"model": ErrorBody, "description": "the item is not in the catalog"},
    408: {"model": ErrorBody, "description": "the request body did not arrive within serve.body_read_timeout_s"},
    413: {"model": ErrorBody, "description": "the request body is over serve.max_body_bytes"},
    422: {"model": ErrorBody, "description": "invalid request: unknown field, wrong type, value out of range, "
          "non-finite number, lone surrogate"},
    503: {"model": ErrorBody, "description": "a stage has no live replica; retry after Retry-After"},
}
_BODY_ERRORS = {**_ERRORS, 400: {"model": ErrorBody, "description": "there was an error parsing the body (not "
                                 "UTF-8, or a number too long to read)"}}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP in, stage calls through DeploymentHandles (with a retry when a replica dies), JSON out."""

    def __init__(self, artifacts: str, serve_cfg: dict, recall=None, retrieval=None, ranker=None,
                 pipeline=None):
        from ltray.artifacts import ArtifactStore

        self.cfg = _serve_config(serve_cfg)
        _BODY.update(max_bytes=self.cfg.max_body_bytes, read_timeout_s=self.cfg.body_read_timeout_s)
        self.version = artifacts_version(ArtifactStore(artifacts, mode="r"))  # a reader: never recovers
        self.recall, self.retrieval, self.ranker, self.pipeline = recall, retrieval, ranker, pipeline
        self.metrics = StageMetrics("Ingress")
        self.lost_replica: set[str] = set()  # stages whose replica died, until one of them answers again

    def _stages(self) -> dict[str, Any]:
        if self.pipeline is not None:
            return {"Pipeline": self.pipeline}
        return {"CFRecall": self.recall, "TailRetrieval": self.retrieval, "CTRRanker": self.ranker}

    async def _call(self, handle, method: str, *args):
        """One stage call; a read, so it is retried when the replica died under it.

        Once a stage lost a replica, its calls (the retry, and new requests until the stage answers
        again) wait at most serve.retry_wait_s: with no replica left Serve's router queues a call until
        a replacement is up (seconds to load a stage), which clients saw as a hang; a 503 with
        Retry-After tells them to come back instead.
        """
        stage = handle.deployment_name
        for attempt in range(self.cfg.stage_retries + 1):
            call = getattr(handle, method).remote(*args)
            try:
                if stage in self.lost_replica:
                    out = await asyncio.wait_for(call, timeout=self.cfg.retry_wait_s)
                else:
                    out = await call
                self.lost_replica.discard(stage)
                return out
            except _REPLICA_GONE as e:
                self.lost_replica.add(stage)
                if attempt == self.cfg.stage_retries:
                    raise StageUnavailable(f"{method}: no live replica ({type(e).__name__})") from e
            except TimeoutError as e:
                call.cancel()  # out of the router's queue: nobody waits for its answer
                raise StageUnavailable(f"{method}: no live replica within {self.cfg.retry_wait_s} s") from e

    async def _chain(self, req: RecommendRequest) -> dict[str, Any]:
        """CFRecall -> TailRetrieval -> CTRRanker, all on one artifacts version.

        While a new version rolls through the deployments (each updates on its own), a stage may answer
        from the other version; item rows mean nothing across versions, so the request starts over
        until the stages agree (bounded by serve.version_switch_wait_s), instead of failing.
        """
        deadline = time.monotonic() + self.cfg.version_switch_wait_s
        while True:
            recall = await self._call(self.recall, "recall", req.user_id, req.recent_items, req.exclude_seen)
            cands = await self._call(self.retrieval, "candidates", recall)
            if cands.consistent:
                ranked = await self._call(self.ranker, "rank", req.user_id, recall.state, cands.table, req.k,
                                          req.tail_share, cands.version)
                if ranked.top is not None:
                    return recommendation(req.user_id, recall, cands, ranked.top, ranked.tail_share,
                                          ranked.version)
            if time.monotonic() > deadline:
                raise StageUnavailable("the stages answer from different artifact versions (a version switch "
                                       f"has not finished in {self.cfg.version_switch_wait_s} s)")
            await asyncio.sleep(self.cfg.version_retry_interval_s)

    def _check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise HTTPException(422, f"k={k} is over this server's limit of {self.cfg.max_k}")

    @api.post("/recommend", response_model=RecommendResponse, responses=_BODY_ERRORS)
    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        """Ranked items for a user (or for a session of `recent_items`), each with segment, source and reason."""
        t0 = time.perf_counter()
        self._check_k(req.k)
        if req.recent_items and len(req.recent_items) > self.cfg.max_recent_items:
            raise HTTPException(422, f"recent_items holds {len(req.recent_items)} ids; the limit is "
                                f"{self.cfg.max_recent_items}")
        if self.pipeline is not None:
            body = await self._call(self.pipeline, "recommend", req.user_id, req.k, req.tail_share,
                                    req.exclude_seen, req.recent_items)
        else:
            body = await self._chain(req)
        self.metrics.tail_share([it["segment"] for it in body["items"]])
        self.metrics.record("/recommend", 200, (time.perf_counter() - t0) * 1e3)
        return body

    # `:path`: an item id may hold "/", sent percent-encoded (a%2Fb), which the server decodes before routing
    @api.get("/items/{item_id:path}/similar", response_model=ItemsResponse, responses=_ERRORS)
    async def similar(self, item_id: str, k: int = Query(20, ge=1, le=500),
                      segment: Segment | None = Query(None)) -> dict[str, Any]:
        """Items whose text is closest to this item's (optionally of one segment). An id holding `/` is sent
        percent-encoded (`%2F`)."""
        self._check_k(k)
        handle = self.pipeline or self.retrieval
        table = await self._call(handle, "similar", item_id, k, segment)
        if table is None:
            raise HTTPException(404, f"item {echo(item_id)!r} is not in the catalog")
        return scored_items(table, self.version)

    @api.post("/search", response_model=ItemsResponse, responses=_BODY_ERRORS)
    async def search(self, req: SearchRequest) -> dict[str, Any]:
        """Free-text search: the query is encoded with the catalog's text encoder and searched in FAISS."""
        self._check_k(req.k)
        if len(req.text) > self.cfg.max_text_chars:
            raise HTTPException(422, f"text has {len(req.text)} characters; the limit is {self.cfg.max_text_chars}")
        table = await self._call(self.pipeline or self.retrieval, "search", req.text, req.k, req.segment)
        return scored_items(table, self.version)

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz(self):
        """Readiness: every stage has a live replica with the artifacts loaded, all of one version."""
        stages: dict[str, str] = {}
        for name, handle in self._stages().items():
            try:
                stages[name] = await asyncio.wait_for(handle.ready.remote(), timeout=self.cfg.ready_timeout_s)
            except Exception as e:  # any failure here means "not ready", never a 500
                stages[name] = f"unavailable: {type(e).__name__}"
        ready = all(v == self.version for v in stages.values())
        body = {"ready": ready, "version": self.version if ready else None, "stages": stages}
        return body if ready else JSONResponse(status_code=503, content=body)


# -- application builders ------------------------------------------------------------------------------
def _options(cfg: ServeConfig, num_gpus: float = 0.0) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if num_gpus:
        actor["num_gpus"] = num_gpus
    return {
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        # min capped at max: `serve.max_replicas=1` alone means one replica, not an invalid config
        "autoscaling_config": {"min_replicas": min(cfg.min_replicas, cfg.max_replicas),
                               "max_replicas": cfg.max_replicas,
                               "target_ongoing_requests": cfg.target_ongoing_requests},
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
        # A replica being replaced finishes what it holds: a request may wait out a version switch
        # (serve.version_switch_wait_s), and Serve's default 20 s grace killed such requests with a 500.
        "graceful_shutdown_timeout_s": cfg.version_switch_wait_s + cfg.finish_after_switch_s,
    }


def serve_config_from_args(args: dict[str, Any]) -> tuple[str, ServeConfig]:
    """`artifacts=URI` (required), `config=FILE` (optional) and `serve.field=value` overrides."""
    args = {str(k): v for k, v in (args or {}).items()}
    args["artifacts"] = args.get("artifacts") or os.environ.get("LTRAY_ARTIFACTS")  # serve_config.yaml's way
    if not args.get("artifacts"):
        raise ValueError("build_app needs artifacts=<run folder or URI> (or LTRAY_ARTIFACTS), e.g. "
                         "serve run deployments.app:build_app artifacts=artifacts/synthetic")
    unknown = [k for k in args if k not in ("artifacts", "config") and not k.startswith("serve.")]
    if unknown:
        raise ValueError(f"unknown build_app arguments {unknown}; use artifacts=, config= and serve.<field>=")
    overrides = [f"{k}={v}" for k, v in args.items() if k.startswith("serve.")]
    cfg = load_config(args.get("config"), overrides).serve
    return str(args["artifacts"]), cfg


def build_app(args: dict[str, Any]):
    """The application builder for `serve run deployments.app:build_app artifacts=URI [serve.x=y ...]`."""
    artifacts, cfg = serve_config_from_args(args)
    return build(artifacts, cfg)


def resolve_topology(topology: str, alive_nodes: int) -> str:
    """`auto` -> colocated on one node (measured on 2 cores: the chain's hops cost 2x the latency of the
    no-op floor, one colocated hop 1.2x), chain on a cluster where stages scale on their own nodes."""
    if topology != "auto":
        return topology
    return "colocated" if alive_nodes <= 1 else "chain"


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else 2  # unknown: chain


def build(artifacts: str, cfg: ServeConfig | None = None):
    cfg = cfg or ServeConfig()
    cfg = cfg.model_copy(update={"topology": resolve_topology(cfg.topology, _alive_nodes())})
    sc = cfg.model_dump()
    if cfg.topology == "colocated":
        gpus = max(cfg.num_gpus_ranker, cfg.num_gpus_retrieval)
        pipeline = Pipeline.options(**_options(cfg, gpus)).bind(artifacts, sc)
        return Ingress.options(**_options(cfg)).bind(artifacts, sc, pipeline=pipeline)
    recall = CFRecall.options(**_options(cfg)).bind(artifacts, sc)
    retrieval = TailRetrieval.options(**_options(cfg, cfg.num_gpus_retrieval)).bind(artifacts, sc)
    ranker = CTRRanker.options(**_options(cfg, cfg.num_gpus_ranker)).bind(artifacts, sc)
    return Ingress.options(**_options(cfg)).bind(artifacts, sc, recall=recall, retrieval=retrieval, ranker=ranker)


def start(artifacts: str, cfg: ServeConfig | None = None, blocking: bool = False) -> str:
    """Start Serve on `cfg.host:cfg.port` (Ray must be initialised) and the app; returns its URL."""
    cfg = cfg or ServeConfig()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build(artifacts, cfg), name=cfg.app_name, route_prefix="/", blocking=blocking)
    return f"http://{cfg.host}:{cfg.port}"


def run_local(artifacts: str, cfg: ServeConfig | None = None, echo=print) -> None:
    """`ltray serve`: a local Ray, the app, the URL printed; blocks until Ctrl-C, then shuts down."""
    import ray

    cfg = cfg or ServeConfig()
    if cfg.port == 0:
        cfg = cfg.model_copy(update={"port": _free_port(cfg.host)})
    Artifacts(artifacts)  # fail fast on a missing or broken run folder, before Ray starts
    if not ray.is_initialized():  # `ltray serve` has started or joined one already
        from ltray.raysession import start_or_join

        start_or_join(include_dashboard=False, log_to_driver=False)
    url = start(artifacts, cfg)
    # Ctrl-C and SIGTERM both stop it cleanly (a shell may start a background job with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    topology = resolve_topology(cfg.topology, _alive_nodes())
    echo(f"ltray is serving {artifacts} at {url} ({topology} topology; API docs: {url}/docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        echo("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
