"""Job: train the CTR ranker with Ray Train (DDP over rank.num_workers workers) and choose the tail share.

    ray job submit --working-dir . -- python jobs/train_ctr.py --artifacts s3://bucket/run \
        --set rank.num_workers=8 --set rank.storage_path=s3://bucket/train

Runs the data and embed stages first when they are missing or stale (each a no-op when current).
The stage's driver is a Ray task (the training table and the candidate models stay on its node);
on a multi-node cluster, rank.storage_path must be a URI every node can reach.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_embed, fit_on_worker, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    data_and_embed(args, store)
    result = fit_on_worker(args, store, ("rank",))
    return {"tail_share": result.get("tail_share"), "stages": stage_versions(store)}


def main(argv=None) -> int:
    return run_job("train_ctr", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
