"""The quality matrix: `ltray run` with the default config on every dataset, against every tuned baseline.

One config for all datasets (no per-dataset flag): each run is the real CLI, `ltray run --dataset D`,
whose eval stage tunes every baseline on the same validation split as ltray's own choices. Per
dataset it prints ltray's Recall@20, NDCG@20, TailRecall@20, ColdRecall@20 and Coverage@20 next to
every baseline's, and checks the targets:

- Recall@20 >= 0.99 x the best tuned CF baseline (ALS, ItemKNN, EASE, RP3beta);
- no baseline has both a higher Recall@20 and a higher TailRecall@20 (not dominated);
- TailRecall@20 >= 1.25 x that of the CF baseline with the best recall;
- ColdRecall@20 >= ContentKNN's where the test split has cold items.

Writes benchmarks/results/quality_matrix.json, copies each run's trade-off plot next to it, and with
--readme rewrites the README's table between its quality-matrix markers.

    .venv/bin/python benchmarks/quality_matrix.py                      # all four (about 15-25 min on 2 cores)
    .venv/bin/python benchmarks/quality_matrix.py --datasets amazon-office-2014-5core --readme
    .venv/bin/python benchmarks/quality_matrix.py --readme-only    # the table from the saved results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("LTRAY_DATA_HOME", str((REPO.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = ("synthetic", "movielens-latest-small", "amazon-office-2014-5core", "lastfm-hetrec-2k")
METRICS = ("Recall@20", "NDCG@20", "TailRecall@20", "ColdRecall@20", "Coverage@20")
RESULTS = REPO / "benchmarks" / "results"
from ltray.eval.verdict import verdict  # noqa: E402

MARKERS = ("<!-- quality-matrix:start -->", "<!-- quality-matrix:end -->")


def run_dataset(name: str, out: Path, overrides: list[str]) -> tuple[dict, float, Path]:
    """`ltray run` on one dataset; (the eval stage's metrics.json, wall seconds)."""
    from ltray.artifacts import ArtifactStore

    folder = out / name
    cmd = [str(REPO / ".venv" / "bin" / "ltray"), "run", "--dataset", name, "--artifacts", str(folder)]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - t0
    eval_dir = ArtifactStore(str(folder), mode="r").stage_path("eval")
    return json.loads((eval_dir / "metrics.json").read_text()), seconds, eval_dir


def markdown(results: dict[str, dict]) -> str:
    lines = []
    for name, r in results.items():
        table, v = r["metrics"], r["verdict"]
        marks = {True: "met", False: "**missed**", None: "n/a (no cold item in test)"}
        lines += [f"**{name}** (`ltray run`, {r['seconds']:.0f} s): Recall@20 {v['recall']['ratio']:.3f}x the best "
                  f"CF baseline ({v['best_cf']}) {marks[v['recall']['met']]}; not dominated "
                  f"{marks[v['not_dominated']['met']]}"
                  + (f" (by {', '.join(v['not_dominated']['by'])})" if v["not_dominated"]["by"] else "")
                  + f"; TailRecall@20 {v['tail']['ratio']:.2f}x its {marks[v['tail']['met']]}; ColdRecall@20 vs ContentKNN "
                  f"{marks[v['cold']['met']]}", "",
                  "| | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
        for row, m in table.items():
            label = f"**{row}**" if row == "ltray" else row
            lines.append(f"| {label} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = REPO / "README.md"
    body = readme.read_text()
    start, end = MARKERS
    if start not in body:
        raise SystemExit(f"README.md has no {start} marker")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", body))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--out", default=str(REPO / "bench-out" / "quality"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override for every dataset (experiments only: the matrix is the default)")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's quality-matrix table")
    ap.add_argument("--readme-only", action="store_true",
                    help="rewrite the README's table from benchmarks/results/quality_matrix.json, running nothing")
    args = ap.parse_args()
    if args.readme_only:
        saved = json.loads((RESULTS / "quality_matrix.json").read_text())
        write_readme(markdown({n: saved[n] for n in DATASETS if n in saved}))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "quality_matrix.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.datasets:
        metrics, seconds, eval_dir = run_dataset(name, out, args.overrides)
        table = metrics["metrics"]
        results[name] = {"metrics": {row: {k: m[k] for k in METRICS if k in m} for row, m in table.items()},
                         "verdict": verdict(table), "seconds": round(seconds, 1), "overrides": args.overrides,
                         "blend": {k: v for k, v in metrics.get("blend", {}).items() if k != "curve"}}
        for png in eval_dir.glob("*tradeoff*.png"):
            shutil.copyfile(png, RESULTS / f"quality_{name}_{png.name}")
        print(markdown({name: results[name]}), flush=True)
    # Read again before writing: another run of this script may have finished other datasets meanwhile.
    merged = json.loads(saved.read_text()) if saved.exists() else {}
    merged.update({n: results[n] for n in args.datasets})
    results = {n: merged[n] for n in DATASETS if n in merged}
    saved.write_text(json.dumps(results, indent=2, default=float))
    if args.readme:
        write_readme(markdown(results))
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
