"""Prometheus metrics of the Serve application, through Ray's metrics API (Serve adds deployment and
replica tags): requests, latency and served tail share per stage, and the ranker's batch sizes."""

import contextlib
import time
from typing import Any

from ray import serve

from deployments.stages import tail_share_of

# Histogram buckets of request latency (ms): sub-ms stage calls up to multi-second cold starts.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


class StageMetrics:
    """Request count, latency and served tail share of one stage."""

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


class BatchStats:
    """A ranking replica's forward passes, requests scored and largest batch since it started."""

    def __init__(self):
        from ray.serve import metrics

        self.counts = {"passes": 0, "requests": 0, "largest": 0}

        self.size = metrics.Histogram("ltray_ranker_batch_size", description="requests per forward pass",
                                      boundaries=BATCH_BUCKETS)

    def count(self, n: int) -> None:
        self.counts["passes"] += 1
        self.counts["requests"] += n
        self.counts["largest"] = max(self.counts["largest"], n)
        self.size.observe(n)

    def stats(self) -> dict[str, Any]:
        """With this replica's id: a handle call reaches any one replica, the id tells them apart."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, **self.counts}
