"""Train the ranker on candidates it will really see, and choose the tail share on validation.

Train is split per user by time into `fit` and `valid`. Candidate models fitted on
`fit` produce each user's candidates; the users with `valid` items are halved, and each
half's `valid` items label the training table of a ranker that lists the other half
(cross-fitting), so the operating point is chosen on every validation user: the ranker weight
with the most Recall@K without quotas, and at that weight the most
long-tail recall (tail and cold, `eval.long_tail_objective`) whose Recall@K stays within
`eval.max_recall_loss` of the best CF source alone. The ranker kept learns from both halves
(`rank.refit_on_all`; without it, it is the first half's ranker and the point is chosen on the
second half alone).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltray.blend import BlendSetting
from ltray.candidates import CandidateGenerator, CandidateModels
from ltray.config import Config
from ltray.data import temporal_holdout
from ltray.data.segments import segment_code_array
from ltray.eval.metrics import evaluate
from ltray.rank.features import FeatureBuilder
from ltray.rank.sampling import sample_training_table, time_validation_split
from ltray.recommend import Recommender, feature_context
from ltray.threads import single_threaded
from ltray.validation import TUNE_K, held_out, paired_se, ranker_halves, user_recall

log = logging.getLogger(__name__)

_OBJECTIVES = {"balanced": f"sqrt(TailRecall@{TUNE_K} x ColdRecall@{TUNE_K})",
               "sum": f"TailRecall@{TUNE_K} + ColdRecall@{TUNE_K}"}


def cf_only_rows(models: CandidateModels, gen: CandidateGenerator, users: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each user's top k over the whole catalog by each CF source alone: the mixed CF score (`cf`), ALS
    alone (`als`) and the item-item model alone (`item`, where there is one). The best of them on
    validation sets the recall floor."""
    rows = np.array([gen.user_row(u) for u in users], np.int64)
    seen = models.als.seen
    histories = [seen.indices[seen.indptr[r]:seen.indptr[r + 1]].astype(np.int64) for r in rows]
    mixes = {"cf": models.cf.mix, "als": 0.0, **({"item": 1.0} if models.cf.item_item is not None else {})}
    return {name: dataclasses.replace(models.cf, mix=m).recommend(models.als.user_factors[rows], histories, k,
                                                                   exclude=histories)
            for name, m in mixes.items()}


def long_tail_value(point: dict[str, float], objective: str = "balanced", k: int = TUNE_K) -> float:
    """What the operating point maximises. sum: TailRecall + ColdRecall. balanced: their geometric mean,
    so neither kind of long tail is given up for the other: when each kind is hit somewhere but no
    admissible point hits both, every point is worth 0 and the most accurate one is taken
    (`choose_tail_share` takes the sum only when one kind is hit at no point of the curve)."""
    tail, cold = point[f"TailRecall@{k}"], point.get(f"ColdRecall@{k}", 0.0)
    return float(np.sqrt(tail * cold)) if objective == "balanced" else tail + cold


def floor_gap_se(point: np.ndarray, cf: np.ndarray, max_loss: float) -> float:
    """Standard error of mean(point - (1 - max_loss) x cf), paired over the same users."""
    return paired_se(point - (1.0 - max_loss) * cf)


def most_accurate_weight(curve: list[dict[str, float]], k: int = TUNE_K) -> list[dict[str, float]]:
    """The points at the ranker weight whose list without quotas has the most validation Recall@k.

    The ranker weight is an accuracy setting, so it is chosen for accuracy; only the shares trade
    accuracy for long tail. Searching the long-tail value over every weight as well took, on noise,
    a weight that was less accurate on test (synthetic: w=32 over w=8, test Recall@20 under the floor).
    """
    plain = [c for c in curve if not c.get("tail_share", 0.0) and not c.get("cold_share", 0.0)]
    if not plain:
        return curve
    weight = max(plain, key=lambda c: c[f"Recall@{k}"]).get("ranker_weight")
    return [c for c in curve if c.get("ranker_weight") == weight]


def choose_tail_share(curve: list[dict[str, float]], cf_recall: float, max_loss: float, k: int = TUNE_K,
                      objective: str = "balanced", z: float = 0.0) -> dict[str, float]:
    """At the most accurate ranker weight (`most_accurate_weight`), the point with the most long-tail
    value (`long_tail_value`) whose Recall@k >= (1 - max_loss) x CF-only Recall@k, by `z` standard
    errors of that gap (a point's `floor_se`) when z > 0; ties go to the more accurate point."""
    curve = most_accurate_weight(curve, k)
    floor = (1.0 - max_loss) * cf_recall
    ok = [c for c in curve if c[f"Recall@{k}"] - z * c.get("floor_se", 0.0) >= floor]
    if not ok:  # nothing keeps recall: take the most accurate point
        return max(curve, key=lambda c: c[f"Recall@{k}"])
    if objective == "balanced" and not all(any(c.get(f"{kind}Recall@{k}", 0.0) > 0 for c in curve)
                                           for kind in ("Tail", "Cold")):
        # One kind is hit at no point of the curve (validation holds no cold item, or no tail item is ever
        # found): the geometric mean cannot rank the points by the other kind. A kind hit only below the
        # floor is not that case: there, long-tail slots cost more than the floor allows, so none are bought.
        objective = "sum"
    return max(ok, key=lambda c: (long_tail_value(c, objective, k), c[f"Recall@{k}"]))


def blend_settings(cfg: Config) -> list[BlendSetting]:
    """The operating points searched: every value the config leaves open (None) takes its eval grid."""
    b, e = cfg.blend, cfg.eval
    weights = (b.ranker_weight,) if b.ranker_weight is not None else e.ranker_weight_grid
    shares = (b.tail_share,) if b.tail_share is not None else e.tail_share_grid
    colds = (b.cold_share,) if b.cold_share is not None else e.cold_share_grid
    quotas = (b.quota_by,) if b.quota_by is not None else e.quota_by_grid
    return [BlendSetting(float(w), float(s), float(c), q) for w in weights for s in shares for c in colds
            for q in quotas if q == quotas[0] or s + c > 0]  # with no quota every spread is the same list


def operating_curve(parts: Sequence[tuple[Recommender, np.ndarray]], gen: CandidateGenerator, valid: pd.DataFrame,
                    cfg: Config) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(every blend setting with its validation metrics and floor_se, the floor source's metrics).

    `parts` pairs each Recommender with the users it lists (users its ranker never learned from); the
    metrics pool every part's users. The floor source is the most accurate single CF source on them (the
    CF mix, ALS alone or the item-item model alone): the tuned mix is chosen on other users and can trail
    one of its parts here.
    """
    models = parts[0][0].models
    settings = blend_settings(cfg)
    users = np.concatenate([u for _, u in parts])
    by_part = [rec.recommend_rows(u, TUNE_K, settings=settings) for rec, u in parts]
    lists = {st: np.concatenate([rows[st] for rows in by_part]) for st in settings}
    held = held_out(valid, pd.Index(users), pd.Index(models.item_ids))
    by_source = {name: (rows, evaluate(rows, held, models.item_segment, models.item_pop, ks=(TUNE_K,)))
                 for name, rows in cf_only_rows(models, gen, users, TUNE_K).items()}
    source = max(by_source, key=lambda n: (by_source[n][1][f"Recall@{TUNE_K}"], n == "cf"))
    cf_lists, cf_metrics = by_source[source]
    cf_metrics = {**cf_metrics, "source": source}
    cf_users = user_recall(cf_lists, held)
    curve = []
    for st in settings:
        m = evaluate(lists[st], held, models.item_segment, models.item_pop, ks=(TUNE_K,))
        curve.append({**st._asdict(), **{k: float(v) for k, v in m.items() if "@" in k},
                      "floor_se": floor_gap_se(user_recall(lists[st], held), cf_users, cfg.eval.max_recall_loss)})
    return curve, cf_metrics


def blend_record(chosen: dict[str, Any], cf_metrics: dict[str, float], curve: list[dict[str, Any]],
                 cfg: Config) -> dict[str, Any]:
    """What the rank stage stores as blend.json: the chosen point, the rule, and the curve it came from."""
    e = cfg.eval
    rule = (f"at the ranker weight with the most Recall@{TUNE_K} without quotas, the most long-tail value "
            f"({e.long_tail_objective}: {_OBJECTIVES[e.long_tail_objective]}) with "
            f"Recall@{TUNE_K} >= (1 - {e.max_recall_loss}) x the best single CF source ({cf_metrics.get('source', 'cf')})"
            + (f" + {e.recall_floor_z:g} paired standard errors" if e.recall_floor_z else ""))
    return {**{k: chosen[k] for k in BlendSetting._fields}, "chosen_on": "validation", "rule": rule,
            "validation": {k: v for k, v in chosen.items() if "@" in k},
            "cf_only": {k: float(v) for k, v in cf_metrics.items() if "@" in k},
            "floor_source": cf_metrics.get("source", "cf"), "curve": curve}


def train_ranker_and_choose_blend(bundle, vectors: np.ndarray, cfg: Config, out_dir: Path) -> dict[str, Any]:
    from ltray.rank.ranker import Ranker
    from ltray.rank.train import train_ctr

    fit_part, valid = temporal_holdout(bundle.train, cfg.data.test_fraction, cfg.data.min_user_interactions)
    seg = segment_code_array(bundle.item_ids, fit_part, cfg.data.head_share)
    models = CandidateModels.fit(fit_part, bundle.item_ids, vectors, seg, cfg)
    gen = CandidateGenerator(models, cfg)
    ctx = feature_context(models)
    users = gen.known_users(valid["user_id"])
    rng = np.random.default_rng(cfg.rank.seed)
    train_users, tune_users = ranker_halves(users, rng)
    log.info("rank: candidate models on %s interactions; ranker learns from %d users, tail share is chosen on "
             "%d others", f"{len(fit_part):,}", len(train_users), len(tune_users))

    def training_table(for_users: np.ndarray) -> pd.DataFrame:
        """Sampled, labelled candidates of `for_users`: their valid items are the positives."""
        with single_threaded():
            states = [gen.state(u) for u in for_users]
            cands = pd.concat([pd.DataFrame(c).assign(user_id=u) for u, c in
                               zip(for_users, gen.candidate_columns_many(states), strict=True)], ignore_index=True)
        pos = valid[valid["user_id"].isin(set(for_users))].copy()
        pos["item_idx"] = gen.item_rows(pos["item_id"].to_numpy())
        pos = pos[pos["item_idx"] >= 0][["user_id", "item_idx", "ts"]]
        seen = fit_part[fit_part["user_id"].isin(set(for_users))].copy()
        seen["item_idx"] = gen.item_rows(seen["item_id"].to_numpy())
        return sample_training_table(pos, cands, ctx, cfg.rank, rng, seen=seen[["user_id", "item_idx"]])

    storage = cfg.rank.storage_path or str(Path(out_dir).resolve().parent / "_train")
    texts = bundle.items["text"].tolist() if cfg.rank.text_tower != "frozen" else None  # catalog order

    def split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return time_validation_split(table, cfg.rank.validation_fraction,
                                     by="user_id" if cfg.rank.validation_per_user else None)

    def train(table: pd.DataFrame, into: Path, which: str, in_process: bool = False) -> dict[str, Any]:
        train_df, val_df = split(table)
        builder = FeatureBuilder(cfg.rank).fit(ctx, np.flatnonzero(models.item_pop > 0), table=train_df)
        metrics = train_ctr(train_df, val_df, ctx, builder, cfg.rank, into, storage_path=storage, item_texts=texts,
                            in_process=in_process)
        log.info("rank: %s, validation AUC %.3f after %s epochs (%s samples%s)", which, metrics["val_auc"],
                 metrics["epochs_run"], f"{metrics['n_train']:,}", ", in process" if in_process else "")
        return metrics

    def choose(parts: list[tuple[Path, np.ndarray]]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """The operating point, scored on each (ranker folder, users it never learned from) pair together."""
        curve, cf_metrics = operating_curve([(Recommender(models, Ranker.load(d), cfg), u) for d, u in parts],
                                            gen, valid, cfg)
        chosen = choose_tail_share(curve, cf_metrics[f"Recall@{TUNE_K}"], cfg.eval.max_recall_loss,
                                   objective=cfg.eval.long_tail_objective, z=cfg.eval.recall_floor_z)
        log.info("rank: ranker_weight %g, tail_share %.2f, cold_share %.2f, quotas by %s (validation "
                 "Recall@%d %.4f vs %s alone %.4f, TailRecall@%d %.4f)", chosen["ranker_weight"],
                 chosen["tail_share"], chosen["cold_share"], chosen["quota_by"], TUNE_K, chosen[f"Recall@{TUNE_K}"],
                 cf_metrics["source"], cf_metrics[f"Recall@{TUNE_K}"], TUNE_K, chosen[f"TailRecall@{TUNE_K}"])
        return chosen, cf_metrics, curve

    table = training_table(train_users)
    if cfg.rank.refit_on_all:
        # Cross-fitting: each half's ranker lists the other half, so the point is chosen on every validation
        # user (half the variance of one half) and never on users its ranker saw. The ranker kept learns from
        # every validation user (twice the labels, less seed spread), with the same settings, on Ray Train.
        # The choice's rankers are thrown away, so they train here, with the same loop, while the kept one's
        # workers start (Train's start-up is most of a small training's time).
        log.info("rank: the kept ranker learns from all %d users", len(users))
        tune_table = training_table(tune_users)
        table_all = pd.concat([table, tune_table], ignore_index=True)
        parts = [(Path(out_dir) / "_choice_a", tune_users), (Path(out_dir) / "_choice_b", train_users)]
        try:
            split(tune_table)
        except ValueError:  # data.checks only promises that the first half can train a ranker
            log.warning("rank: the second half of the validation users is too small to train a ranker of its "
                        "own; the operating point is chosen on it alone, with the first half's ranker")
            parts = parts[:1]
        tables = [(table, "first half"), (tune_table, "second half")][:len(parts)]
        with ThreadPoolExecutor(1, thread_name_prefix="ltray-kept-ranker") as pool:
            kept = pool.submit(train, table_all, Path(out_dir), "kept ranker")
            for (d, _), (t, which) in zip(parts, tables, strict=True):
                train(t, d, f"choice ranker, {which}", in_process=True)
            chosen, cf_metrics, curve = choose(parts)
            metrics = kept.result()
        for d, _ in parts:
            shutil.rmtree(d)
    else:
        metrics = train(table, Path(out_dir), "ranker")
        chosen, cf_metrics, curve = choose([(Path(out_dir), tune_users)])
    blend = blend_record(chosen, cf_metrics, curve, cfg)
    return {"blend": blend, "metrics": {k: v for k, v in metrics.items() if k != "history"}}
