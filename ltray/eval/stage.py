"""The eval stage: ltray and every baseline on the same split and protocol -> metrics + report."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ltray.config import Config
from ltray.data import temporal_holdout
from ltray.eval.metrics import decile_exposure, evaluate, lorenz_curve

K_MAX = 20


def _csr(df: pd.DataFrame, user_pos: dict[str, int], item_rows: np.ndarray, n_items: int) -> sp.csr_matrix:
    keep = df["user_id"].isin(user_pos).to_numpy() & (item_rows >= 0)
    u = df["user_id"].to_numpy()[keep]
    rows = np.array([user_pos[x] for x in u], np.int64)
    w = np.ones(len(rows), np.float32)
    m = sp.csr_matrix((w, (rows, item_rows[keep])), shape=(len(user_pos), n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def run_baselines(bundle, vectors: np.ndarray, cfg: Config, users: np.ndarray, test_csr: sp.csr_matrix,
                  log) -> dict[str, np.ndarray]:
    """Each baseline tuned on a validation split carved from train, refit on train, lists for `users`."""
    from ltray.eval import baselines as B

    item_index = pd.Index(bundle.item_ids)
    n_items = len(item_index)
    all_users = np.unique(bundle.train["user_id"].astype(str))
    upos = {u: i for i, u in enumerate(all_users)}
    train_rows = item_index.get_indexer(bundle.train["item_id"])
    train = _csr(bundle.train, upos, train_rows, n_items)
    train_ts = _ts_matrix(bundle.train, upos, train_rows, n_items)
    fit_part, valid = temporal_holdout(bundle.train, cfg.data.test_fraction, cfg.data.min_user_interactions)
    fit_csr = _csr(fit_part, upos, item_index.get_indexer(fit_part["item_id"]), n_items)
    fit_ts = _ts_matrix(fit_part, upos, item_index.get_indexer(fit_part["item_id"]), n_items)
    valid_csr = _csr(valid, upos, item_index.get_indexer(valid["item_id"]), n_items)
    valid_users = np.unique(valid_csr.nonzero()[0])
    rows = np.array([upos[u] for u in users], np.int64)
    grids = cfg.eval.baseline_grids
    seg = bundle.item_segment
    factories = {
        "MostPop": lambda **p: B.MostPop(),
        "ALS": lambda **p: B.ALSBaseline(**p),
        "ItemKNN": lambda **p: B.ItemKNN(**p),
        "ContentKNN": lambda **p: B.ContentKNN(**p),
    }
    grid_of = {"ALS": grids.get("als"), "ItemKNN": grids.get("itemknn"), "ContentKNN": grids.get("contentknn")}
    out: dict[str, np.ndarray] = {}
    chosen: dict[str, dict] = {}
    for name, make in factories.items():
        t0 = time.perf_counter()
        params: dict[str, Any] = {}
        if grid_of.get(name) and cfg.eval.tune:
            params, _ = B.tune(make, grid_of[name], fit_csr, valid_csr, cfg.eval.tune_metric, users=valid_users,
                               item_vectors=vectors, train_ts=fit_ts, item_segment=seg)
        model = make(**params)
        model.fit(train, item_vectors=vectors, train_ts=train_ts, item_segment=seg)
        out[name] = model.recommend(rows, K_MAX)
        chosen[name] = params
        log(f"eval: baseline {name} {params or ''} ({time.perf_counter() - t0:.1f}s)")
    share = cfg.eval.tail_quota_share
    quota = B.ALSTailQuota(als_params=chosen.get("ALS") or {}, content_params=chosen.get("ContentKNN") or {},
                           tail_share=share)
    quota.fit(train, item_vectors=vectors, train_ts=train_ts, item_segment=seg)
    out[f"ALS + {share:.0%} tail quota"] = quota.recommend(rows, K_MAX)
    if B.LightFMBaseline.available():
        lf = B.LightFMBaseline(item_features=B.text_bag_features(bundle.items["text"].tolist()))
        lf.fit(train, item_vectors=vectors, train_ts=train_ts, item_segment=seg)
        out["LightFM WARP"] = lf.recommend(rows, K_MAX)
    else:
        log("eval: LightFM is not installed (pip install 'ltray[lightfm]'); skipped")
    return out


def _ts_matrix(df, upos, item_rows, n_items) -> sp.csr_matrix:
    keep = df["user_id"].isin(upos).to_numpy() & (item_rows >= 0)
    rows = np.array([upos[x] for x in df["user_id"].to_numpy()[keep]], np.int64)
    m = sp.csr_matrix((df["ts"].to_numpy(np.float64)[keep], (rows, item_rows[keep])), shape=(len(upos), n_items))
    m.sum_duplicates()
    return m


def stage_eval(parts: dict[str, Any], cfg: Config, log) -> Any:
    from ltray.eval.report import write_report
    from ltray.recommend import Explainer, Recommender
    from ltray.text_mining import item_keywords

    t0 = time.perf_counter()
    store, bundle, models, ranker = parts["store"], parts["bundle"], parts["models"], parts["ranker"]
    vectors, blend_choice = parts["vectors"], parts["blend"]
    items = bundle.items
    titles = (items["title"] if "title" in items.columns else items["item_id"]).astype(str).to_numpy()
    rec = Recommender(models, ranker, cfg, tail_share=blend_choice["tail_share"],
                      explainer=Explainer(titles, item_keywords(items["text"].tolist())),
                      ranker_weight=blend_choice.get("ranker_weight"), cold_share=blend_choice.get("cold_share"),
                      quota_by=blend_choice.get("quota_by"))
    test = bundle.test
    users = np.array([u for u in np.unique(test["user_id"].astype(str)) if rec.generator.user_row(u) is not None])
    upos = {u: i for i, u in enumerate(users)}
    test_csr = _csr(test, upos, rec.generator.item_rows(test["item_id"].to_numpy()), len(bundle.item_ids))
    grid = tuple(cfg.eval.tail_share_grid)
    t_rec = time.perf_counter()
    own = (None, None, None, None)
    lists = rec.recommend_rows(users, K_MAX, settings=[own, *((None, s, None, None) for s in grid)])
    rec_seconds = time.perf_counter() - t_rec
    seg, pop = models.item_segment, models.item_pop
    ks = tuple(cfg.eval.ks)
    ours = lists[own]
    table = {"ltray": evaluate(ours, test_csr, seg, pop, ks=ks)}
    curve = []
    for s in grid:
        m = evaluate(lists[(None, s, None, None)], test_csr, seg, pop, ks=(K_MAX,))
        curve.append({"tail_share": s, f"Recall@{K_MAX}": m[f"Recall@{K_MAX}"],
                      f"TailRecall@{K_MAX}": m[f"TailRecall@{K_MAX}"]})
    base_lists = run_baselines(bundle, vectors, cfg, users, test_csr, log)
    for name, recs in base_lists.items():
        table[name] = evaluate(recs, test_csr, seg, pop, ks=ks)
    deciles = {"ltray": decile_exposure(ours, pop, K_MAX), "ALS": decile_exposure(base_lists["ALS"], pop, K_MAX)}
    lorenz = {"ltray": lorenz_curve(ours, len(seg), K_MAX), "ALS": lorenz_curve(base_lists["ALS"], len(seg), K_MAX)}
    examples = _examples(rec, bundle, users, cfg.eval.example_users)
    timings = dict(bundle.timings)
    timings["eval"] = time.perf_counter() - t0
    notes = [
        f"Operating point: tail_share={blend_choice['tail_share']:.2f}, "
        f"cold_share={blend_choice.get('cold_share', 0.0):.2f}, "
        f"ranker_weight={blend_choice.get('ranker_weight', 1.0):g}, "
        f"quotas by {blend_choice.get('quota_by') or 'uniform'}, chosen on a validation split "
        f"({blend_choice.get('rule', '')}).",
        f"ltray recommended for {len(users)} users in {rec_seconds:.1f}s "
        f"({len(users) / max(rec_seconds, 1e-9):.0f} users/s, all tail shares at once).",
    ]
    with store.writing("eval") as w:
        md, html = write_report(w.path, dataset_name=store.manifest().get("dataset", ""), metrics_table=table,
                                tradeoff_curve=curve, decile_exposure=deciles, lorenz=lorenz, examples=examples,
                                timings=timings, notes=notes)
        (w / "metrics.json").write_text(json.dumps({"metrics": table, "curve": curve, "blend": blend_choice},
                                                   indent=2, default=float))
        w.info.update(ltray={k: v for k, v in table["ltray"].items() if "@20" in k})
    store.update_manifest(metrics={k: {m: v for m, v in t.items() if "@20" in m} for k, t in table.items()},
                          timings=timings)
    report = store.stage_path("eval") / "report.html"
    log(f"eval: Recall@20 {table['ltray']['Recall@20']:.4f}, TailRecall@20 {table['ltray']['TailRecall@20']:.4f}, "
        f"ColdRecall@20 {table['ltray']['ColdRecall@20']:.4f}, Coverage@20 {table['ltray']['Coverage@20']:.3f}")
    return report


def _examples(rec, bundle, users: np.ndarray, n: int) -> list[dict[str, Any]]:
    items = bundle.items
    titles = (items["title"] if "title" in items.columns else items["item_id"]).astype(str).to_numpy()
    seg_names = np.array(["head", "tail", "cold"])
    out = []
    for u in users[:: max(1, len(users) // max(n, 1))][:n]:
        state = rec.generator.state(u)
        hist = [{"title": titles[i], "segment": seg_names[rec.models.item_segment[i]]} for i in state.recent[:8]]
        recs = rec.recommend(u, k=10)
        out.append({"user_id": u, "history": hist, "recs": [
            {"title": titles[r.item_idx], "segment": r.segment, "score": float(r.score), "source": r.source,
             "reason": getattr(r, "reason", "")} for r in recs.itertuples()]})
    return out
