"""Job: the whole run -- data -> embed -> cf + index -> rank -> eval -- against one artifact store.

    ray job submit --working-dir . -- python jobs/pipeline.py --artifacts s3://bucket/run [--set ...]

Each stage is a no-op when its inputs and config are unchanged, so re-submitting a finished run only
says "unchanged, skipped", and re-submitting a killed one resumes at the first stage it had not committed.
With --no-holdout every interaction trains the models and there is no evaluation.

The driver holds no catalog: the data stage runs in a Ray task, the embedding streams through Ray Data's
actors, and cf + index, rank and eval run in one more task (``--stage-memory-gb`` places it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_embed, fit_on_worker, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    data_and_embed(args, store)
    result = fit_on_worker(args, store, ("cf+index", "rank"), evaluate=args.holdout)
    out = {"stages": stage_versions(store), "fit_pid": result["pid"], "driver_pid": os.getpid()}
    if args.holdout:
        out.update(report=result["report"], metrics=result["metrics"])
    return out


def main(argv=None) -> int:
    return run_job("pipeline", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
