"""User text profiles from the vectors of their recent positive items, and multi-interest queries.

Inputs are interaction arrays in the shared integer spaces (user rows, catalog item rows, ts in
seconds). The caller passes positive interactions only, or ``weights`` so that rows with weight <= 0
are dropped.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

DAY_SECONDS = 86_400.0


def _recent(user_rows, item_rows, ts, n: int, weights=None):
    """Each user's last n distinct items, most recent first: (users, items, ts, rank) sorted by user."""
    u = np.asarray(user_rows, np.int64)
    i = np.asarray(item_rows, np.int64)
    t = np.asarray(ts, np.int64)
    if not (len(u) == len(i) == len(t)):
        raise ValueError("user_rows, item_rows and ts must have the same length")
    if weights is not None:
        keep = np.asarray(weights) > 0
        u, i, t = u[keep], i[keep], t[keep]
    pos = np.arange(len(u))
    # user ascending, then newest first; equal timestamps: the later row counts as newer
    order = np.lexsort((-pos, -t, u))
    u, i, t = u[order], i[order], t[order]
    # a repeated item counts once, at its latest interaction
    _, first = np.unique(u * (int(i.max(initial=0)) + 1) + i, return_index=True)
    keep = np.zeros(len(u), bool)
    keep[first] = True
    u, i, t = u[keep], i[keep], t[keep]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    rank = np.arange(len(u)) - group_start
    sel = rank < n
    return u[sel], i[sel], t[sel], rank[sel]


def recent_items_of(user_rows, item_rows, ts, n: int, n_users: int | None = None,
                    weights=None) -> list[np.ndarray]:
    """For every user row, its last ``n`` distinct items (catalog rows), most recent first."""
    u, i, _, _ = _recent(user_rows, item_rows, ts, n, weights)
    n_users = int(n_users if n_users is not None else (u.max() + 1 if len(u) else 0))
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [i[bounds[r]:bounds[r + 1]] for r in range(n_users)]


def user_profiles(user_rows, item_rows, ts, item_vectors: np.ndarray, half_life_days: float,
                  recent_items: int, n_users: int | None = None, weights=None) -> np.ndarray:
    """(n_users, d) float32: L2-normalised recency-weighted mean of each user's recent item vectors.

    An item seen ``a`` days before the user's latest interaction weighs ``0.5 ** (a / half_life_days)``;
    only the last ``recent_items`` distinct items count. Users without items get a zero vector.
    """
    if half_life_days <= 0:
        raise ValueError("half_life_days must be > 0")
    x = np.asarray(item_vectors, np.float32)
    u, i, t, rank = _recent(user_rows, item_rows, ts, recent_items, weights)
    n_users = int(n_users if n_users is not None else (u.max() + 1 if len(u) else 0))
    if len(u) and u.max() >= n_users:
        raise ValueError(f"user rows must lie in [0, {n_users})")
    latest = t[rank == 0]  # rank 0 is each user's newest item
    latest_of = np.zeros(n_users, np.int64)
    latest_of[u[rank == 0]] = latest
    age_days = (latest_of[u] - t) / DAY_SECONDS
    w = np.power(0.5, age_days / half_life_days)
    weights_m = sp.csr_matrix((w, (u, i)), shape=(n_users, len(x)))
    prof = np.asarray(weights_m @ x, dtype=np.float64)
    norms = np.linalg.norm(prof, axis=1, keepdims=True)
    # the mean's denominator cancels in the normalisation; zero rows stay zero
    return (prof / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def multi_interest_search(index, item_vectors: np.ndarray, recent_item_rows, k: int,
                          history=None) -> tuple[np.ndarray, np.ndarray]:
    """Each recent item queries ``index`` on its own; merged by max score per item, best first.

    Items in ``history`` (default: the query items) are dropped. Returns ``(ids (<=k,), scores)``;
    index ids are catalog rows.
    """
    q_rows = np.atleast_1d(np.asarray(recent_item_rows, np.int64))
    hist = q_rows if history is None else np.atleast_1d(np.asarray(history, np.int64))
    if len(q_rows) == 0 or k <= 0 or index.ntotal == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # ask for enough that dropping the history cannot leave fewer than k
    scores, ids = index.search(np.asarray(item_vectors, np.float32)[q_rows], k + len(np.unique(hist)))
    ids, scores = ids.ravel(), scores.ravel()
    keep = ~np.isin(ids, hist)
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))  # best first; for a repeated id the first one is its max
    ids, scores = ids[order], scores[order]
    _, first = np.unique(ids, return_index=True)
    first = np.sort(first)[:k]
    return ids[first], scores[first].astype(np.float32)
