"""Item-item CF: one sparse item x item weight matrix W; a user's scores are their history row x W.

Two ways to make W, both standard and both strong on sparse data (Ferrari Dacrema et al., RecSys 2019):

- RP3beta (Paudel et al. 2017): a three-step random walk user -> item -> user -> item,
  W = (P_iu @ P_ui) ** alpha, each column divided by pop ** beta (beta > 0 lifts the tail).
- EASE (Steck, WWW 2019): the closed-form item x item ridge regression with a zero diagonal.
  An n x n inverse, so only for catalogs up to ``ease_max_items`` trained items.

Both keep the ``neighbours`` largest weights per item row, so W is sparse, scoring a user is a sparse
row x sparse matrix product, and the artifact is a plain CSR in an npz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ltray.config import ItemItemConfig

ITEM_ITEM_FILE = "itemitem.npz"
# Item rows per dense block while building W: a (block x n_items) float32 block stays under ~100 MB at 25k
# items, whatever the catalog's density.
_BLOCK_CELLS = 25_000_000
# Histories scored together when standardising scores: their (chunk x n_items) sparse product stays small.
_HISTORY_CHUNK = 256


def binary_history(seen: sp.csr_matrix) -> sp.csr_matrix:
    """Users x items, 1 wherever an interaction is stored (zero weights included: they were seen)."""
    m = sp.csr_matrix(seen, dtype=np.float32, copy=True)
    m.data[:] = 1.0
    return m


def _top_per_row(block: np.ndarray, k: int, row0: int) -> sp.csr_matrix:
    """Keep the k largest positive entries of each row of a dense block (its diagonal, row0 + r, excluded)."""
    n_rows, n_cols = block.shape
    block[np.arange(n_rows), row0 + np.arange(n_rows)] = 0.0
    k = min(k, n_cols)
    part = np.argpartition(-block, k - 1, axis=1)[:, :k] if k else np.zeros((n_rows, 0), np.int64)
    vals = np.take_along_axis(block, part, axis=1)
    keep = vals > 0
    rows = np.repeat(np.arange(n_rows), keep.sum(1))
    return sp.csr_matrix((vals[keep], (rows, part[keep])), shape=(n_rows, n_cols), dtype=np.float32)


def rp3beta_weights(x: sp.csr_matrix, alpha: float, beta: float, neighbours: int) -> sp.csr_matrix:
    """W for RP3beta from a binary users x items matrix, built a block of item rows at a time."""
    n_items = x.shape[1]
    p_ui = sp.csr_matrix(x / np.maximum(x.sum(axis=1), 1.0))          # user -> item
    xt = sp.csr_matrix(x.T)
    p_iu = sp.csr_matrix(xt / np.maximum(xt.sum(axis=1), 1.0))        # item -> user
    pop = np.asarray(x.sum(axis=0)).ravel()
    col_scale = np.where(pop > 0, np.power(np.maximum(pop, 1.0), -beta), 0.0).astype(np.float32)
    step = max(1, _BLOCK_CELLS // max(n_items, 1))
    blocks = []
    for lo in range(0, n_items, step):
        block = (p_iu[lo:lo + step] @ p_ui).toarray().astype(np.float32)
        if alpha != 1.0:
            np.power(block, alpha, out=block)
        block *= col_scale[None, :]
        blocks.append(_top_per_row(block, neighbours, lo))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, 0), dtype=np.float32)


def ease_weights(x: sp.csr_matrix, l2: float, neighbours: int) -> sp.csr_matrix:
    """W for EASE over the items that have interactions (the others can only get zero weights)."""
    n_items = x.shape[1]
    live = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
    xl = x[:, live]
    # float32 is enough: the ridge term keeps the Gram matrix well conditioned, and it halves the n^3 time.
    gram = (xl.T @ xl).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    del p, gram
    w = _top_per_row(b, neighbours, 0)
    # Back to catalog rows and columns.
    w = w.tocoo()
    return sp.csr_matrix((w.data, (live[w.row], live[w.col])), shape=(n_items, n_items), dtype=np.float32)


class ItemItemRecall:
    """``fit(seen)`` then ``recommend(histories, n)`` / ``z_scores(history, items)``; ``save`` / ``load``.

    ``seen`` is the users x items matrix of training interactions; histories are item-row arrays, so a
    session user (items only) is scored exactly like a known one: no fold-in is needed.
    """

    def __init__(self, cfg: ItemItemConfig | None = None):
        self.cfg = cfg or ItemItemConfig()
        self.weights: sp.csr_matrix | None = None  # items x items

    @property
    def n_items(self) -> int:
        return 0 if self.weights is None else self.weights.shape[0]

    def fit(self, seen: sp.csr_matrix) -> ItemItemRecall:
        x = binary_history(seen)
        c = self.cfg
        if c.kind == "ease":
            self.weights = ease_weights(x, c.l2, c.neighbours)
        elif c.kind == "rp3beta":
            self.weights = rp3beta_weights(x, c.alpha, c.beta, c.neighbours)
        else:
            raise ValueError(f"item-item kind {c.kind!r} is not a model (choose rp3beta or ease)")
        return self

    def _check_fitted(self) -> None:
        if self.weights is None:
            raise RuntimeError("ItemItemRecall is not fitted; call fit() or ItemItemRecall.load()")

    def history_matrix(self, histories: list[np.ndarray]) -> sp.csr_matrix:
        lens = [len(h) for h in histories]
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        idx = np.concatenate([np.asarray(h, np.int64) for h in histories]) if sum(lens) else np.zeros(0, np.int64)
        m = sp.csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(histories), self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def scores(self, histories: list[np.ndarray]) -> sp.csr_matrix:
        """(m, n_items) sparse scores: each history's row x W."""
        self._check_fitted()
        return sp.csr_matrix(self.history_matrix(histories) @ self.weights)

    def score_stats(self, s: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Per row: mean and standard deviation of the scores over the whole catalog (zeros included)."""
        n = max(self.n_items, 1)
        total = np.asarray(s.sum(axis=1), np.float64).ravel()
        sq = np.asarray(s.multiply(s).sum(axis=1), np.float64).ravel()
        mean = total / n
        return mean, np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))

    def z_scores(self, histories: list[np.ndarray], item_idx: np.ndarray, row_of: np.ndarray | None = None
                 ) -> np.ndarray:
        """Each score standardised over the catalog for its user (comparable with the ALS z-score).

        ``item_idx`` (r,) with ``row_of`` (r,) naming each entry's history; without ``row_of`` every item is
        scored for the one history given. Histories are scored a chunk at a time, so memory stays bounded."""
        items = np.asarray(item_idx, np.int64)
        rows = np.zeros(len(items), np.int64) if row_of is None else np.asarray(row_of, np.int64)
        out = np.zeros(len(items), np.float32)
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(0, len(histories) + _HISTORY_CHUNK, _HISTORY_CHUNK))
        for c, lo in enumerate(range(0, len(histories), _HISTORY_CHUNK)):
            sel = order[bounds[c]:bounds[c + 1]]
            if not len(sel):
                continue
            s = self.scores(histories[lo:lo + _HISTORY_CHUNK])
            mean, std = self.score_stats(s)
            r = rows[sel] - lo
            raw = np.asarray(s[r, items[sel]], np.float64).ravel()
            z = (raw - mean[r]) / (std[r] + 1e-12)
            out[sel] = np.where(std[r] > 0, z, 0.0)
        return out

    def recommend(self, histories: list[np.ndarray], n: int, exclude: list[np.ndarray] | None = None
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per history: the n best items with a positive score (z-scores, best first), `exclude` left out."""
        s = self.scores(histories)
        mean, std = self.score_stats(s)
        ids_out, sc_out = [], []
        for r in range(s.shape[0]):
            lo, hi = s.indptr[r], s.indptr[r + 1]
            ids, vals = s.indices[lo:hi].astype(np.int64), s.data[lo:hi]
            keep = vals > 0
            if exclude is not None:
                keep &= ~np.isin(ids, exclude[r])
            ids, vals = ids[keep], vals[keep]
            top = np.lexsort((ids, -vals))[:n]  # stable: equal scores by item row
            ids_out.append(ids[top])
            sc_out.append(((vals[top] - mean[r]) / (std[r] + 1e-12)).astype(np.float32))
        return ids_out, sc_out

    def save(self, directory: str | Path) -> None:
        self._check_fitted()
        w = self.weights
        np.savez(Path(directory) / ITEM_ITEM_FILE, data=w.data, indices=w.indices, indptr=w.indptr,
                 shape=np.asarray(w.shape, np.int64), config_json=np.array(self.cfg.model_dump_json()))

    @classmethod
    def load(cls, directory: str | Path) -> ItemItemRecall | None:
        """None when the run has no item-item model (cf.item.kind=none)."""
        path = Path(directory) / ITEM_ITEM_FILE
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            obj = cls(ItemItemConfig.model_validate(json.loads(str(z["config_json"]))))
            obj.weights = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        return obj


__all__ = ["ItemItemRecall", "binary_history", "ease_weights", "rp3beta_weights"]
