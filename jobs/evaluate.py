"""Job: evaluate a time-split run against the baselines and write the report.

    ray job submit --working-dir . -- python jobs/evaluate.py --artifacts s3://bucket/run

Fits whatever stage is missing or stale first. The report is rebuilt only when a stage it reads
(data, embed, cf, index, rank) or the eval config changed; otherwise the job says "unchanged, skipped".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import evaluate_if_changed, log, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    from ltray.pipeline import fit

    if not args.holdout:
        raise ValueError("evaluate needs the time split; drop --no-holdout")
    parts = fit(args.cfg, args.artifacts, holdout=True, log=log)
    report = evaluate_if_changed(parts, args.cfg)
    return {"report": str(report), "metrics": store.manifest().get("metrics", {}).get("ltray", {}),
            "stages": stage_versions(store)}


def main(argv=None) -> int:
    return run_job("evaluate", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
