"""Job: fit ALS and build the FAISS tail and full indexes, profiles and the text->CF bridge -- on a worker.

    ray job submit --working-dir . -- python jobs/build_index.py --artifacts s3://bucket/run \
        --stage-memory-gb 64 --set index.pq_over_items=2000000

The driver runs the data stage in a Ray task and streams the embedding through Ray Data's actors; the
build itself is one more Ray task, so the ALS factors and the index (Flat / IVF / IVF-PQ trained on a
sample, by ``choose_factory``) are held by a worker node, not by the driver. With unchanged inputs and
config the task says "unchanged, skipped".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_embed, fit_on_worker, log, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    data_and_embed(args, store)
    result = fit_on_worker(args, store, ("cf+index",))
    log.info("cf + index: built in a Ray task (pid %s), not in the driver (pid %d)", result["pid"], os.getpid())
    return {"build_pid": result["pid"], "driver_pid": os.getpid(), "tail_index": result["tail_index"],
            "full_index": result["full_index"], "stages": stage_versions(store)}


def main(argv=None) -> int:
    return run_job("build_index", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
