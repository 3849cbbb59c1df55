"""Row-wise top-k over dense score blocks: the one rule every full-catalog list follows."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | list[np.ndarray] | None = None) -> np.ndarray:
    """Row-wise top-k item rows of a dense score block, best first; -inf scores and excluded items
    never appear (their slots are -1). Equal scores come out by item row. ``exclude``: a CSR of the
    block's shape or one item-row array per row."""
    s = np.array(scores, dtype=np.float32, copy=True)
    n, n_items = s.shape
    if exclude is not None:
        if sp.issparse(exclude):
            rows, cols = np.repeat(np.arange(n), np.diff(exclude.indptr)), exclude.indices
        else:
            rows = np.repeat(np.arange(n), [len(e) for e in exclude])
            cols = np.concatenate([np.asarray(e, np.int64) for e in exclude]) if len(rows) else np.zeros(0, np.int64)
        s[rows, cols] = -np.inf
    kk = min(k, n_items)
    out = np.full((n, k), -1, dtype=np.int64)
    if kk == 0 or n == 0:
        return out
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    idx[~np.isfinite(vals)] = -1
    out[:, :kk] = idx
    return out
