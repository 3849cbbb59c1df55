"""Job: fit ALS and build the FAISS tail and full indexes, profiles and the text->CF bridge -- on a worker.

    ray job submit --working-dir . -- python jobs/build_index.py --artifacts s3://bucket/run \
        --build-cpus 16 --set index.pq_over_items=2000000

The driver only runs the data and embed stages (Ray Data does the embedding on its actors); the build
itself is one Ray task, so the ALS factors and the index (Flat / IVF / IVF-PQ trained on a sample, by
``choose_factory``) are held by a worker node, not by the driver. With unchanged inputs and config the
task says "unchanged, skipped".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_vectors, log, make_parser, run_job, stage_versions  # noqa: E402


def build_on_worker(cfg_dict: dict, artifacts: str, holdout: bool) -> dict:
    """The cf + index stage, run wherever Ray placed this task; returns its log and where it ran."""
    import ray

    from ltray import pipeline as p
    from ltray.artifacts import ArtifactStore
    from ltray.config import Config

    cfg = Config.model_validate(cfg_dict)
    store = ArtifactStore(artifacts)
    lines: list[str] = []
    bundle = p.stage_data(store, cfg, holdout, lines.append)
    vectors = p.stage_embed(store, cfg, bundle, lines.append)
    models = p.stage_candidates(store, cfg, bundle, vectors, lines.append)
    return {"log": lines, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "tail_index": {"factory": models.tail_index.factory, "ntotal": models.tail_index.ntotal},
            "full_index": {"factory": models.full_index.factory, "ntotal": models.full_index.ntotal}}


def body(args, store) -> dict:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    data_and_vectors(args, store)  # embedding runs here, through Ray Data; the build does not
    options: dict = {"num_cpus": args.options.build_cpus}
    if args.options.build_memory_gb:
        options["memory"] = int(args.options.build_memory_gb * 2**30)
    here = ray.get_runtime_context().get_node_id()
    if store.fs is None:
        # A local folder is only certain to exist on this node: prefer it (a shared mount works anywhere).
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=here, soft=True)
        if len([n for n in ray.nodes() if n["Alive"]]) > 1:
            log(f"warning: artifacts at local path {store.root}; on a multi-node cluster use a URI "
                "(s3://, gs://) or a shared mount so that workers can read and write the run")
    task = ray.remote(build_on_worker).options(**options)
    result = ray.get(task.remote(args.cfg.to_dict(), args.artifacts, args.holdout))
    for line in result["log"]:
        if not line.startswith(("data:", "embed:")):
            log(line)
    log(f"cf + index: built in a Ray task (pid {result['pid']}, node {result['node_id'][:12]}), "
        f"not in the driver (pid {os.getpid()})")
    return {"build_pid": result["pid"], "driver_pid": os.getpid(), "build_node": result["node_id"],
            "tail_index": result["tail_index"], "full_index": result["full_index"],
            "stages": stage_versions(store)}


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--build-cpus", type=float, default=1.0,
                        help="CPUs the build task reserves (ALS and FAISS use every core of their node)")
    parser.add_argument("--build-memory-gb", type=float, default=None,
                        help="memory the build task reserves, so it lands on a node large enough")
    return run_job("build_index", __doc__.splitlines()[0], body, argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
