"""One validation protocol for everything ltray chooses from data.

Train is split per user by time (the protocol's own holdout rule, ``temporal_holdout``) into
``fit`` and ``valid``; a setting is fitted on ``fit`` and scored by Recall@TUNE_K of full-catalog
lists on ``valid``. CF tuning, the operating point and the baselines all use this split, so they
are chosen the same way, and test is never looked at.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ltray.config import DataConfig
from ltray.data import temporal_holdout

log = logging.getLogger(__name__)

TUNE_K = 20


def grid_points(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    """Every combination of a {field: values} grid, in itertools.product order."""
    keys = list(grid)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]


def user_recall(lists: np.ndarray, held: dict[int, np.ndarray], k: int = TUNE_K) -> np.ndarray:
    """Recall@k of each list position in `held` (sorted), as `evaluate` averages it."""
    pos = np.array(sorted(held), np.int64)
    counts = np.array([len(held[p]) for p in pos], np.int64)
    user = np.repeat(np.arange(len(pos)), counts)
    item = np.concatenate([held[p] for p in pos]) if len(pos) else np.zeros(0, np.int64)
    top = lists[pos, :k]
    width = int(max(top.max(initial=-1), item.max(initial=-1))) + 2  # (user, item + 1) as one key; -1 pads
    listed = (np.arange(len(pos))[:, None] * width + top + 1)[top >= 0]
    hits = np.isin(user * width + item + 1, listed)
    return np.bincount(user, weights=hits, minlength=len(pos)) / np.maximum(counts, 1)


def held_out(interactions: pd.DataFrame, user_index: pd.Index, item_index: pd.Index, strict: bool = False
             ) -> dict[int, np.ndarray]:
    """{position in user_index: its held-out item rows, sorted and unique}: what `evaluate` scores lists
    against. Rows whose user or item is outside the indexes are dropped, or with `strict` refused."""
    u = user_index.get_indexer(interactions["user_id"].to_numpy().astype(str))
    i = item_index.get_indexer(interactions["item_id"].to_numpy().astype(str))
    ok = (u >= 0) & (i >= 0)
    if strict and not ok.all():
        raise ValueError("held-out interactions hold user or item ids outside the given indexes")
    df = pd.DataFrame({"u": u[ok], "i": i[ok]})
    return {int(k): np.unique(g.to_numpy()) for k, g in df.groupby("u")["i"]}


def ranker_halves(users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The validation users split in two, each half sorted: the ranker that chooses the operating point
    learns from the first and the point is chosen on the second, so no choice is scored on what its
    ranker saw."""
    users = np.sort(np.asarray(users))
    users = users[rng.permutation(len(users))]
    half = len(users) // 2
    return np.sort(users[:half]), np.sort(users[half:])


@dataclass
class ValidationSplit:
    """``fit`` / ``valid`` carved from train, as item rows of the catalog and user rows of ``fit``."""

    fit: pd.DataFrame
    valid: pd.DataFrame
    user_ids: np.ndarray          # users of `fit`, in row order
    user_rows: np.ndarray         # per `fit` interaction
    item_rows: np.ndarray
    weights: np.ndarray
    n_items: int
    eval_rows: np.ndarray         # user rows whose lists are scored (a seeded sample when there are many)
    held: dict[int, np.ndarray]   # position in eval_rows -> validation item rows

    @classmethod
    def carve(cls, train: pd.DataFrame, item_ids: np.ndarray, data: DataConfig, max_users: int | None = None,
              seed: int = 0) -> ValidationSplit:
        fit_part, valid = temporal_holdout(train, data.test_fraction, data.min_user_interactions)
        item_index = pd.Index(np.asarray(item_ids).astype(str))
        users, user_rows = np.unique(fit_part["user_id"].to_numpy().astype(str), return_inverse=True)
        item_rows = item_index.get_indexer(fit_part["item_id"].to_numpy().astype(str))
        u = pd.Index(users).get_indexer(valid["user_id"].to_numpy().astype(str))
        i = item_index.get_indexer(valid["item_id"].to_numpy().astype(str))
        eval_rows = np.unique(u[(u >= 0) & (i >= 0)])
        if max_users is not None and len(eval_rows) > max_users:
            eval_rows = np.sort(np.random.default_rng(seed).choice(eval_rows, max_users, replace=False))
        held = held_out(valid, pd.Index(users[eval_rows]), item_index)
        return cls(fit_part, valid, users, user_rows, item_rows, fit_part["weight"].to_numpy(np.float32),
                   len(item_index), eval_rows, held)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def seen(self) -> sp.csr_matrix:
        """Users x items of `fit` (summed weights; zero weights kept as stored entries)."""
        m = sp.csr_matrix((self.weights, (self.user_rows, self.item_rows)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        return m

    def histories(self) -> list[np.ndarray]:
        """The `fit` item rows of each scored user."""
        s = self.seen()
        return [s.indices[s.indptr[r]:s.indptr[r + 1]].astype(np.int64) for r in self.eval_rows]

    def recall(self, lists: np.ndarray, k: int = TUNE_K) -> float:
        """Mean Recall@k of lists (one row per eval_rows entry) on the validation items."""
        r = self.user_recalls(lists, k)
        return float(r.mean()) if len(r) else 0.0

    def user_recalls(self, lists: np.ndarray, k: int = TUNE_K) -> np.ndarray:
        """Recall@k of each scored user (the paired scores `one_se_largest` compares)."""
        return user_recall(lists, self.held, k)


def grid_search(grid: Mapping[str, list], score: Callable[[dict[str, Any]], float], metric: str = f"Recall@{TUNE_K}"
                ) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Best point of the whole `grid` by `score` (the first best wins ties). Returns (best, its score,
    trials: each point with its score under `metric` and fit_s)."""
    best: tuple[dict[str, Any], float] | None = None
    trials: list[dict[str, Any]] = []
    for point in grid_points(grid):
        s = _timed(score, point, metric, trials)
        if best is None or s > best[1]:
            best = (dict(point), s)
    if best is None:
        raise ValueError("empty grid")
    return best[0], best[1], trials


def _timed(score: Callable[[dict[str, Any]], float], point: dict[str, Any], metric: str,
           trials: list[dict[str, Any]]) -> float:
    t = time.perf_counter()
    s = score(point)
    trials.append({**point, metric: s, "fit_s": round(time.perf_counter() - t, 3)})
    return s


def paired_se(d: np.ndarray) -> float:
    """Standard error of the mean of per-user differences `d` (0 for fewer than two users)."""
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def one_se_largest(name: str, values: list[float], score: Callable[[dict[str, Any]], np.ndarray],
                   metric: str = f"Recall@{TUNE_K}") -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """The one-standard-error rule for a penalty: every value is scored per user, and the largest value whose
    mean is within one standard error (of the per-user difference) of the best's is taken. A near-tie goes to
    the stronger penalty, which the validation users cannot tell apart and which generalises more safely.
    Returns ({name: value}, its mean score, trials)."""
    trials: list[dict[str, Any]] = []
    scores: dict[float, np.ndarray] = {}
    for v in values:
        t = time.perf_counter()
        scores[v] = np.asarray(score({name: v}), np.float64)
        trials.append({name: v, metric: float(scores[v].mean()), "fit_s": round(time.perf_counter() - t, 3)})
    best = max(scores, key=lambda v: scores[v].mean())

    def within(v) -> bool:
        d = scores[best] - scores[v]
        return d.mean() <= paired_se(d)

    chosen = max(v for v in values if within(v))
    return {name: chosen}, float(scores[chosen].mean()), trials


def coordinate_search(grid: Mapping[str, list], start: dict[str, Any], score: Callable[[dict[str, Any]], float],
                      rounds: int = 1, deadline: float | None = None, label: str = "",
                      metric: str = f"Recall@{TUNE_K}") -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Best point of `grid` by `score`, one field at a time from `start` (the others held at their best so
    far), for `rounds` passes or until `deadline` (time.monotonic()). Each point is scored once; the first
    best wins ties, so `start` is kept unless something beats it. Returns (best, its score, trials)."""
    seen: dict[tuple, float] = {}
    trials: list[dict[str, Any]] = []

    def run(point: dict[str, Any]) -> float:
        key = tuple(sorted((k, repr(v)) for k, v in point.items()))
        if key not in seen:
            seen[key] = _timed(score, point, metric, trials)
        return seen[key]

    best = {k: start[k] for k in grid} | {k: v for k, v in start.items() if k not in grid}
    best_score = run(best)
    for _ in range(rounds):
        improved = False
        for name, values in grid.items():
            for v in values:
                if deadline is not None and time.monotonic() > deadline:
                    log.info("%s search stopped at its time budget after %d points", label or "grid", len(trials))
                    return best, best_score, trials
                s = run({**best, name: v})
                if s > best_score:
                    best, best_score, improved = {**best, name: v}, s, True
        if not improved:
            break
    return best, best_score, trials


__all__ = ["TUNE_K", "ValidationSplit", "coordinate_search", "grid_points", "grid_search", "held_out", "one_se_largest",
           "paired_se", "ranker_halves", "user_recall"]
