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
--readme rewrites every README block that quotes a run's numbers, between its markers, so that no
number in them is typed by hand:

- `quality-matrix`: the table per dataset (section "Quality on every catalog");
- `movielens-results`: the MovieLens metrics table, its targets, the seeds table, the tail-share
  trade-off and the stage times (section "Results on MovieLens latest-small");
- `make-run-sample`: the terminal output of the synthetic default run (the Quickstart's `make run`).

--seeds N ... adds runs with `--set cf.seed=N --set rank.seed=N` (the seeds table); --from-run DIR
records a run that already finished instead of running one (its dataset from its manifest.json, its
terminal output from DIR.log or DIR=LOG, the --set values it was run with from this command's --set).

    .venv/bin/python benchmarks/quality_matrix.py                      # all four (about 15-25 min on 2 cores)
    .venv/bin/python benchmarks/quality_matrix.py --datasets amazon-office-2014-5core --readme
    .venv/bin/python benchmarks/quality_matrix.py --datasets movielens-latest-small --seeds 1 2 --readme
    .venv/bin/python benchmarks/quality_matrix.py --from-run runs/ml0=ml0.log --readme
    .venv/bin/python benchmarks/quality_matrix.py --from-run runs/ml1 --set cf.seed=1 --set rank.seed=1 --readme
    .venv/bin/python benchmarks/quality_matrix.py --readme-only    # the blocks from the saved results
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from ltray.eval.verdict import times, verdict  # noqa: E402

BLOCKS = ("quality-matrix", "movielens-results", "make-run-sample")
README = REPO / "README.md"
# The MovieLens targets of the evaluation issue; tests/test_pipeline.py::test_movielens_targets asserts them.
ML_TARGETS = {"Recall@20": 0.119, "TailRecall@20": 0.015, "ColdRecall@20": 0.015, "Coverage@20": 0.22}
DETAIL = ("Recall@10", "Recall@20", "NDCG@20", "TailRecall@20", "HeadRecall@20", "ColdRecall@20", "Coverage@20",
          "APLT@20", "Gini@20")
SEED_KEYS = ("cf.seed", "rank.seed")
# The eval stage's per-baseline lines, left out of the README's sample output.
BASELINE_LINE = re.compile(r"^> eval: (baseline |the hybrids'|LightFM )")


def machine() -> str:
    """This machine in a few words (cores, GPU), for the line under each generated table."""
    try:
        import torch
        gpu = f"{torch.cuda.device_count()} GPU" if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "GPU unknown"
    return f"{os.cpu_count()} cores, {gpu}"


def seeds_of(overrides: list[str]) -> dict[str, int]:
    """cf.seed and rank.seed as the run's overrides set them (0, the default, where they do not)."""
    given = dict(o.split("=", 1) for o in overrides)
    return {k: int(given.get(k, 0)) for k in SEED_KEYS}


def check_seed(folder: Path, store, seeds: dict[str, int]) -> None:
    """The rank stage's own config says which rank.seed trained it: refuse a run recorded under other seeds.
    (manifest.json's `config` is the one of the run that wrote the data stage, so a re-run of a folder with
    other --set values does not show there.)"""
    try:
        saved = json.loads((store.stage_path("rank") / "rank_config.json").read_text())
    except (OSError, ValueError, KeyError):
        return
    if "seed" in saved and int(saved["seed"]) != seeds["rank.seed"]:
        raise SystemExit(f"{folder}: its ranker was trained with rank.seed={saved['seed']}, not "
                         f"{seeds['rank.seed']}: pass the run's --set values with --from-run")


def wall_seconds(log_text: str) -> float | None:
    """The run's wall time from its log: a `wall=SECONDS` line (this script's runs) or GNU time's -v line."""
    m = re.search(r"\bwall=([0-9.]+)s?\b", log_text)
    if m:
        return float(m.group(1))
    m = re.search(r"Elapsed \(wall clock\) time.*?: (?:(\d+):)?(\d+):([0-9.]+)", log_text)
    if m:
        h, mi, sec = m.groups()
        return int(h or 0) * 3600 + int(mi) * 60 + float(sec)
    return None


def own_lines(log_text: str) -> list[str]:
    """ltray's own terminal lines (`> ...`, `report...`, `warning...`) of a run's output."""
    return [ln.rstrip() for ln in log_text.splitlines() if ln.startswith(("> ", "report", "warning", "error"))]


def record(folder: Path, log_text: str, seconds: float | None, machine_note: str,
           overrides: list[str]) -> tuple[str, dict]:
    """(dataset, what the README and the JSON keep) of a finished `ltray run` folder run with ``overrides``."""
    import pyarrow.parquet as pq

    from ltray.artifacts import ArtifactStore
    from ltray.data.segments import LABELS

    store = ArtifactStore(str(folder), mode="r")
    manifest = store.manifest()
    eval_dir = store.stage_path("eval")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    table = metrics["metrics"]
    name = manifest.get("dataset") or manifest["config"]["data"]["dataset"]
    seeds = seeds_of(overrides)
    check_seed(folder, store, seeds)
    seg = pq.read_table(store.stage_path("data") / "segments.parquet", columns=["segment"]).column(0).to_numpy()
    counts = {str(LABELS[code]): int((seg == code).sum()) for code in range(len(LABELS))}
    shown = {str(folder), str(folder.resolve())}
    lines = own_lines(log_text)
    for path in sorted(shown, key=len, reverse=True):
        lines = [ln.replace(path, f"artifacts/{name}") for ln in lines]
    result = {
        "metrics": {row: {k: m[k] for k in METRICS if k in m} for row, m in table.items()},
        "detail": {row: {k: m[k] for k in DETAIL if k in m} for row, m in table.items()},
        "verdict": verdict(table), "seconds": None if seconds is None else round(seconds, 1),
        "overrides": list(overrides), "seeds": seeds,
        "blend": {k: v for k, v in metrics.get("blend", {}).items() if k != "curve"},
        "curve": metrics.get("curve", []),
        "timings": {k: round(float(v), 1) for k, v in manifest.get("timings", {}).items()},
        "segments": counts, "test_users": int(table["ltray"].get("n_users", 0)),
        "date": str(manifest.get("updated_at", ""))[:10] or dt.date.today().isoformat(),
        "machine": machine_note, "log": lines,
        "baseline_params": {n: b.get("params") for n, b in metrics.get("baselines", {}).items()},
    }
    return name, result


def run_dataset(name: str, out: Path, overrides: list[str], machine_note: str, seed: int = 0) -> tuple[dict, Path]:
    """`ltray run` on one dataset (seeds other than 0 with --set cf.seed / rank.seed); what `record` keeps."""
    from ltray.artifacts import ArtifactStore

    folder = out / (name if seed == 0 else f"{name}-seed{seed}")
    cmd = [str(REPO / ".venv" / "bin" / "ltray"), "run", "--dataset", name, "--artifacts", str(folder)]
    overrides = overrides + ([f"{k}={seed}" for k in SEED_KEYS] if seed else [])
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    log_path = folder.with_name(folder.name + ".log")
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        seconds = time.perf_counter() - t0
        log.write(f"wall={seconds:.1f}s load average {os.getloadavg()[0]:.1f}\n")
    _, result = record(folder, log_path.read_text(), seconds, machine_note, overrides)
    return result, ArtifactStore(str(folder), mode="r").stage_path("eval")


def markdown(results: dict[str, dict]) -> str:
    lines = []
    for name, r in results.items():
        table, v = r["metrics"], r["verdict"]
        marks = {True: "met", False: "**missed**", None: "n/a (no cold item in test)"}
        secs = f", {r['seconds']:.0f} s" if r.get("seconds") else ""
        when = f", {r['date']}" if r.get("date") else ""
        lines += [f"**{name}** (`ltray run`{when}{secs}): Recall@20 {v['recall']['ratio']:.3f}x the best "
                  f"CF baseline ({v['best_cf']}) {marks[v['recall']['met']]}; not dominated "
                  f"{marks[v['not_dominated']['met']]}"
                  + (f" (by {', '.join(v['not_dominated']['by'])})" if v["not_dominated"]["by"] else "")
                  + f"; TailRecall@20 {times(v['tail']['ratio'], table['ltray']['TailRecall@20'])} "
                  f"{marks[v['tail']['met']]}; ColdRecall@20 vs ContentKNN "
                  f"{marks[v['cold']['met']]}", "",
                  "| | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
        for row, m in table.items():
            label = f"**{row}**" if row == "ltray" else row
            lines.append(f"| {label} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def _blend_label(b: dict) -> str:
    if not b:
        return "defaults"
    return (f"w={b.get('ranker_weight', 0):g}, tail {b.get('tail_share', 0):.2f}, cold {b.get('cold_share', 0):.2f}, "
            f"quotas by {b.get('quota_by') or 'uniform'}")


STAGE_ORDER = ("data", "embed", "cf+index", "rank", "eval")


def _times(t: dict[str, float]) -> str:
    order = sorted(t, key=lambda k: (STAGE_ORDER.index(k) if k in STAGE_ORDER else len(STAGE_ORDER), k))
    return ", ".join(f"{k} {t[k]:,.0f} s" for k in order)


def _targets(m: dict[str, float], als: dict[str, float] | None) -> dict[str, bool]:
    floor = max(ML_TARGETS["Recall@20"], als["Recall@20"] if als else 0.0)
    return {k: m.get(k, 0.0) >= (floor if k == "Recall@20" else t) for k, t in ML_TARGETS.items()}


def _cell(m: dict[str, float], k: str, best: dict[str, float]) -> str:
    """One metric, bold where it is the column's best (Gini, lower is more even, is never bold)."""
    v = m.get(k, float("nan"))
    txt = f"{v:.3f}" if k == "Gini@20" else f"{v:.4f}"
    return f"**{txt}**" if k in best and v == best[k] else txt


def _when(r: dict) -> str:
    secs = f", {r['seconds']:.0f} s wall" if r.get("seconds") else ""
    return f"{r.get('date', '?')}, {r.get('machine', '?')}{secs}"


def results_block(r: dict, seeds: dict[str, dict]) -> str:
    """The MovieLens section's numbers: the metrics table, the targets, the seeds, the trade-off, the times."""
    detail, b = r["detail"], r.get("blend", {})
    seg, n_users = r.get("segments", {}), r.get("test_users", 0)
    lines = [f"Measured with `ltray run --dataset movielens-latest-small` (seed 0, the defaults) on {_when(r)}; "
             f"{n_users:,} test users; head {seg.get('head', 0):,} items, tail {seg.get('tail', 0):,}, cold "
             f"{seg.get('cold', 0):,}. Written by `benchmarks/quality_matrix.py --readme` from the run's "
             "`eval/metrics.json` and `manifest.json`.", "",
             "| system | " + " | ".join(DETAIL) + " |", "|---|" + "---:|" * len(DETAIL)]
    best = {k: max(m.get(k, float("-inf")) for m in detail.values()) for k in DETAIL if k != "Gini@20"}
    params = r.get("baseline_params", {})
    for row, m in detail.items():
        if row == "ltray":
            label = f"**ltray** ({_blend_label(b).replace('tail ', 'tail_share ').replace('cold ', 'cold_share ')})"
        else:
            p = params.get(row)
            label = row + (f" `{json.dumps(p, separators=(', ', ': '))}`" if p else "")

        lines.append(f"| {label} | " + " | ".join(_cell(m, k, best) for k in DETAIL) + " |")
    me, als = detail["ltray"], detail.get("ALS")
    met = _targets(me, als)
    lines += ["", "Against the evaluation issue's targets (`tests/test_pipeline.py::test_movielens_targets`): "
              + "; ".join(f"{k} {me.get(k, 0):.4f} >= "
                          + (f"max({ML_TARGETS[k]}, ALS {als['Recall@20']:.4f})" if k == "Recall@20" and als
                             else f"{ML_TARGETS[k]}") + (" met" if met[k] else " **missed**")
                          for k in ML_TARGETS) + "."]
    if seeds:
        lines += ["", "Seeds (`--set cf.seed=N --set rank.seed=N`: ALS's start, which validation users the "
                  "choice's ranker learns from, the negatives and initial weights):", "",
                  "| seeds | chosen on validation | Recall@20 | TailRecall@20 | ColdRecall@20 | Coverage@20 | "
                  "all four targets | run |", "|---|---|---:|---:|---:|---:|---|---|"]
        for seed, s in sorted({"0": r, **seeds}.items(), key=lambda kv: int(kv[0])):
            m = s["detail"]["ltray"]
            ok = all(_targets(m, s["detail"].get("ALS")).values())
            lines.append(f"| {seed}{' (default)' if seed == '0' else ''} | {_blend_label(s.get('blend', {}))} | "
                         + " | ".join(f"{m.get(k, 0):.4f}" for k in ML_TARGETS) + f" | {'yes' if ok else 'no'} | "
                         f"{s.get('date', '?')} |")
    curve = r.get("curve") or []
    if curve:
        chosen = b.get("tail_share")
        lines += ["", f"ltray's trade-off on test as the tail share moves (seed 0, the same ranker, "
                  f"w={b.get('ranker_weight', 0):g}, cold share {b.get('cold_share', 0):.2f}, "
                  f"quotas by {b.get('quota_by') or 'uniform'}):", "",
                  "| tail_share | " + " | ".join(f"{p['tail_share']:.2f}" + (" (chosen)" if p["tail_share"] == chosen
                                                                           else "") for p in curve) + " |",
                  "|---|" + "---:|" * len(curve)]
        for k in ("Recall@20", "TailRecall@20"):
            lines.append(f"| {k} | " + " | ".join(f"{p[k]:.4f}" for p in curve) + " |")
    t = r.get("timings", {})
    if t:
        lines += ["", "Stage times of that run (`manifest.json` `timings`, wall seconds on the machine above): "
                  + _times(t) + "."]
    return "\n".join(lines)


def sample_block(r: dict, dataset: str = "synthetic") -> str:
    """The Quickstart's `make run` output: the synthetic default run's own lines, the baselines' left out."""
    kept = [ln for ln in r.get("log", []) if not BASELINE_LINE.match(ln)]
    left = len(r.get("log", [])) - len(kept)
    m = r["metrics"]
    base = ", ".join(f"{n} {m[n]['Recall@20']:.4f}" for n in ("ALS", "EASE") if n in m)
    t = r.get("timings", {})
    return "\n".join(["```bash", "make run", *(f"# {ln}" for ln in kept), "```", "",
                      f"(The `ltray run` lines of the synthetic default run, {_when(r)}; written by "
                      f"`benchmarks/quality_matrix.py --readme`, the {left} lines of the baselines left out. "
                      f"Tuned baselines' Recall@20 on the same split: {base}; every row is in "
                      "[Quality on every catalog](#quality-on-every-catalog). Stage times: "
                      + _times(t) + ".)"])


def render(results: dict) -> dict[str, str]:
    """Each README block's text from the saved results (blocks whose run is missing are left as they are)."""
    data = {n: results[n] for n in DATASETS if n in results}
    out = {"quality-matrix": markdown(data)}
    ml = "movielens-latest-small"
    if ml in data and "detail" in data[ml]:
        out["movielens-results"] = results_block(data[ml], results.get("seeds", {}).get(ml, {}))
    if "synthetic" in data and data["synthetic"].get("log"):
        out["make-run-sample"] = sample_block(data["synthetic"])
    return out


def write_readme(blocks: dict[str, str] | str, readme: Path = README) -> None:
    """Replace each block between `<!-- NAME:start -->` and `<!-- NAME:end -->`; idempotent."""
    if isinstance(blocks, str):
        blocks = {"quality-matrix": blocks}
    body = readme.read_text()
    for name, text in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in body or end not in body:
            raise SystemExit(f"{readme.name} has no {start} ... {end} markers")
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        body = pattern.sub(lambda _, s=start, t=text, e=end: f"{s}\n{t}\n{e}", body)
    readme.write_text(body)


def merge_saved(saved: Path, new: dict, new_seeds: dict) -> dict:
    """Read the saved results again and merge: another run of this script may have finished others meanwhile."""
    merged = json.loads(saved.read_text()) if saved.exists() else {}
    merged.update(new)
    seeds = merged.get("seeds", {})
    for name, by_seed in new_seeds.items():
        seeds.setdefault(name, {}).update(by_seed)
    out = {n: merged[n] for n in DATASETS if n in merged}
    if seeds:
        out["seeds"] = seeds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--out", default=str(REPO / "bench-out" / "quality"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override for every dataset (experiments only: the matrix is the default); "
                         "with --from-run, the --set values those runs were made with (cf.seed / rank.seed "
                         "put them in the seeds table)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="seeds to run per dataset (0 = the default config; others go to the seeds table)")
    ap.add_argument("--from-run", nargs="+", default=[], metavar="DIR[=LOG]",
                    help="record finished `ltray run` folders instead of running (LOG: its terminal output, "
                         "default DIR.log)")
    ap.add_argument("--machine", default=None,
                    help="the machine, as the README states it (default: cores and GPUs of this one)")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's generated blocks")
    ap.add_argument("--readme-only", action="store_true",
                    help="rewrite the README's blocks from benchmarks/results/quality_matrix.json, running nothing")
    args = ap.parse_args()
    saved = RESULTS / "quality_matrix.json"
    if args.readme_only:
        write_readme(render(json.loads(saved.read_text())))
        return
    note = args.machine or machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    new, new_seeds = {}, {}

    def keep(name: str, result: dict, eval_dir: Path | None) -> None:
        extra = [o for o in result["overrides"] if o.split("=")[0] not in SEED_KEYS]
        seed = {result["seeds"][k] for k in SEED_KEYS}
        if extra or len(seed) != 1:
            print(f"{name}: not the default config ({', '.join(extra) or result['seeds']}); kept out of the "
                  "README", file=sys.stderr)
            return
        seed = seed.pop()
        if seed == 0:
            new[name] = result
            for png in (eval_dir.glob("*tradeoff*.png") if eval_dir else ()):
                shutil.copyfile(png, RESULTS / f"quality_{name}_{png.name}")
            print(markdown({name: result}), flush=True)
        else:
            new_seeds.setdefault(name, {})[str(seed)] = {k: result[k] for k in (
                "metrics", "detail", "blend", "seconds", "date", "machine", "seeds")}
            m = result["metrics"]["ltray"]
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {m[k]:.4f}" for k in METRICS), flush=True)

    if args.from_run:
        from ltray.artifacts import ArtifactStore

        for spec in args.from_run:
            folder, _, log = spec.partition("=")
            folder_p = Path(folder)
            log_p = Path(log) if log else folder_p.with_name(folder_p.name + ".log")
            text = log_p.read_text(errors="replace") if log_p.is_file() else ""
            name, result = record(folder_p, text, wall_seconds(text), note, args.overrides)
            keep(name, result, ArtifactStore(str(folder_p), mode="r").stage_path("eval"))
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.datasets:
            for seed in args.seeds:
                result, eval_dir = run_dataset(name, out, args.overrides, note, seed)
                if args.overrides:  # an experiment: printed, not saved over the defaults' results
                    print(markdown({name: result}), flush=True)
                    continue
                keep(name, result, eval_dir)
    results = merge_saved(saved, new, new_seeds)
    saved.write_text(json.dumps(results, indent=2, default=float))
    if args.readme:
        write_readme(render(results))
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
