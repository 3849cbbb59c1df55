"""Item-item CF: one sparse item x item weight matrix W; a user's scores are their history row x W.

Two ways to make W, both standard and both strong on sparse data (Ferrari Dacrema et al., RecSys 2019):

- RP3beta (Paudel et al. 2017): a three-step random walk user -> item -> user -> item,
  W = (P_iu @ P_ui) ** alpha, each column divided by pop ** beta (beta > 0 lifts the tail).
- EASE (Steck, WWW 2019): the closed-form item x item ridge regression with a zero diagonal, by an
  n x n inverse (up to ``ease_max_items`` trained items) or, with fewer users than items, by Woodbury.

Both keep the ``neighbours`` largest weights per item row, so W is sparse, scoring a user is a sparse
row x sparse matrix product, and the artifact is a plain CSR in an npz.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp
import torch

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


def top_per_row(block: np.ndarray, k: int) -> sp.csr_matrix:
    """The k largest positive entries of each row of a dense block, as a CSR of the block's shape."""
    n, m = block.shape
    kk = min(k, m)
    if kk == 0 or n == 0:
        return sp.csr_matrix((n, m), dtype=np.float32)
    # torch.topk, not np.argpartition: on rows as wide as the catalog its partial sort is ~10x faster,
    # and this selection is most of an item-item fit.
    vals_t, cols_t = torch.topk(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)), kk, dim=1,
                                sorted=False)
    vals, cols = vals_t.numpy(), cols_t.numpy()
    keep = vals > 0
    rows = np.repeat(np.arange(n), kk).reshape(n, kk)
    out = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, m), dtype=np.float32)
    out.sort_indices()
    return out


def _block_rows(n_cols: int) -> int:
    return max(1, _BLOCK_CELLS // max(n_cols, 1))


def rp3beta_weights(x: sp.csr_matrix, alpha: float, beta: float, neighbours: int) -> sp.csr_matrix:
    """W for RP3beta from a binary users x items matrix, built a block of item rows at a time.

    Each transition probability is raised to alpha (Cooper et al.'s P^3_alpha, as the RecSys 2019
    reference code does: on P_ui and P_iu, not on their product); column j is divided by pop_j**beta."""
    n_items = x.shape[1]
    deg = np.maximum(x.getnnz(axis=1), 1).astype(np.float64)
    pop = x.getnnz(axis=0).astype(np.float64)
    p_ui = sp.csr_matrix(x, dtype=np.float32, copy=True)
    p_ui.data = (deg ** -alpha)[np.repeat(np.arange(x.shape[0]), np.diff(p_ui.indptr))].astype(np.float32)
    p_iu = sp.csr_matrix(x.T, dtype=np.float32)
    p_iu.data = (np.maximum(pop, 1.0) ** -alpha)[np.repeat(np.arange(n_items), np.diff(p_iu.indptr))].astype(
        np.float32)
    discount = np.zeros(n_items, np.float32)
    discount[pop > 0] = pop[pop > 0] ** -beta  # an item nobody reached keeps 0 (its column is empty)
    step = _block_rows(n_items)
    blocks = []
    for lo in range(0, n_items, step):
        hi = min(lo + step, n_items)
        w = np.asarray((p_iu[lo:hi] @ p_ui).toarray(), dtype=np.float32)
        w *= discount[None, :]
        w[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        blocks.append(top_per_row(w, neighbours))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n_items), dtype=np.float32)


def spd_inverse(a: np.ndarray, block: int = 1024) -> np.ndarray:
    """The inverse of a symmetric positive-definite C-contiguous float matrix, computed in its memory
    by its Cholesky factor (LAPACK potrf + potri: n^3 flops, no second n x n buffer).

    LAPACK sees the C array as its (equal) transpose in Fortran order and fills one triangle; the
    other is mirrored in blocks of rows, so no n x n index or temporary is made.
    """
    if a.shape[0] == 0:
        return a
    f = a.T  # Fortran-ordered view of the same memory: a symmetric matrix is its own transpose
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (f,))
    c, info = potrf(f, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"potrf: the matrix is not positive definite (info {info})")
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed (info {info})")
    out = inv.T  # C order again: the upper triangle in Fortran order is the lower one here
    n = out.shape[0]
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        out[lo:hi, hi:] = out[hi:, lo:hi].T
        diag = out[lo:hi, lo:hi]
        upper = np.triu_indices(hi - lo, 1)
        diag[upper] = diag.T[upper]
    return out


@dataclass
class EaseSolution:
    """EASE's B = I - P diag(1/diag(P)), P = (X^T X + l2 I)^-1, over the active items, by one of two exact
    routes: "items" keeps B (n x n, a Cholesky inverse: n^3 flops); "users", when fewer users m have
    interactions than there are active items, keeps Z = L^-1 X with L L^T = X X^T + l2 I (Woodbury:
    P = (I - Z^T Z) / l2), so B_ij = z_i.z_j / (1 - |z_j|^2) off the diagonal: m^2 n flops, B never formed
    (MovieLens latest-small: 610 users, ~8k items, over 100x fewer flops)."""

    route: str
    b: np.ndarray | None = None    # items route
    z: np.ndarray | None = None    # users route: (m, n)
    zz: np.ndarray | None = None   # |z_j|^2
    d: np.ndarray | None = None    # 1 / (1 - |z_j|^2)

    @classmethod
    def solve(cls, x: sp.csr_matrix, l2: float, dtype=np.float32, route: str = "auto") -> EaseSolution:
        """x: binary users x active items. float32 by default (X^T X of a binary X is exact in it up to 2^24
        co-occurrences); the users route computes Z and |z|^2 in float64 (1 - |z|^2 cancels when l2 is
        small next to an item's popularity) and keeps Z in dtype."""
        n = x.shape[1]
        users = np.flatnonzero(x.getnnz(axis=1) > 0)
        if route == "auto":
            route = "users" if len(users) < n else "items"
        if route == "items":
            xt = x.T.tocsr()
            g = np.empty((n, n), dtype=dtype)
            step = 1024
            for lo in range(0, n, step):  # X^T X by rows: no sparse n x n intermediate
                g[lo:lo + step] = (xt[lo:lo + step] @ x).toarray()
            g[np.diag_indices(n)] += l2
            p = spd_inverse(g)
            diag = np.diag(p).copy()
            p /= -diag[None, :]  # B = -P_ij / P_jj off the diagonal...
            p[np.diag_indices(n)] = 0.0  # ...and 0 on it
            return cls(route, b=p)
        xs = x[users]
        k = (xs @ xs.T).toarray().astype(np.float64)
        k[np.diag_indices(len(users))] += l2
        z = scipy.linalg.solve_triangular(scipy.linalg.cholesky(k, lower=True), xs.toarray().astype(np.float64),
                                          lower=True)
        zz = np.einsum("ij,ij->j", z, z)
        return cls(route, z=z.astype(dtype), zz=zz.astype(dtype), d=(1.0 / (1.0 - zz)).astype(dtype))

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """B[lo:hi, :] as a dense block (zero diagonal)."""
        if self.route == "items":
            return np.array(self.b[lo:hi])
        block = (self.z[:, lo:hi].T @ self.z) * self.d[None, :]
        block[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        return block

    def scores(self, xu: sp.csr_matrix) -> np.ndarray:
        """x_u B for a binary block of user rows over the active items."""
        if self.route == "items":
            return np.asarray(xu @ self.b, dtype=np.float32)
        s = np.asarray(xu @ self.z.T, dtype=self.z.dtype) @ self.z
        s -= xu.multiply(self.zz[None, :]).toarray()  # B's zero diagonal
        return (s * self.d[None, :]).astype(np.float32)


def ease_weights(x: sp.csr_matrix, l2: float, neighbours: int) -> sp.csr_matrix:
    """W for EASE over the items that have interactions (the others can only get zero weights): B's
    `neighbours` largest weights per row, built a block of rows at a time."""
    n_items = x.shape[1]
    live = np.flatnonzero(x.getnnz(axis=0) > 0)
    sol = EaseSolution.solve(sp.csr_matrix(x[:, live]), l2)
    step = _block_rows(len(live))
    blocks = [top_per_row(sol.rows(lo, min(lo + step, len(live))), neighbours) for lo in range(0, len(live), step)]
    w = (sp.vstack(blocks, format="coo") if blocks else sp.coo_matrix((0, 0))).tocoo()
    return sp.csr_matrix((w.data, (live[w.row], live[w.col])), shape=(n_items, n_items), dtype=np.float32)


def ease_route(n_users: int, n_items: int) -> str:
    return "users" if n_users < n_items else "items"


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


__all__ = ["EaseSolution", "ItemItemRecall", "binary_history", "ease_route", "ease_weights", "rp3beta_weights",
           "spd_inverse", "top_per_row"]
