"""Every operating point of finished runs, scored on their test split: could any choice meet the targets?

For each `ltray run` folder: the kept ranker's lists at every point of the validation curve that the rank
stage searched (`rank/blend.json`), scored on the test split and checked against the targets of
`ltray/eval/verdict.py` with the run's own tuned baselines (`eval/metrics.json`). Then the point today's
rule (`choose_tail_share` with the default `eval` config) takes from the same validation curve. A missed
target is then either the rule's (some point meets every target, the rule took another) or the
candidates' (no point does). Nothing is refit: the run's stages are read back as they are.

    python benchmarks/operating_points.py [RUN ...] [--out FILE]

Without RUN: the quality matrix's runs (`bench-out/quality/<dataset>`), each brought up to date with
`ltray run` first (a finished, current run skips every stage). Prints one block per run; writes every
point with its validation and test metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ltray.artifacts import ArtifactStore
from ltray.blend import BlendSetting
from ltray.config import Config
from ltray.eval.metrics import evaluate
from ltray.eval.verdict import K, verdict
from ltray.pipeline import load_bundle
from ltray.recommend import load_recommender
from ltray.tuning import choose_tail_share
from ltray.validation import held_out

TARGETS = ("recall", "not_dominated", "tail", "cold")


def score_points(run: Path) -> dict:
    """Every point of the run's validation curve with its test metrics and the verdict of each."""
    store = ArtifactStore(str(run), mode="r")
    rec, bundle = load_recommender(store), load_bundle(store)
    blend = json.loads((store.stage_path("rank") / "blend.json").read_text())
    baselines = json.loads((store.stage_path("eval") / "metrics.json").read_text())["metrics"]
    baselines.pop("ltray", None)
    test = bundle.test
    users = rec.generator.known_users(test["user_id"])
    held = held_out(test, pd.Index(users), pd.Index(rec.models.item_ids))
    settings = [BlendSetting(*(p[f] for f in BlendSetting._fields)) for p in blend["curve"]]
    lists = rec.recommend_rows(users, K, settings=settings)
    points = []
    for p, st in zip(blend["curve"], settings, strict=True):
        m = evaluate(lists[st], held, rec.models.item_segment, rec.models.item_pop, ks=(K,))
        test_m = {k: float(v) for k, v in m.items() if "@" in k}
        v = verdict({"ltray": test_m, **baselines})
        points.append({"setting": st._asdict(), "validation": {k: p[k] for k in p if "@" in k},
                       "floor_se": p.get("floor_se", 0.0), "test": test_m,
                       "met": {t: v[t]["met"] for t in TARGETS if t in v}})
    return {"run": str(run), "dataset": store.manifest().get("dataset", ""), "cf_only": blend["cf_only"],
            "chosen_in_run": {f: blend[f] for f in BlendSetting._fields}, "points": points}


def summary(result: dict, cfg: Config) -> list[str]:
    points = result["points"]
    r, c = f"Recall@{K}", f"ColdRecall@{K}"

    def all_met(p: dict) -> bool:
        return all(m is not False for m in p["met"].values())

    keep = [p for p in points if p["met"].get("recall")]
    curve = [{**p["setting"], **p["validation"], "floor_se": p["floor_se"], "i": i} for i, p in enumerate(points)]
    e = cfg.eval
    rule = choose_tail_share(curve, result["cf_only"][r], e.max_recall_loss, objective=e.long_tail_objective,
                             z=e.recall_floor_z)
    taken = points[rule["i"]]
    fmt = ("w={ranker_weight:g} tail {tail_share:.2f} cold {cold_share:.2f} {quota_by}").format
    lines = [f"{result['dataset']} ({result['run']}): {len(points)} points, {len(keep)} keep Recall@{K} "
             f">= 0.99x the best CF baseline, {sum(map(all_met, points))} meet every target"]
    if keep:
        lines.append(f"  best ColdRecall@{K} among those keeping recall: {max(p['test'].get(c, 0.0) for p in keep):.4f}")
    lines.append(f"  today's rule takes {fmt(**taken['setting'])}: test Recall@{K} {taken['test'][r]:.4f}, "
                 f"TailRecall@{K} {taken['test'][f'TailRecall@{K}']:.4f}, {c} {taken['test'].get(c, 0.0):.4f}; "
                 + ", ".join(f"{t} {'met' if m else 'missed' if m is False else 'n/a'}" for t, m in taken["met"].items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path,
                    help="finished `ltray run` folders (default: the quality matrix's, run where needed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bench-out" / "operating_points.json",
                    help="every point's metrics (megabytes for a few runs: kept out of the repository)")
    args = ap.parse_args()
    runs = args.runs
    if not runs:  # the same runs (and folders) as benchmarks/quality_matrix.py's defaults
        from quality_matrix import DATASETS, REPO, machine, run_dataset

        out = REPO / "bench-out" / "quality"
        out.mkdir(parents=True, exist_ok=True)
        for name in DATASETS:
            run_dataset(name, out, [], machine())
        runs = [out / name for name in DATASETS]
    cfg = Config()
    results = []
    for run in runs:
        results.append(score_points(run))
        print("\n".join(summary(results[-1], cfg)), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
