"""ltray's own CF values, chosen on validation the way the baselines' are (``ltray.validation``).

Three steps, one time budget (`cf.tune_budget_s`):
1. ALS: a coordinate search over `cf.tune_grid` (weighting, confidence alpha, regularization, factors)
   from the configured point;
2. the item-item model: each kind that applies (RP3beta always, EASE up to `cf.item.ease_max_items`
   trained items) searched over its own grid, the best kind kept;
3. the mix of the two z-scores (`cf.mix_grid`): 0 is ALS alone, 1 the item-item model alone, so
   the CF score is never worse on validation than the better single source.
Test is never looked at. What was tried and chosen is returned for the manifest and the report.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from ltray.cf.als import ALSRecall
from ltray.cf.itemitem import ItemItemRecall
from ltray.cf.scores import CFScorer
from ltray.config import CFConfig, Config, ItemItemConfig
from ltray.validation import TUNE_K, ValidationSplit, coordinate_search, one_se_largest

log = logging.getLogger(__name__)


def item_kinds(cfg: CFConfig, n_trained_items: int) -> list[str]:
    """The item-item kinds searched: every kind of the grid that applies to this catalog."""
    return [k for k in cfg.item.tune_grid if k != "ease" or n_trained_items <= cfg.item.ease_max_items]


def tune_cf(train: pd.DataFrame, item_ids: np.ndarray, cfg: Config) -> tuple[CFConfig, dict[str, Any]]:
    """(the chosen CFConfig, a record of the search: trials per step and the validation scores)."""
    c = cfg.cf
    if not c.tune:
        return c.model_copy(update={"mix": 0.0 if c.mix is None else c.mix}), {}
    t0 = time.monotonic()
    deadline = t0 + c.tune_budget_s
    split = ValidationSplit.carve(train, item_ids, cfg.data, c.tune_max_users, c.seed)
    seen = split.seen()
    histories = split.histories()
    n_trained = int((np.bincount(split.item_rows, minlength=split.n_items) > 0).sum())

    def fit_als(point: dict[str, Any]) -> ALSRecall:
        return ALSRecall(CFConfig.model_validate({**c.model_dump(), **point})).fit(
            split.user_rows, split.item_rows, split.weights, n_users=split.n_users, n_items=split.n_items)

    def als_score(point: dict[str, Any]) -> float:
        als = fit_als(point)
        ids, _ = als.recommend(split.eval_rows, TUNE_K)
        return split.recall(_pad(ids, TUNE_K))

    start = {k: getattr(c, k) for k in c.tune_grid}
    als_point, als_recall, als_trials = coordinate_search(c.tune_grid, start, als_score, c.tune_rounds, deadline,
                                                          "ALS")
    record: dict[str, Any] = {"als": {"chosen": als_point, f"Recall@{TUNE_K}": als_recall, "trials": als_trials}}

    def item_recalls(kind: str):
        def recalls(point: dict[str, Any]) -> np.ndarray:
            model = ItemItemRecall(ItemItemConfig.model_validate({**c.item.model_dump(), "kind": kind, **point}))
            ids, _ = model.fit(seen).recommend(histories, TUNE_K, exclude=histories)
            return split.user_recalls(_pad_lists(ids, TUNE_K))
        return recalls

    item_best: tuple[dict[str, Any], float] | None = None
    record["item"] = {}
    for kind in item_kinds(c, n_trained):
        grid = c.item.tune_grid.get(kind, {})
        start = {k: getattr(c.item, k) for k in grid}
        if kind == "ease" and set(grid) == {"l2"}:
            # EASE's one value is a ridge penalty: on a near-tie the stronger one (synthetic: l2 20 led 200
            # by 0.0008 on validation, and the CF with l2 20 trailed by 0.0065 on test).
            point, score, trials = one_se_largest("l2", grid["l2"], item_recalls(kind))
        else:
            point, score, trials = coordinate_search(grid, start, lambda p, f=item_recalls(kind): float(f(p).mean()),
                                                     1, deadline, kind)
        record["item"][kind] = {"chosen": point, f"Recall@{TUNE_K}": score, "trials": trials}
        if item_best is None or score > item_best[1]:
            item_best = ({"kind": kind, **point}, score)
    item_cfg = c.item.model_copy(update=item_best[0]) if item_best else c.item.model_copy(update={"kind": "none"})

    mix = c.mix
    if mix is None:
        als = fit_als(als_point)
        item = ItemItemRecall(item_cfg).fit(seen) if item_cfg.kind != "none" else None
        factors = als.user_factors[split.eval_rows]
        by_mix = {}
        for m in (c.mix_grid if item is not None else (0.0,)):
            lists = CFScorer(als, item, m).recommend(factors, histories, TUNE_K, exclude=histories)
            by_mix[float(m)] = split.recall(lists)
        mix = max(by_mix, key=lambda m: (by_mix[m], -abs(m - 0.5)))  # ties: the more even mix
        record["mix"] = {"chosen": mix, f"Recall@{TUNE_K}": by_mix}
    chosen = CFConfig.model_validate({**c.model_dump(), **als_point, "item": item_cfg.model_dump(), "mix": mix})
    record["seconds"] = round(time.monotonic() - t0, 1)
    record["validation_users"] = len(split.eval_rows)
    # DEBUG: the cf stage's own line says the same (describe_choice).
    log.debug("cf: ALS %s, item-item %s, mix %.2f chosen on validation (%d users, %.0f s)", als_point,
             item_best[0] if item_best else "none", mix, len(split.eval_rows), record["seconds"])
    return chosen, record


def chosen_params(cf: CFConfig) -> dict[str, Any]:
    """What the cf stage records as chosen: every tunable ALS field, the item-item section and the mix."""
    return {**{k: getattr(cf, k) for k in cf.tune_grid}, "item": cf.item.model_dump(), "mix": cf.mix}


def describe_choice(cf: CFConfig, search: dict[str, Any]) -> str:
    """One line: what the search chose and its validation recall."""
    als = ", ".join(f"{k}={getattr(cf, k)}" for k in search["als"]["chosen"])
    item = cf.item.kind
    if item != "none":
        item += " (" + ", ".join(f"{k}={getattr(cf.item, k)}" for k in cf.item.tune_grid.get(item, {})) + ")"
    recall = max(search["mix"][f"Recall@{TUNE_K}"].values()) if "mix" in search else search["als"][f"Recall@{TUNE_K}"]
    return (f"ALS {als}; item-item {item}; mix {cf.mix:g}: validation Recall@{TUNE_K} {recall:.4f} "
            f"({search['validation_users']} users, {search['seconds']:.0f}s)")


def _pad(ids: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(ids), k), -1, np.int64)
    out[:, : ids.shape[1]] = ids
    return out


def _pad_lists(lists: list[np.ndarray], k: int) -> np.ndarray:
    out = np.full((len(lists), k), -1, np.int64)
    for r, ids in enumerate(lists):
        out[r, : len(ids)] = ids[:k]
    return out


def with_cf(cfg: Config, cf_params: dict[str, Any] | None) -> Config:
    """cfg with the chosen cf values (as stored in the cf stage's info) in place."""
    if not cf_params:
        return cfg
    return cfg.model_copy(update={"cf": CFConfig.model_validate({**cfg.cf.model_dump(), **cf_params})})


__all__ = ["chosen_params", "describe_choice", "item_kinds", "tune_cf", "with_cf"]
