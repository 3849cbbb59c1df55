"""Full-ranking offline metrics: accuracy, head / tail / cold recall, and exposure of the catalog.

Conventions (one index space, see docs/architecture.md):
- items and users are integer rows; ``recs`` is int64 (n_lists, K) of item rows, -1 pads short lists;
- ``item_segment`` is int8 per catalog item: 0 head, 1 tail, 2 cold (``ltray.data.segments.Segment``);
- ``item_pop`` is the training interaction count per item.

"Long tail" in APLT counts tail AND cold items: both lie outside the head that covers
``head_share`` of training interactions, which is what Abdollahpouri et al.'s APLT measures.
Pure numpy, vectorised: MovieLens (610 users x 9,742 items) evaluates in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import scipy.sparse as sp

from ltray.data.segments import Segment


def to_csr(test, n_users: int, n_items: int) -> sp.csr_matrix:
    """A {user_row: item rows} dict or a sparse matrix -> binary CSR (n_users, n_items), no duplicates."""
    if sp.issparse(test):
        m = sp.csr_matrix(test, dtype=np.float32)
        if m.shape[1] != n_items:
            raise ValueError(f"test matrix has {m.shape[1]} item columns, catalog has {n_items}")
        if m.shape[0] < n_users:
            m = sp.vstack([m, sp.csr_matrix((n_users - m.shape[0], n_items), dtype=np.float32)]).tocsr()
        m.sum_duplicates()
        m.eliminate_zeros()
        m.data[:] = 1.0
        return m
    if not isinstance(test, Mapping):
        raise TypeError("test must be a dict {user_row: item rows} or a scipy sparse matrix")
    rows, cols = [], []
    for u, items in test.items():
        items = np.unique(np.asarray(items, dtype=np.int64))
        rows.append(np.full(len(items), int(u), dtype=np.int64))
        cols.append(items)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    if len(r) and (r.max() >= n_users or r.min() < 0):
        raise ValueError(f"test user row out of range [0, {n_users})")
    if len(c) and (c.max() >= n_items or c.min() < 0):
        raise ValueError(f"test item row out of range [0, {n_items})")
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))


def _check_recs(recs: np.ndarray, n_items: int) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.ndim != 2 or not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must be a 2-D integer array (n_lists, K), got {recs.dtype} {recs.shape}")
    recs = recs.astype(np.int64, copy=False)
    if recs.size and (recs.max() >= n_items or recs.min() < -1):
        raise ValueError(f"recs hold item rows outside [-1, {n_items})")
    # A repeated item would count its hit twice; padding (-1) may repeat.
    s = np.sort(recs, axis=1)
    if np.any((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)):
        raise ValueError("a recommendation list repeats an item")
    return recs


def _ideal_dcg(max_len: int) -> np.ndarray:
    """idcg[n] = DCG of n relevant items at the top (idcg[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, max_len + 2)))])


def gini(counts: np.ndarray) -> float:
    """Gini of non-negative counts: 0 = every item equally exposed, 1 - 1/n = one item gets all."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def exposure_counts(recs: np.ndarray, n_items: int, k: int | None = None) -> np.ndarray:
    """How often each catalog item appears in the top-k of the lists (padding ignored)."""
    r = np.asarray(recs, dtype=np.int64)[:, :k] if k else np.asarray(recs, dtype=np.int64)
    r = r[r >= 0]
    return np.bincount(r, minlength=n_items).astype(np.int64)


def evaluate(
    recs: np.ndarray,
    test,
    item_segment: np.ndarray,
    item_pop: np.ndarray,
    ks: Iterable[int] = (10, 20),
    user_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of recommendation lists against held-out items.

    recs: (n_lists, K) int64 item rows; list i belongs to user ``user_rows[i]`` (default: user i).
    test: {user_row: item rows} or a sparse (n_users, n_items) matrix of held-out items.
    Accuracy metrics average over the users with test items (each must have a list); segment
    recalls over the users with test items of that segment. List metrics (Coverage, APLT, Gini,
    AvgPop) describe every list in ``recs``. Returns {"Recall@10": ..., ..., "n_users": ...}.
    """
    item_segment = np.asarray(item_segment)
    item_pop = np.asarray(item_pop, dtype=np.float64)
    recs, truth, list_of, ks = _checked(recs, test, item_segment, item_pop, ks, user_rows)
    with_test = np.flatnonzero(np.diff(truth.indptr) > 0)
    out: dict[str, float] = {"n_users": float(len(with_test)), "n_lists": float(len(recs))}
    out.update(accuracy_metrics(recs[list_of[with_test]], truth, with_test, item_segment, ks))
    out.update(list_metrics(recs, item_segment, item_pop, ks))
    return out


def _checked(recs, test, item_segment: np.ndarray, item_pop: np.ndarray, ks: Iterable[int],
             user_rows: np.ndarray | None) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, list[int]]:
    """(recs, test as CSR, the list position of every user row (-1: none), sorted ks), or ValueError."""
    n_items = len(item_segment)
    if len(item_pop) != n_items:
        raise ValueError(f"item_pop has {len(item_pop)} items, item_segment {n_items}")
    recs = _check_recs(recs, n_items)
    n_lists, width = recs.shape
    user_rows = np.arange(n_lists) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    if len(user_rows) != n_lists:
        raise ValueError(f"{len(user_rows)} user_rows for {n_lists} lists")
    if len(np.unique(user_rows)) != n_lists:
        raise ValueError("user_rows repeat a user")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > width:
        raise ValueError(f"ks {ks} must lie in [1, {width}] (the width of recs)")
    n_users = int(max(user_rows.max(initial=-1) + 1, 0))
    if sp.issparse(test):
        n_users = max(n_users, test.shape[0])
    elif test:
        n_users = max(n_users, max(int(u) for u in test) + 1)
    truth = to_csr(test, n_users, n_items)
    with_test = np.flatnonzero(np.diff(truth.indptr) > 0)
    list_of = np.full(n_users, -1, dtype=np.int64)
    list_of[user_rows] = np.arange(n_lists)
    missing = with_test[list_of[with_test] < 0]
    if len(missing):
        raise ValueError(f"{len(missing)} users with test items have no list (e.g. user row {missing[0]})")
    return recs, truth, list_of, ks


def accuracy_metrics(lists: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, item_segment: np.ndarray,
                     ks: list[int]) -> dict[str, float]:
    """Recall, NDCG, HitRate and per-segment recall at each k: lists[i] is user users[i]'s (every one of
    them has test items in `truth`)."""
    n_users, n_items = truth.shape
    n_test = np.diff(truth.indptr)
    valid = lists >= 0
    # Hits by position: one sorted-key lookup for everything.
    entry_user = np.repeat(np.arange(n_users, dtype=np.int64), n_test)
    keys = truth.indices.astype(np.int64) + entry_user * n_items
    rec_keys = users[:, None].astype(np.int64) * n_items + np.maximum(lists, 0)
    hits = np.isin(rec_keys, keys) & valid
    nt = n_test[users].astype(np.float64)
    rec_seg = np.where(valid, item_segment[np.maximum(lists, 0)], -1)
    entry_seg = item_segment[truth.indices]  # test items per (user, segment)
    seg_counts = {s: np.bincount(entry_user[entry_seg == s], minlength=n_users)[users].astype(np.float64)
                  for s in Segment}
    idcg = _ideal_dcg(lists.shape[1])
    discount = 1.0 / np.log2(np.arange(2, lists.shape[1] + 2))
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(axis=1)
        out[f"Recall@{k}"] = _mean(n_hit / nt)
        out[f"NDCG@{k}"] = _mean((h * discount[:k]).sum(axis=1) / idcg[np.minimum(nt, k).astype(int)])
        out[f"HitRate@{k}"] = _mean((n_hit > 0).astype(np.float64))
        for s in Segment:
            has = seg_counts[s] > 0
            seg_hit = (h & (rec_seg[:, :k] == s)).sum(axis=1)
            out[f"{s.name.title()}Recall@{k}"] = _mean(seg_hit[has] / seg_counts[s][has])
    return out


def list_metrics(recs: np.ndarray, item_segment: np.ndarray, item_pop: np.ndarray, ks: list[int]
                 ) -> dict[str, float]:
    """Coverage, APLT, Gini and AvgPop of every list at each k (no test items needed)."""
    n_items = len(item_segment)
    all_valid = recs >= 0
    out: dict[str, float] = {}
    for k in ks:
        r = recs[:, :k]
        v = all_valid[:, :k]
        counts = exposure_counts(recs, n_items, k)
        out[f"Coverage@{k}"] = float(np.count_nonzero(counts) / n_items) if n_items else 0.0
        list_len = v.sum(axis=1)
        nonempty = list_len > 0
        long_tail = (item_segment[np.maximum(r, 0)] != Segment.HEAD) & v
        out[f"APLT@{k}"] = _mean(long_tail.sum(axis=1)[nonempty] / list_len[nonempty])
        out[f"Gini@{k}"] = gini(counts)
        pop_sum = np.where(v, item_pop[np.maximum(r, 0)], 0.0).sum(axis=1)
        out[f"AvgPop@{k}"] = _mean(pop_sum[nonempty] / list_len[nonempty])
    return out


def _mean(x: np.ndarray) -> float:
    """Mean over users; 0.0 when no user qualifies (e.g. no cold test items), so tables stay numeric."""
    return float(np.mean(x)) if len(x) else 0.0


def popularity_deciles(item_pop: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Bin of every item by training popularity: bin 0 = the most popular 1/n_bins of the catalog.

    Equal-size bins over the popularity rank; ties break by item row, so the bins are fixed.
    """
    pop = np.asarray(item_pop, dtype=np.float64)
    order = np.lexsort((np.arange(len(pop)), -pop))
    bins = np.empty(len(pop), dtype=np.int64)
    bins[order] = np.arange(len(pop)) * n_bins // max(len(pop), 1)
    return bins


def decile_exposure(
    recs: np.ndarray, item_pop: np.ndarray, k: int | None = None, n_bins: int = 10
) -> np.ndarray:
    """Share of all recommended slots (top-k) that falls in each popularity decile (sums to 1)."""
    counts = exposure_counts(recs, len(item_pop), k)
    per_bin = np.bincount(popularity_deciles(item_pop, n_bins), weights=counts, minlength=n_bins)
    total = per_bin.sum()
    return per_bin / total if total > 0 else per_bin


def lorenz_curve(recs: np.ndarray, n_items: int, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of exposure: x = share of items (least exposed first), y = their share of slots.

    Both start at 0 and end at 1; the diagonal is equal exposure. Gini = 1 - 2 * area under it.
    """
    counts = np.sort(exposure_counts(recs, n_items, k)).astype(np.float64)
    x = np.arange(n_items + 1) / max(n_items, 1)
    total = counts.sum()
    y = np.concatenate([[0.0], np.cumsum(counts) / total]) if total > 0 else x.copy()
    return x, y
