"""Job: evaluate a time-split run against the baselines and write the report.

    ray job submit --working-dir . -- python jobs/evaluate.py --artifacts s3://bucket/run

Fits whatever stage is missing or stale first. The report is rebuilt only when a stage it reads
(data, embed, cf, index, rank) or the eval config changed; otherwise the job says "unchanged, skipped".
As in jobs/pipeline.py, the stages and the evaluation run in Ray tasks, not in the driver.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_embed, fit_on_worker, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    if not args.holdout:
        raise ValueError("evaluate needs the time split; drop --no-holdout")
    data_and_embed(args, store)
    result = fit_on_worker(args, store, ("cf+index", "rank"), evaluate=True)
    return {"report": result["report"], "metrics": result["metrics"], "stages": stage_versions(store)}


def main(argv=None) -> int:
    return run_job("evaluate", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
