"""Job: the whole run -- data -> embed -> cf + index -> rank -> eval -- against one artifact store.

    ray job submit --working-dir . -- python jobs/pipeline.py --artifacts s3://bucket/run [--set ...]

Each stage is a no-op when its inputs and config are unchanged, so re-submitting a finished run only
says "unchanged, skipped", and re-submitting a killed one resumes at the first stage it had not committed.
With --no-holdout every interaction trains the models and there is no evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import evaluate_if_changed, log, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    from ltray.pipeline import fit

    parts = fit(args.cfg, args.artifacts, holdout=args.holdout, log=log)
    out = {"stages": stage_versions(store)}
    if args.holdout:
        out["report"] = str(evaluate_if_changed(parts, args.cfg))
        out["stages"] = stage_versions(store)
        out["metrics"] = store.manifest().get("metrics", {}).get("ltray", {})
    return out


def main(argv=None) -> int:
    return run_job("pipeline", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
