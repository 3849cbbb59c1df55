"""ltray's own ALS hyper-parameters, chosen on validation the way the baselines' are.

A per-user time split carved from train (the protocol's holdout rule) gives fit / valid;
each `cf.tune_grid` point is fitted on fit and scored by Recall@K on valid; the best point
wins (the first on ties). Test is never looked at.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ltray.cf.als import ALSRecall
from ltray.config import CFConfig, Config
from ltray.data import temporal_holdout
from ltray.data.segments import segment_code_array
from ltray.eval.baselines import grid_points
from ltray.eval.metrics import evaluate

TUNE_K = 20


def tune_cf(train: pd.DataFrame, item_ids: np.ndarray, cfg: Config) -> tuple[CFConfig, list[dict[str, Any]]]:
    """(the chosen CFConfig, one trial per grid point with its validation Recall@K)."""
    points = grid_points(cfg.cf.tune_grid)
    if not cfg.cf.tune or len(points) < 2:
        return _cf(cfg, points[0] if points and cfg.cf.tune else {}), []
    fit_part, valid = temporal_holdout(train, cfg.data.test_fraction, cfg.data.min_user_interactions)
    item_index = pd.Index(np.asarray(item_ids).astype(str))
    users, user_rows = np.unique(fit_part["user_id"].to_numpy().astype(str), return_inverse=True)
    item_rows = item_index.get_indexer(fit_part["item_id"].to_numpy().astype(str))
    weights = fit_part["weight"].to_numpy(np.float32)
    held: dict[int, list[int]] = {}
    u_pos = pd.Index(users).get_indexer(valid["user_id"].to_numpy().astype(str))
    v_rows = item_index.get_indexer(valid["item_id"].to_numpy().astype(str))
    for u, i in zip(u_pos, v_rows, strict=True):
        if u >= 0 and i >= 0:
            held.setdefault(int(u), []).append(int(i))
    eval_users = np.array(sorted(held), np.int64)
    truth = {r: np.asarray(held[u], np.int64) for r, u in enumerate(eval_users)}
    seg = segment_code_array(item_index, fit_part, cfg.data.head_share)
    pop = np.bincount(item_rows, minlength=len(item_index)).astype(np.float32)
    trials, best, best_score = [], points[0], -1.0
    for point in points:
        c = _cf(cfg, point)
        als = ALSRecall(c).fit(user_rows, item_rows, weights, n_users=len(users), n_items=len(item_index))
        ids, _ = als.recommend(eval_users, TUNE_K)
        recs = np.full((len(eval_users), TUNE_K), -1, np.int64)
        recs[:, : ids.shape[1]] = ids
        score = float(evaluate(recs, truth, seg, pop, ks=(TUNE_K,))[f"Recall@{TUNE_K}"])
        trials.append({**point, f"Recall@{TUNE_K}": score})
        if score > best_score:
            best, best_score = point, score
    return _cf(cfg, best), trials


def _cf(cfg: Config, point: dict[str, Any]) -> CFConfig:
    return CFConfig.model_validate({**cfg.cf.model_dump(), **point})  # validates the grid's values


def with_cf(cfg: Config, cf_params: dict[str, Any] | None) -> Config:
    """cfg with the chosen cf values (as stored in the cf stage's info) in place."""
    if not cf_params:
        return cfg
    return cfg.model_copy(update={"cf": _cf(cfg, cf_params)})


__all__ = ["tune_cf", "with_cf"]
