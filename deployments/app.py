"""The Ray Serve application builders: Ingress -> CFRecall -> TailRetrieval -> CTRRanker.

    serve run deployments.app:build_app artifacts=artifacts/movielens-latest-small
    serve run deployments.app:build_app artifacts=DIR serve.topology=colocated serve.max_replicas=4
    serve deploy deployments/serve_config.yaml
    ltray serve --artifacts DIR

The stage logic lives in `deployments.stages` (plain classes), its deployments in
`deployments.stage_deployments`, the HTTP edge in `deployments.ingress`. With `serve.topology=colocated`
one `Pipeline` deployment runs the three stages in one process (Ingress -> Pipeline: one hop instead
of three).
"""

import os
import signal
import time
from typing import Any

from ray import serve

from deployments.ingress import Ingress
from deployments.stage_deployments import CFRecall, CTRRanker, Pipeline, TailRetrieval
from deployments.stages import Artifacts
from ltray.config import ServeConfig, load_config


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
    """`auto` -> colocated on one node (the chain's hops cost latency and gain nothing there), chain on a
    cluster where stages scale on their own nodes."""
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
