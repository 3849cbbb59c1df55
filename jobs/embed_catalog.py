"""Job: the data stage, then the catalog's text embeddings (Ray Data actor pool; GPU actors when present).

    ray job submit --working-dir . -- python jobs/embed_catalog.py --artifacts s3://bucket/run [--set ...]

Only new or changed items are encoded; with unchanged inputs and config the job is a no-op that says so.
The vectors stream from the actors to the store's Parquet shards; the driver never holds them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from jobs._common import data_and_embed, run_job, stage_versions  # noqa: E402


def body(args, store) -> dict:
    counts = data_and_embed(args, store)
    return {"items": counts["items"], "dim": int(store.stage_info("embed")["dim"]), "stages": stage_versions(store)}


def main(argv=None) -> int:
    return run_job("embed_catalog", __doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
