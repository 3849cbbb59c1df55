"""CF recall: implicit-feedback ALS through the ``implicit`` library.

Users and items are integer rows (the catalog's row order for items); the id
arrays that map rows back to strings are saved next to the factors.

Confidence follows Hu, Koren & Volinsky: ``C = 1 + alpha * w``, where ``w`` is
the interaction weight, or its BM25 re-weighting when ``cfg.weighting ==
"bm25"``. implicit reads a CSR value as the confidence itself (``A += (c - 1)
y y^T``, ``b += c y``), so the matrix handed to it holds ``C`` and implicit's
own ``alpha`` stays 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ltray.config import CFConfig

ALS_FILE = "als.npz"
SEEN_FILE = "seen.npz"


def _gpu_wanted(use_gpu: str) -> bool:
    if use_gpu == "never":
        return False
    try:
        import implicit.gpu
        has_cuda = bool(implicit.gpu.HAS_CUDA)
    except ImportError:
        has_cuda = False
    if use_gpu == "always" and not has_cuda:
        raise RuntimeError("cf.use_gpu=always but implicit was built without CUDA or no GPU is visible")
    return has_cuda


def _as_unicode(ids, n: int, what: str) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray(ids).astype(str)
    if len(arr) != n:
        raise ValueError(f"{what} has {len(arr)} entries, expected {n}")
    return arr


class ALSRecall:
    """ALS user/item factors, the seen-items matrix and top-n recall that skips seen items.

    ``fit`` then ``recommend(user_rows, n)``; ``fold_in`` gives a factor for a user with new
    interactions without retraining; ``save(dir)`` / ``ALSRecall.load(dir)``.
    """

    def __init__(self, cfg: CFConfig | None = None, user_ids=None, item_ids=None):
        self.cfg = cfg or CFConfig()
        self.user_ids: np.ndarray | None = None if user_ids is None else np.asarray(user_ids).astype(str)
        self.item_ids: np.ndarray | None = None if item_ids is None else np.asarray(item_ids).astype(str)
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.seen: sp.csr_matrix | None = None  # users x items, summed raw weights
        # BM25 statistics of the training matrix, kept so fold-in weighs rows the same way.
        self._bm25_idf: np.ndarray | None = None
        self._bm25_avg_len: float = 1.0
        self._yty: np.ndarray | None = None

    # ----------------------------------------------------------------- training
    def _model(self, n_factors: int | None = None, gpu: bool = False):
        from implicit.als import AlternatingLeastSquares

        c = self.cfg
        return AlternatingLeastSquares(
            factors=n_factors or c.factors, regularization=c.regularization, alpha=1.0,
            iterations=c.iterations, use_cg=c.use_cg, num_threads=c.num_threads,
            random_state=c.seed, use_gpu=gpu)

    def _confidence(self, m: sp.csr_matrix) -> sp.csr_matrix:
        """Raw-weight CSR (users x items) -> confidence CSR, with stored BM25 statistics."""
        w = m.tocoo()
        data = w.data.astype(np.float64)
        if self.cfg.weighting == "binary":
            data = np.ones_like(data)  # every interaction counts the same, whatever its weight
        elif self.cfg.weighting == "bm25":
            k1, b = self.cfg.bm25_k1, self.cfg.bm25_b
            row_len = np.ravel(m.sum(axis=1))[w.row]
            norm = (1.0 - b) + b * row_len / self._bm25_avg_len
            data = data * (k1 + 1.0) / (k1 * norm + data) * self._bm25_idf[w.col]
        conf = 1.0 + self.cfg.alpha * data
        return sp.csr_matrix((conf.astype(np.float32), (w.row, w.col)), shape=m.shape)

    def fit(self, user_idx, item_idx, weights=None, n_users: int | None = None, n_items: int | None = None,
            user_ids=None, item_ids=None) -> ALSRecall:
        """Train on interactions given as parallel arrays of user rows, item rows and weights.

        Repeated (user, item) pairs are summed. Pairs with weight 0 count as seen but carry no preference.
        """
        user_idx = np.asarray(user_idx, dtype=np.int64)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        weights = np.ones(len(user_idx), np.float32) if weights is None else np.asarray(weights, np.float32)
        if not (len(user_idx) == len(item_idx) == len(weights)):
            raise ValueError("user_idx, item_idx and weights must have the same length")
        if len(user_idx) and (weights < 0).any():
            raise ValueError("weights must be >= 0")
        n_users = int(n_users if n_users is not None else (user_idx.max() + 1 if len(user_idx) else 0))
        n_items = int(n_items if n_items is not None else (item_idx.max() + 1 if len(item_idx) else 0))
        if len(user_idx) and (user_idx.min() < 0 or user_idx.max() >= n_users):
            raise ValueError(f"user rows must lie in [0, {n_users})")
        if len(item_idx) and (item_idx.min() < 0 or item_idx.max() >= n_items):
            raise ValueError(f"item rows must lie in [0, {n_items})")
        if user_ids is not None:
            self.user_ids = _as_unicode(user_ids, n_users, "user_ids")
        if item_ids is not None:
            self.item_ids = _as_unicode(item_ids, n_items, "item_ids")

        seen = sp.csr_matrix((weights, (user_idx, item_idx)), shape=(n_users, n_items), dtype=np.float32)
        seen.sum_duplicates()
        self.seen = seen
        pref = seen.copy()
        pref.eliminate_zeros()  # zero-weight rows stay in `seen` only
        if self.cfg.weighting == "bm25":
            n_rows = max(n_users, 1)
            self._bm25_idf = np.log(n_rows) - np.log1p(np.bincount(pref.indices, minlength=n_items))
            row_len = np.ravel(pref.sum(axis=1))
            self._bm25_avg_len = float(row_len.mean()) if n_users else 1.0
        conf = self._confidence(pref)

        gpu = _gpu_wanted(self.cfg.use_gpu)
        # implicit runs its own threads; a threaded OpenBLAS underneath only adds contention.
        with threadpool_limits(1, "blas"):
            model = self._model(gpu=gpu)
            model.fit(conf, show_progress=False)
            if gpu:
                model = model.to_cpu()
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._yty = None
        return self

    # ------------------------------------------------------------------ queries
    @property
    def n_users(self) -> int:
        return 0 if self.user_factors is None else len(self.user_factors)

    @property
    def n_items(self) -> int:
        return 0 if self.item_factors is None else len(self.item_factors)

    def _check_fitted(self) -> None:
        if self.item_factors is None:
            raise RuntimeError("ALSRecall is not fitted; call fit() or ALSRecall.load()")

    def recommend(self, user_rows, n: int, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-n items per user row by factor dot product: ``(ids (m, n') int64, scores (m, n') float32)``.

        ``n' = min(n, n_items - most items seen by any of these users)`` when excluding seen items, so
        every returned id is a real, unseen item (no padding); rows are sorted by descending score.
        """
        self._check_fitted()
        rows = np.atleast_1d(np.asarray(user_rows, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_users):
            raise IndexError(f"user rows must lie in [0, {self.n_users})")
        exclude = self.seen[rows] if exclude_seen else None
        return self.recommend_vectors(self.user_factors[rows], n, exclude)

    def recommend_vectors(self, user_vectors: np.ndarray, n: int,
                          exclude: sp.csr_matrix | list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like ``recommend`` for user factors given directly (e.g. from ``fold_in``).

        ``exclude``: a CSR (m x n_items) or a list of m item-row arrays to leave out.
        """
        from implicit.cpu.topk import topk

        self._check_fitted()
        q = np.ascontiguousarray(np.atleast_2d(user_vectors), dtype=np.float32)
        m = len(q)
        if exclude is not None and not sp.issparse(exclude):
            exclude = _rows_to_csr(exclude, self.n_items)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude, dtype=np.float32, copy=True)  # data is overwritten below
            if exclude.shape != (m, self.n_items):
                raise ValueError(f"exclude must be {m} x {self.n_items}, got {exclude.shape}")
            exclude.data[:] = 1.0  # the structure is what counts: zero-weight seen pairs are excluded too
            max_seen = int(np.diff(exclude.indptr).max()) if m else 0
        else:
            max_seen = 0
        k = max(0, min(int(n), self.n_items - max_seen))
        if m == 0 or k == 0:
            return np.zeros((m, 0), np.int64), np.zeros((m, 0), np.float32)
        ids, scores = topk(self.item_factors, q, k, filter_query_items=exclude,
                           num_threads=self.cfg.num_threads)
        return ids.astype(np.int64), scores.astype(np.float32)

    def score(self, user_rows, item_idx) -> np.ndarray:
        """Dot products: item_idx (k,) scores the same items for every user, (m, k) one list per user."""
        self._check_fitted()
        rows = np.atleast_1d(np.asarray(user_rows, dtype=np.int64))
        items = np.asarray(item_idx, dtype=np.int64)
        u = self.user_factors[rows]
        if items.ndim == 1:
            return (u @ self.item_factors[items].T).astype(np.float32)
        if items.shape[0] != len(rows):
            raise ValueError("item_idx (m, k) needs one row per user row")
        return np.einsum("mf,mkf->mk", u, self.item_factors[items]).astype(np.float32)

    def similar_items(self, item_rows, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by cosine of item factors, the query item itself left out."""
        self._check_fitted()
        rows = np.atleast_1d(np.asarray(item_rows, dtype=np.int64))
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        unit = self.item_factors / np.maximum(norms, 1e-12)
        exclude = sp.csr_matrix((np.ones(len(rows), np.float32), (np.arange(len(rows)), rows)),
                                shape=(len(rows), self.n_items))
        from implicit.cpu.topk import topk

        k = max(0, min(int(n), self.n_items - 1))
        if k == 0:
            return np.zeros((len(rows), 0), np.int64), np.zeros((len(rows), 0), np.float32)
        ids, scores = topk(np.ascontiguousarray(unit, np.float32), unit[rows].astype(np.float32), k,
                           filter_query_items=exclude, num_threads=self.cfg.num_threads)
        return ids.astype(np.int64), scores.astype(np.float32)

    # ------------------------------------------------------------------ fold-in
    def fold_in(self, item_idx, weights=None) -> np.ndarray:
        """User factor (f,) for the given interactions, item factors fixed: the exact ALS user solve
        ``x = (Y^T C Y + reg I)^-1 Y^T C p``, as implicit's ``recalculate_user`` solves it.

        Pass a user's full history (old + new items) to update an existing user; a new user passes
        what they have. Nothing is stored; see ``update_user`` for that.
        """
        self._check_fitted()
        items = np.atleast_1d(np.asarray(item_idx, dtype=np.int64))
        w = np.ones(len(items), np.float32) if weights is None else np.atleast_1d(np.asarray(weights, np.float32))
        if len(items) != len(w):
            raise ValueError("item_idx and weights must have the same length")
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise IndexError(f"item rows must lie in [0, {self.n_items})")
        row = sp.csr_matrix((w, (np.zeros(len(items), np.int64), items)), shape=(1, self.n_items))
        row.sum_duplicates()
        row.eliminate_zeros()
        if row.nnz == 0:
            return np.zeros(self.item_factors.shape[1], np.float32)
        conf = self._confidence(row)
        y = self.item_factors[conf.indices].astype(np.float64)
        c = conf.data.astype(np.float64)
        if self._yty is None:  # the Y^T Y every solve shares
            f = self.item_factors.astype(np.float64)
            self._yty = f.T @ f
        # Y^T C Y = Y^T Y + Y_u^T (C_u - I) Y_u: only the user's own items differ from 1 (implicit's form).
        a = self._yty + self.cfg.regularization * np.eye(len(self._yty)) + (y * (c - 1.0)[:, None]).T @ y
        with threadpool_limits(1, "blas"):
            x = np.linalg.solve(a, y.T @ c)
        return x.astype(np.float32)

    def update_user(self, user_row: int, item_idx, weights=None, user_id: str | None = None) -> np.ndarray:
        """Fold in a user's full history and store it; ``user_row == n_users`` appends a new user."""
        self._check_fitted()
        user_row = int(user_row)
        if not 0 <= user_row <= self.n_users:
            raise IndexError(f"user_row must lie in [0, {self.n_users}]")
        x = self.fold_in(item_idx, weights)
        items = np.atleast_1d(np.asarray(item_idx, dtype=np.int64))
        w = np.ones(len(items), np.float32) if weights is None else np.atleast_1d(np.asarray(weights, np.float32))
        row = sp.csr_matrix((w, (np.zeros(len(items), np.int64), items)), shape=(1, self.n_items))
        row.sum_duplicates()
        if user_row == self.n_users:
            self.user_factors = np.vstack([self.user_factors, x[None]])
            self.seen = sp.vstack([self.seen, row], format="csr")
            if self.user_ids is not None:
                self.user_ids = np.append(self.user_ids, str(user_id if user_id is not None else user_row))
        else:
            self.user_factors[user_row] = x
            # vstack keeps explicit zeros (zero-weight pairs are still seen); lil assignment would not
            self.seen = sp.vstack([self.seen[:user_row], row, self.seen[user_row + 1:]], format="csr")
        return x

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``als.npz`` (factors, id maps, config, BM25 stats) and ``seen.npz`` (CSR). Plain npz only."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {
            "user_factors": self.user_factors, "item_factors": self.item_factors,
            "config_json": np.array(self.cfg.model_dump_json()),
            "bm25_avg_len": np.array(self._bm25_avg_len, np.float64),
        }
        if self.user_ids is not None:
            arrays["user_ids"] = self.user_ids.astype(str)
        if self.item_ids is not None:
            arrays["item_ids"] = self.item_ids.astype(str)
        if self._bm25_idf is not None:
            arrays["bm25_idf"] = self._bm25_idf
        np.savez(d / ALS_FILE, **arrays)
        sp.save_npz(d / SEEN_FILE, self.seen.tocsr(), compressed=True)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ALSRecall:
        d = Path(directory)
        with np.load(d / ALS_FILE, allow_pickle=False) as z:
            cfg = CFConfig.model_validate(json.loads(str(z["config_json"])))
            obj = cls(cfg, user_ids=z["user_ids"] if "user_ids" in z else None,
                      item_ids=z["item_ids"] if "item_ids" in z else None)
            obj.user_factors = np.ascontiguousarray(z["user_factors"], np.float32)
            obj.item_factors = np.ascontiguousarray(z["item_factors"], np.float32)
            obj._bm25_avg_len = float(z["bm25_avg_len"])
            obj._bm25_idf = z["bm25_idf"] if "bm25_idf" in z else None
        obj.seen = sp.load_npz(d / SEEN_FILE).tocsr()
        return obj


def _rows_to_csr(rows: list, n_cols: int) -> sp.csr_matrix:
    lens = [len(r) for r in rows]
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    indices = np.concatenate([np.asarray(r, np.int64) for r in rows]) if sum(lens) else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_cols))
    m.sum_duplicates()
    return m
