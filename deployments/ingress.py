"""The HTTP edge: the FastAPI app (request-body limit, safe error answers, offline API docs) and the
Ingress deployment, which calls the stages through DeploymentHandles, retrying a dead replica."""

import asyncio
import contextlib
import json
import math
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
from deployments.metrics import StageMetrics
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
from deployments.stages import recommendation, scored_items
from ltray.artifacts import ArtifactStore
from ltray.config import ServeConfig

_REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class StageUnavailable(RuntimeError):
    """A stage deployment had no live replica for a call, after the configured retries."""


api = FastAPI(
    title="ltray",
    version=ltray.__version__,
    description="Long-tail recommendations: CF recall -> FAISS tail retrieval -> CTR ranking.",
    docs_url=None, redoc_url=None,  # FastAPI's pages load their JS from a CDN: deployments.docs serves it
)
install_offline_docs(api)
# set per replica from the config (the middleware is built by Starlette, not by us)
_BODY = {"max_bytes": ServeConfig().max_body_bytes, "read_timeout_s": ServeConfig().body_read_timeout_s}
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
        self.cfg = ServeConfig.model_validate(serve_cfg)
        _BODY.update(max_bytes=self.cfg.max_body_bytes, read_timeout_s=self.cfg.body_read_timeout_s)
        self.version = ArtifactStore(artifacts, mode="r").served_version()  # a reader: never recovers
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
            if cands is not None:
                ranked = await self._call(self.ranker, "rank", req.user_id, recall.state, cands, req.k,
                                          req.tail_share, recall.version)
                if ranked.top is not None:
                    return recommendation(req.user_id, ranked, recall.unknown_recent_items)
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
