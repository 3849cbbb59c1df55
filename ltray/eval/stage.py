"""The eval stage: ltray and every baseline on the same split and protocol -> metrics + report."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ltray.blend import BlendSetting
from ltray.config import Config
from ltray.data import temporal_holdout
from ltray.data.segments import LABELS
from ltray.eval.metrics import decile_exposure, evaluate, lorenz_curve
from ltray.validation import grid_points

if TYPE_CHECKING:  # the type only: the pipeline calls this stage, not the other way
    from ltray.pipeline import FittedRun

log = logging.getLogger(__name__)

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


def run_baselines(bundle, vectors: np.ndarray, cfg: Config, users: np.ndarray,
                  test_csr: sp.csr_matrix) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Each baseline tuned on a validation split carved from train, refit on train, lists for `users`.

    Runs the baselines named in ``cfg.eval.baselines``, plus ALS (the report's exposure charts compare
    against it) and the parts a hybrid needs (ALS, ContentKNN). The hybrids (ALS + tail quota, ALS +
    text blend) reuse those parts as tuned and fitted: their grid searches tune only their own share /
    weight. Returns ``(lists, info)``: lists = {report row: (len(users), K_MAX) item rows}; info =
    {report row: {"params", "tuned" (whether a grid was searched), cfg.eval.tune_metric (its validation
    score), "grid_points", "seconds" (tuning + refit)}, or {"skipped": why} for a baseline that declined
    its input (EASE above cf.item.ease_max_items)}.
    """
    from ltray.eval import baselines as B

    e = cfg.eval
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
    grids = e.baseline_grids
    seg = bundle.item_segment
    hybrids = {"als_tail_quota", "als_text_blend"} & set(e.baselines)
    wanted = set(e.baselines) | {"als"} | ({"contentknn"} if hybrids else set())
    out: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    fitted: dict[str, B.Baseline] = {}

    def run(key: str, name: str, make_tune, make_final=None, defaults: dict[str, Any] | None = None) -> None:
        """Tune ``make_tune`` on the validation split (when eval.tune and a grid), refit ``make_final``
        (default: the same) on train, list for `users`."""
        t0 = time.perf_counter()
        grid = grids.get(key) if e.tune else None
        params, score = dict(defaults or {}), None
        try:
            if grid:
                params, score = B.tune(make_tune, grid, fit_csr, valid_csr, e.tune_metric, users=valid_users,
                                       item_vectors=vectors, train_ts=fit_ts, item_segment=seg)
            model = (make_final or make_tune)(**params)
            model.fit(train, item_vectors=vectors, train_ts=train_ts, item_segment=seg)
        except B.BaselineSkipped as err:
            info[name] = {"skipped": str(err)}
            log.info("eval: baseline %s skipped: %s", name, err)
            return
        fitted[key] = model
        out[name] = model.recommend(rows, K_MAX)
        seconds = time.perf_counter() - t0
        info[name] = {"params": params, "tuned": bool(grid), e.tune_metric: score,
                      "grid_points": len(grid_points(grid)) if grid else 0, "seconds": round(seconds, 2)}
        tuned = f", validation {e.tune_metric} {score:.4f}" if grid else ""
        log.info("eval: baseline %s %s (%.1fs%s)", name, params or "", seconds, tuned)

    singles = {
        "mostpop": ("MostPop", lambda **p: B.MostPop()),
        "als": ("ALS", lambda **p: B.ALSBaseline(**p)),
        "itemknn": ("ItemKNN", lambda **p: B.ItemKNN(**p)),
        "contentknn": ("ContentKNN", lambda **p: B.ContentKNN(**p)),
        "ease": ("EASE", lambda **p: B.EASE(max_items=cfg.cf.item.ease_max_items, **p)),
        "rp3beta": ("RP3beta", lambda **p: B.RP3beta(**p)),
    }
    for key, (name, make) in singles.items():
        if key in wanted:
            run(key, name, make)
    if hybrids:
        als_p, text_p = info["ALS"]["params"], info["ContentKNN"]["params"]
        t0 = time.perf_counter()
        # The parts as tuned, fitted once on the tuning split; on train they are the rows' models above.
        tune_parts = None
        if e.tune and any(grids.get(k) for k in hybrids):
            tune_parts = (B.ALSBaseline(**als_p).fit(fit_csr, vectors, fit_ts),
                          B.ContentKNN(**text_p).fit(fit_csr, vectors, fit_ts))
            log.info("eval: the hybrids' ALS and ContentKNN fitted on the tuning split (%.1fs)",
                     time.perf_counter() - t0)
        final_parts = (fitted["als"], fitted["contentknn"])
        if "als_tail_quota" in hybrids:
            run("als_tail_quota", "ALS + tail quota",
                lambda **p: B.ALSTailQuota(components=tune_parts, **p),
                lambda **p: B.ALSTailQuota(components=final_parts, **p),
                defaults={"tail_share": e.tail_quota_share})
        if "als_text_blend" in hybrids:
            run("als_text_blend", "ALS + text blend",
                lambda **p: B.ALSTextBlend(components=tune_parts, **p),
                lambda **p: B.ALSTextBlend(components=final_parts, **p))
    if "lightfm" in wanted:
        if B.LightFMBaseline.available():
            lf = B.LightFMBaseline(item_features=B.text_bag_features(bundle.items["text"].tolist()))
            lf.fit(train, item_vectors=vectors, train_ts=train_ts, item_segment=seg)
            out["LightFM WARP"] = lf.recommend(rows, K_MAX)
            info["LightFM WARP"] = {"params": lf.params, "tuned": False}
        else:
            log.info("eval: LightFM is not installed (pip install 'ltray[lightfm]'); skipped")
    return out, info


def baseline_notes(info: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """One report note per baseline: the parameters it ran with and how they were chosen."""
    notes = []
    for name, i in info.items():
        if "skipped" in i:
            notes.append(f"{name}: skipped ({i['skipped']}).")
            continue
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in i["params"].items())
        how = (f"chosen on validation from {i['grid_points']} grid points ({metric} {i[metric]:.4f})"
               if i.get("tuned") else "not tuned")
        took = f"; tuning + refit {i['seconds']:.1f}s" if "seconds" in i else ""
        notes.append(f"{name}: {params or 'no parameters'}, {how}{took}.")
    return notes


def _ts_matrix(df, upos, item_rows, n_items) -> sp.csr_matrix:
    keep = df["user_id"].isin(upos).to_numpy() & (item_rows >= 0)
    rows = np.array([upos[x] for x in df["user_id"].to_numpy()[keep]], np.int64)
    m = sp.csr_matrix((df["ts"].to_numpy(np.float64)[keep], (rows, item_rows[keep])), shape=(len(upos), n_items))
    m.sum_duplicates()
    return m


def stage_eval(run: FittedRun, cfg: Config) -> Any:
    from ltray.cf.tune import describe_choice
    from ltray.eval.report import write_report
    from ltray.eval.verdict import sentence, verdict
    from ltray.recommend import Explainer, Recommender
    from ltray.text_mining import item_keywords

    t0 = time.perf_counter()
    store, bundle, models, ranker = run.store, run.bundle, run.models, run.ranker
    vectors, blend_choice = run.vectors, run.blend
    items = bundle.items
    titles = (items["title"] if "title" in items.columns else items["item_id"]).astype(str).to_numpy()
    rec = Recommender(models, ranker, cfg, tail_share=blend_choice["tail_share"],
                      explainer=Explainer(titles, item_keywords(items["text"].tolist())),
                      ranker_weight=blend_choice.get("ranker_weight"), cold_share=blend_choice.get("cold_share"),
                      quota_by=blend_choice.get("quota_by"))
    test = bundle.test
    users = rec.generator.known_users(test["user_id"])
    upos = {u: i for i, u in enumerate(users)}
    test_csr = _csr(test, upos, rec.generator.item_rows(test["item_id"].to_numpy()), len(bundle.item_ids))
    grid = tuple(cfg.eval.tail_share_grid)
    t_rec = time.perf_counter()
    own = BlendSetting()
    lists = rec.recommend_rows(users, K_MAX, settings=[own, *(BlendSetting(tail_share=s) for s in grid)])
    rec_seconds = time.perf_counter() - t_rec
    seg, pop = models.item_segment, models.item_pop
    ks = tuple(cfg.eval.ks)
    ours = lists[own]
    table = {"ltray": evaluate(ours, test_csr, seg, pop, ks=ks)}
    curve = []
    for s in grid:
        m = evaluate(lists[BlendSetting(tail_share=s)], test_csr, seg, pop, ks=(K_MAX,))
        curve.append({"tail_share": s, f"Recall@{K_MAX}": m[f"Recall@{K_MAX}"],
                      f"TailRecall@{K_MAX}": m[f"TailRecall@{K_MAX}"]})
    base_lists, base_info = run_baselines(bundle, vectors, cfg, users, test_csr)
    # A skipped baseline (EASE above cf.item.ease_max_items) has no row: the metrics table holds numbers
    # only (ltray.eval.verdict reads every row); the report's notes and metrics.json say why.
    for name, recs in base_lists.items():
        table[name] = evaluate(recs, test_csr, seg, pop, ks=ks)
    deciles = {"ltray": decile_exposure(ours, pop, K_MAX), "ALS": decile_exposure(base_lists["ALS"], pop, K_MAX)}
    lorenz = {"ltray": lorenz_curve(ours, len(seg), K_MAX), "ALS": lorenz_curve(base_lists["ALS"], len(seg), K_MAX)}
    examples = _examples(rec, bundle, users, cfg.eval.example_users)
    timings = dict(bundle.timings)
    timings["eval"] = time.perf_counter() - t0
    operating_point = (
        f"Operating point: tail_share={blend_choice['tail_share']:.2f}, "
        f"cold_share={blend_choice.get('cold_share', 0.0):.2f}, "
        f"ranker_weight={blend_choice.get('ranker_weight', 1.0):g}, "
        f"quotas by {blend_choice.get('quota_by') or 'uniform'}, chosen on a validation split "
        f"({blend_choice.get('rule', '')}).")
    cf_search = (store.stage_info("cf") or {}).get("tune") or {}
    cf_note = (f"CF: {describe_choice(models.als.cfg, cf_search)}." if cf_search else
               "CF: the configured values (cf.tune is off).")
    summary = sentence(verdict(table), table) + " " + operating_point
    notes = [
        operating_point,
        cf_note,
        f"ltray recommended for {len(users)} users in {rec_seconds:.1f}s "
        f"({len(users) / max(rec_seconds, 1e-9):.0f} users/s, all tail shares at once).",
        *baseline_notes(base_info, cfg.eval.tune_metric),
    ]
    with store.writing("eval") as w:
        md, html = write_report(w.path, dataset_name=store.manifest().get("dataset", ""), metrics_table=table,
                                tradeoff_curve=curve, decile_exposure=deciles, lorenz=lorenz, examples=examples,
                                timings=timings, notes=notes, verdict=summary,
                                test_fraction=cfg.data.test_fraction,
                                min_user_interactions=cfg.data.min_user_interactions, head_share=cfg.data.head_share)
        (w / "metrics.json").write_text(json.dumps({"metrics": table, "curve": curve, "blend": blend_choice,
                                                    "baselines": base_info}, indent=2, default=float))
        w.info.update(ltray={k: v for k, v in table["ltray"].items() if "@20" in k})
    store.update_manifest(metrics={k: {m: v for m, v in t.items() if "@20" in m} for k, t in table.items()},
                          timings=timings)
    report = store.shown_path("eval") / "report.html"
    row = table["ltray"]
    log.info("eval: Recall@20 %.4f, TailRecall@20 %.4f, ColdRecall@20 %.4f, Coverage@20 %.3f", row["Recall@20"],
             row["TailRecall@20"], row["ColdRecall@20"], row["Coverage@20"])
    return report


def _examples(rec, bundle, users: np.ndarray, n: int) -> list[dict[str, Any]]:
    items = bundle.items
    titles = (items["title"] if "title" in items.columns else items["item_id"]).astype(str).to_numpy()
    out = []
    for u in users[:: max(1, len(users) // max(n, 1))][:n]:
        state = rec.generator.state(u)
        hist = [{"title": titles[i], "segment": LABELS[rec.models.item_segment[i]]} for i in state.recent[:8]]
        state, cands = rec.rank_candidates(u)
        # a cold item's score in the report: its text closeness to the user (the ranker's means nothing there)
        text = dict(zip(np.asarray(cands["item_idx"]).tolist(), np.asarray(cands["tail_score"]).tolist(),
                        strict=True)) if "tail_score" in cands else {}
        recs = rec.top_k(state, cands, 10)
        out.append({"user_id": u, "history": hist, "recs": [
            {"title": titles[r.item_idx], "segment": r.segment, "score": float(r.score), "source": r.source,
             "reason": getattr(r, "reason", ""), "text_score": text.get(int(r.item_idx))}
            for r in recs.itertuples()]})
    return out
