"""What every `ray job submit` entrypoint shares: arguments, config, the store, Ray start-up, errors.

A job parses ``--config`` / ``--set`` / the data options (``ltray.config.DATA_OPTIONS``, the same list
the ``ltray`` CLI takes) into one ``Config`` and opens the artifact store *before* it starts Ray, so a
typo or an unreachable URI fails in a second with exit code 2 and, as the CLI does, one ``error:`` line
and one ``hint:`` line on stderr; so does bad data found inside a stage's Ray task. Under ``ray job
submit`` Ray's address comes from ``RAY_ADDRESS`` (set by the job supervisor); run by hand without it,
``ray.init()`` starts a local Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.artifacts import ArtifactError, ArtifactStore
from ltray.config import DATA_OPTIONS, Config, ConfigError, artifacts_uri, build_config
from ltray.logs import call_printing_lines, lines_to

EXIT_USAGE = 2
DEFAULT_STORE_TIMEOUT_S = 60.0
DEFAULT_SCALE_TIMEOUT_S = 900.0
DEFAULT_HINT = "run again with --debug for the traceback"

# Under "ltray", so that the one handler ``run_job`` puts on the "ltray" logger prints it too: the jobs are
# not in the ltray package, and each runs as __main__.
log = logging.getLogger("ltray.jobs")


@dataclass
class JobArgs:
    cfg: Config
    artifacts: str
    holdout: bool
    options: argparse.Namespace


def _stamped(msg: str) -> None:
    """One ltray log line of the job's driver on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", type=Path, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set embed.batch_size=128 (repeatable)")
    p.add_argument("--artifacts", help="run folder or pyarrow URI (s3://bucket/run, gs://bucket/run); "
                                       "on a cluster use a URI every node can reach")
    for o in DATA_OPTIONS:  # --dataset, --items, --text-col, ...: the CLI's own list
        p.add_argument(o.flag, dest=o.field, help=o.help)
    p.add_argument("--no-holdout", dest="holdout", action="store_false",
                   help="fit on every interaction (no time split, so no evaluation)")
    p.add_argument("--store-timeout", type=float, default=DEFAULT_STORE_TIMEOUT_S,
                   help="seconds to wait for the artifact store to answer before giving up")
    p.add_argument("--wait-for-gpus", type=int, default=0, metavar="N",
                   help="ask the autoscaler for N GPU bundles and wait for them before any stage runs "
                        "(the embedding pool is sized from the GPUs up when it starts)")
    p.add_argument("--scale-timeout", type=float, default=DEFAULT_SCALE_TIMEOUT_S,
                   help="seconds to wait for --wait-for-gpus")
    p.add_argument("--stage-cpus", type=float, default=0.0,
                   help="CPUs the task that runs the later stages reserves (it waits on Ray Train's workers)")
    p.add_argument("--stage-memory-gb", type=float, default=None,
                   help="memory that task reserves, so that it lands on a node large enough for the catalog")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_job_args(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> JobArgs:
    ns = parser.parse_args(argv)
    cfg = build_config(ns.config, ns.overrides, **{o.field: getattr(ns, o.field) for o in DATA_OPTIONS})
    return JobArgs(cfg=cfg, artifacts=artifacts_uri(cfg, ns.artifacts), holdout=ns.holdout, options=ns)


def open_store(uri: str, timeout_s: float = DEFAULT_STORE_TIMEOUT_S) -> ArtifactStore:
    """The store, probed with one read so that an unreachable URI fails here, not mid-run.

    The probe runs in a thread with a deadline: object-store clients retry for minutes (gs:// without
    credentials waits on the metadata server), and a job should say so instead of hanging.
    """
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            store = ArtifactStore(uri)
            store.manifest()
            result["store"] = store
        except BaseException as e:  # handed to the caller below
            result["error"] = e

    worker = threading.Thread(target=probe, name="ltray-store-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ArtifactError(f"artifact store {uri} is not reachable: no answer within {timeout_s:g}s "
                            "(check the URI, the network and the credentials)")
    err = result.get("error")
    if isinstance(err, ArtifactError):
        raise err
    if isinstance(err, OSError | ValueError):  # pyarrow: unknown scheme, no such bucket, refused connection
        raise ArtifactError(f"artifact store {uri} is not reachable: {err}") from err
    if err is not None:
        raise err
    return result["store"]


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # submitted: connect to the cluster the job runs on
    else:
        from ltray.raysession import start_or_join

        start_or_join(None, include_dashboard=False)  # a `ray start` here, else a private one


class ScaleError(RuntimeError):
    """The cluster did not offer the resources a job waited for."""


def wait_for_gpus(n: int, timeout_s: float, poll_s: float = 5.0) -> None:
    """Request ``n`` one-GPU bundles from the autoscaler and wait until the cluster has ``n`` GPUs."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if n <= 0:
        return
    request_resources(bundles=[{"GPU": 1}] * n)
    deadline = time.monotonic() + timeout_s
    while (have := ray.cluster_resources().get("GPU", 0.0)) < n:
        if time.monotonic() > deadline:
            raise ScaleError(f"the cluster offers {have:g} GPU(s) after {timeout_s:g}s; --wait-for-gpus asked "
                             f"for {n} (check the GPU group's max_workers and the autoscaler log)")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or 0.01)
    log.info("cluster: %g GPU(s) up", have)


def _known_error(e: BaseException) -> BaseException | None:
    """The failure a job reports in one line, or None for a bug (which keeps its traceback).

    An error raised inside a Ray task arrives as Ray's RayTaskError, whose text is the whole remote
    traceback: its cause is what the task raised."""
    from ltray.data.schema import DataError

    # Looked up, not imported: each can only be raised once its module is loaded (and torch is slow to import).
    task_error = getattr(sys.modules.get("ray.exceptions"), "RayTaskError", None)
    if task_error is not None and isinstance(e, task_error) and getattr(e, "cause", None) is not None:
        e = e.cause
    train_error = getattr(sys.modules.get("ltray.rank.train"), "TrainError", None)
    known = (ConfigError, ArtifactError, DataError, ScaleError, FileNotFoundError, ValueError, ConnectionError,
             *((train_error,) if train_error else ()))
    return e if isinstance(e, known) else None


def report_error(name: str, e: BaseException) -> None:
    """``error: <job>: <message>`` and ``hint: <hint>`` on stderr, one line each, as the CLI prints them."""
    msg = " ".join(str(e).split())  # one line, whatever the exception's formatting
    hint = " ".join(str(getattr(e, "hint", None) or DEFAULT_HINT).split())
    print(f"error: {name}: {msg}", file=sys.stderr, flush=True)
    print(f"hint: {hint}", file=sys.stderr, flush=True)


def run_job(name: str, description: str, body: Callable[[JobArgs, ArtifactStore], dict[str, Any]],
            argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse, check, start Ray, run ``body``; known failures, here or in a Ray task, become an ``error:``
    and a ``hint:`` line on stderr and exit 2."""
    parser = parser or make_parser(description)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    try:
        with lines_to(_stamped):  # the ltray.* loggers' lines (this module's too), time-stamped, on stdout
            args = parse_job_args(argv, parser)
            store = open_store(args.artifacts, args.options.store_timeout)
            init_ray()
            wait_for_gpus(args.options.wait_for_gpus, args.options.scale_timeout)
            summary = body(args, store)
    except Exception as e:
        known = _known_error(e)
        if debug or known is None:
            raise
        report_error(name, known)
        return EXIT_USAGE
    summary = {"job": name, "artifacts": args.artifacts, "seconds": round(time.perf_counter() - t0, 2),
               **(summary or {})}
    print("result: " + json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0


# -- shared stage helpers ----------------------------------------------------------------------
def on_worker(fn: Callable[..., Any], *args: Any, store: ArtifactStore, cpus: float = 0.0,
              memory_gb: float | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in one Ray task: what it loads stays on the worker; only its small result returns.

    ``cpus`` defaults to 0: the task mostly waits on the Ray Data and Ray Train work it starts, which
    reserve their own CPUs (a task holding one would starve a 2-CPU laptop). ``memory_gb`` reserves
    memory, so the task lands on a node large enough for the catalog.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": cpus, "name": f"ltray.{fn.__name__}"}
    if memory_gb:
        options["memory"] = int(memory_gb * 2**30)
    if store.fs is None:
        # A local folder is only certain to exist on this node: prefer it (a shared mount works anywhere).
        here = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=here, soft=True)
        if len([n for n in ray.nodes() if n["Alive"]]) > 1:
            log.warning("warning: artifacts at local path %s; on a multi-node cluster use a URI (s3://, gs://) "
                        "or a shared mount so that workers can read and write the run", store.root)
    # fn's log lines go to the task's stdout, which Ray shows in the job's output.
    return ray.get(ray.remote(call_printing_lines).options(**options).remote(fn, *args, **kwargs))


def data_and_embed(args: JobArgs, store: ArtifactStore) -> dict[str, int]:
    """The data stage (in a task) and the embed stage (Ray Data, streamed): the driver loads neither."""
    from ltray import pipeline as p

    counts = on_worker(p.commit_data, args.cfg, args.artifacts, args.holdout, store=store)
    p.commit_embed(store, args.cfg)
    return counts


def fit_on_worker(args: JobArgs, store: ArtifactStore, stages: tuple[str, ...], evaluate: bool = False) -> dict:
    """``pipeline.fit_from_store`` in a task (``--stage-cpus``, ``--stage-memory-gb``); its log lines print live."""
    from ltray import pipeline as p

    return on_worker(p.fit_from_store, args.cfg, args.artifacts, stages, evaluate, store=store,
                     cpus=args.options.stage_cpus, memory_gb=args.options.stage_memory_gb)


def stage_versions(store: ArtifactStore) -> dict[str, str]:
    return {s: e.get("version") for s, e in store.manifest().get("stages", {}).items()}
