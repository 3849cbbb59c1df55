"""Ranking features: one ``FeatureBuilder`` for training, offline evaluation and Serve.

Everything the ranker knows about a (user, item) pair is computed here, from a
``FeatureContext`` (per-item and per-user arrays aligned to the catalog / user
order) and a candidate table. Training precomputes these features once and
writes them to Parquet; scoring calls the very same ``build``. There is no
second copy of the logic.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from ltray.config import RankConfig
from ltray.data.segments import Segment
from ltray.errors import LtrayError
from ltray.user_state import UserState

if TYPE_CHECKING:  # a DataFrame with the same columns reads the same (training's tables)
    from ltray.candidates import CandidateTable

FEATURE_VERSION = 4
SOURCE_FLAGS = ("from_cf", "from_item", "from_tail", "from_bridge", "from_pop")
SPEC_FILE = "feature_spec.json"
STATE_FILE = "features.npz"
DAY_S = 86_400.0
_EPS = 1e-8


class FeatureSpecError(LtrayError, ValueError):
    """Features that do not match what a model was trained on."""


@dataclass
class FeatureContext:
    """Per-item and per-user arrays, built once from artifacts. Items follow catalog row order."""

    item_ids: np.ndarray
    item_vectors: np.ndarray  # float32 (n_items, d), L2-normalised
    item_factors: np.ndarray  # float32 (n_items, f), zero rows for cold items
    item_bridge: np.ndarray  # float32 (n_items, f), text->CF prediction
    item_pop: np.ndarray  # float32 (n_items,), training interaction counts
    item_segment: np.ndarray  # int8 (n_items,), 0 head 1 tail 2 cold
    user_ids: np.ndarray
    user_factors: np.ndarray  # float32 (n_users, f)
    user_profiles: np.ndarray  # float32 (n_users, d)
    user_n: np.ndarray  # float32 (n_users,)
    user_last_ts: np.ndarray  # int64 (n_users,)
    now_ts: int
    user_recent_factors: np.ndarray | None = None  # float32 (n_users, f); None = zeros
    item_item: Any = None  # ltray.cf.itemitem.ItemItemRecall; None = no item-item score (zeros)
    user_seen: Any = None  # scipy CSR (n_users, n_items): each user's history, for the item-item score
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, m = len(self.item_ids), len(self.user_ids)
        if self.user_recent_factors is None:
            self.user_recent_factors = np.zeros_like(self.user_factors, dtype=np.float32)
        for name in ("item_vectors", "item_factors", "item_bridge", "item_pop", "item_segment"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FeatureContext.{name} has {len(getattr(self, name))} rows, expected {n}")
        for name in ("user_factors", "user_profiles", "user_n", "user_last_ts", "user_recent_factors"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"FeatureContext.{name} has {len(getattr(self, name))} rows, expected {m}")
        if self.item_factors.shape[1] != self.user_factors.shape[1]:
            raise ValueError("item and user factors differ in width")
        if self.item_vectors.shape[1] != self.user_profiles.shape[1]:
            raise ValueError("item vectors and user profiles differ in width")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {str(u): i for i, u in enumerate(self.user_ids)}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {str(x): i for i, x in enumerate(self.item_ids)}

    @cached_property
    def factor_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the item factors: they standardise a user's ALS scores."""
        f = self.item_factors.astype(np.float64)
        return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])

    @cached_property
    def unit_item_factors(self) -> np.ndarray:
        f = self.item_factors.astype(np.float64)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _EPS)

    @cached_property
    def item_hash(self) -> np.ndarray:
        """Raw 32-bit hashes of every item id (bucketed by the builder)."""
        return stable_hash(self.item_ids)


@dataclass(frozen=True)
class _Clusters:
    """One k-means partition of the catalog's texts, with what its shares need."""

    label: np.ndarray  # (n_items,) cluster of each item
    k: int
    prior: np.ndarray  # (k,) each cluster's share of interactions (each item counts one more)
    size: np.ndarray  # (k,) items per cluster
    item_share: np.ndarray  # (n_items,) the item's share of its cluster's interactions (each item counts one more)

    @classmethod
    def of(cls, label: np.ndarray, k: int, item_pop: np.ndarray) -> _Clusters:
        counts = item_pop.astype(np.float64) + 1.0
        mass = np.bincount(label, weights=counts, minlength=k)
        size = np.bincount(label, minlength=k).astype(np.float64)
        return cls(label=label, k=k, prior=mass / mass.sum(), size=np.maximum(size, 1.0),
                   item_share=counts / mass[label])


def _text_centroids(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (faiss) of unit text vectors; at most one cluster per vector."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return np.asarray(km.centroids, np.float32)


def stable_hash(ids) -> np.ndarray:
    """CRC32 of each id string as int64: stable across processes and runs (unlike hash())."""
    ids = np.asarray(ids).astype(str)
    uniq, inv = np.unique(ids, return_inverse=True)
    h = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in uniq), dtype=np.int64, count=len(uniq))
    return h[inv.reshape(-1)]


def _item_rows(table: CandidateTable) -> np.ndarray:
    return np.asarray(table["item_idx"], dtype=np.int64)


def _user_column(table: CandidateTable) -> np.ndarray | str:
    """Per-row user ids as a str array, or one str when the mapping gives one id for every row."""
    users = table["user_id"]
    if isinstance(users, str | np.str_):
        return str(users)
    return (users.astype(str).to_numpy() if isinstance(users, pd.Series) else np.asarray(users).astype(str))


def _user_arrays(ctx: FeatureContext, user_ids: np.ndarray | str, overrides: dict[str, UserState] | None,
                 n_rows: int):
    """Per-row user factor, profile, activity and last time; overrides win, unknown users are cold."""
    if isinstance(user_ids, str):  # one user for every row (a Serve request)
        uniq, inv = np.array([user_ids]), np.zeros(n_rows, np.int64)
    else:
        uniq, inv = np.unique(user_ids, return_inverse=True)
    f, d = ctx.user_factors.shape[1], ctx.user_profiles.shape[1]
    fac = np.zeros((len(uniq), f), np.float32)
    prof = np.zeros((len(uniq), d), np.float32)
    n = np.zeros(len(uniq), np.float32)
    last = np.full(len(uniq), ctx.now_ts, np.int64)
    rfac = np.zeros((len(uniq), f), np.float32)
    hist = [np.zeros(0, np.int64)] * len(uniq)
    overrides = overrides or {}
    for j, u in enumerate(uniq):
        state = overrides.get(u)
        if state is not None:
            fac[j] = np.asarray(state.factor, np.float32).reshape(f)
            prof[j] = np.asarray(state.profile, np.float32).reshape(d)
            n[j] = state.n
            last[j] = ctx.now_ts if state.last_ts is None else state.last_ts
            if state.recent_factor is not None:
                rfac[j] = np.asarray(state.recent_factor, np.float32).reshape(f)
            hist[j] = np.asarray(state.seen, np.int64)
            continue
        row = ctx.user_index.get(u)
        if row is not None:
            fac[j], prof[j] = ctx.user_factors[row], ctx.user_profiles[row]
            n[j], last[j] = ctx.user_n[row], ctx.user_last_ts[row]
            rfac[j] = ctx.user_recent_factors[row]
            if ctx.user_seen is not None:
                hist[j] = ctx.user_seen.indices[ctx.user_seen.indptr[row]:ctx.user_seen.indptr[row + 1]]
    return fac, prof, n, last, rfac, hist, uniq, inv.reshape(-1)


_ITEM_CHUNK = 65_536


class FeatureBuilder:
    """Fit once on training items; ``build`` turns a candidate table into model inputs."""

    def __init__(self, cfg: RankConfig):
        self.id_buckets = cfg.id_buckets
        self.text_dim = cfg.text_dim
        self.scaler_sample_pairs = cfg.scaler_sample_pairs
        self.seed = cfg.seed
        self.text_clusters = tuple(cfg.text_clusters)
        self.cluster_smoothing = cfg.cluster_smoothing
        self.cluster_centroids: list[np.ndarray] = []  # one (k, d) array per size of text_clusters
        self.pca_mean: np.ndarray | None = None  # (d,)
        self.pca_components: np.ndarray | None = None  # (d, k)
        self.dense_mean: np.ndarray | None = None  # (F,)
        self.dense_std: np.ndarray | None = None  # (F,)
        self.text_in_dim: int | None = None
        self.factor_dim: int | None = None
        self._item_cache: tuple | None = None  # (ctx, PCA) it was made for, item text features, norms, clusters

    # -- layout -------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.pca_components is not None and self.dense_mean is not None

    @property
    def reduced_dim(self) -> int:
        if self.pca_components is None:
            raise RuntimeError("FeatureBuilder is not fitted")
        return int(self.pca_components.shape[1])

    def dense_names(self) -> list[str]:
        k = self.reduced_dim
        return ([f"item_text_{i}" for i in range(k)] + [f"user_text_{i}" for i in range(k)]
                + ["profile_cosine", "als_score", "als_z", "recent_cf_cosine", "bridge_score", "item_z", *SOURCE_FLAGS,
                   "log_item_pop"]
                + [f"segment_{s.label}" for s in Segment] + ["log_user_n", "log_days_since_last"]
                + [f"{who}_cluster{k}_share" for k in self.text_clusters for who in ("user", "item")])

    def _unscaled_mask(self) -> np.ndarray:
        """Flags and one-hots stay 0/1: standardising them adds nothing."""
        names = self.dense_names()
        keep = set(SOURCE_FLAGS) | {f"segment_{s.label}" for s in Segment}
        return np.array([n in keep for n in names])

    @property
    def pop_column(self) -> int:
        return self.dense_names().index("log_item_pop")

    # -- fit ----------------------------------------------------------------------
    def fit(self, ctx: FeatureContext, train_item_idx, table: CandidateTable | None = None) -> FeatureBuilder:
        """PCA of text vectors on training items only; dense stats on ``table`` or on random pairs."""
        idx = np.unique(np.asarray(train_item_idx, dtype=np.int64))
        if len(idx) < 2:
            raise ValueError("FeatureBuilder.fit needs at least two training items")
        x = ctx.item_vectors[idx].astype(np.float64)
        self.pca_mean = x.mean(axis=0)
        # Eigenvectors of the d x d scatter, not an SVD of the n x d matrix: the same components, and
        # d (the encoder width) stays small while n grows with the catalog.
        xc = x - self.pca_mean
        eigval, eigvec = np.linalg.eigh(xc.T @ xc)
        k = min(self.text_dim, *x.shape)
        comps = eigvec[:, np.argsort(eigval)[::-1][:k]]
        # Fix each component's sign so a refit on the same data gives the same features.
        signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
        self.pca_components = (comps * np.where(signs == 0, 1.0, signs)).astype(np.float32)
        self.pca_mean = self.pca_mean.astype(np.float32)
        self.cluster_centroids = [_text_centroids(ctx.item_vectors[idx], k, self.seed) for k in self.text_clusters]
        self.text_in_dim = int(ctx.item_vectors.shape[1])
        self.factor_dim = int(ctx.item_factors.shape[1])
        if table is None:
            rng = np.random.default_rng(self.seed)
            m = self.scaler_sample_pairs
            users = ctx.user_ids[rng.integers(len(ctx.user_ids), size=m)] if len(ctx.user_ids) else np.array(
                ["?"] * m)
            table = pd.DataFrame({"user_id": users, "item_idx": idx[rng.integers(len(idx), size=m)]})
        raw = self._raw_dense(ctx, table, None, False)
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std = np.where(std < 1e-6, 1.0, std)
        unscaled = self._unscaled_mask()
        mean[unscaled], std[unscaled] = 0.0, 1.0
        self.dense_mean, self.dense_std = mean.astype(np.float32), std.astype(np.float32)
        return self

    # -- build --------------------------------------------------------------------
    def _raw_dense(self, ctx: FeatureContext, table: CandidateTable, users_override, debias: bool) -> np.ndarray:
        item_idx, user_ids = _item_rows(table), _user_column(table)
        if len(item_idx) and (item_idx.min() < 0 or item_idx.max() >= ctx.n_items):
            raise ValueError(f"item_idx out of range [0, {ctx.n_items})")
        fac, prof, n, last, rfac, hist, _, inv = _user_arrays(ctx, user_ids, users_override, len(item_idx))
        # float64 maths: BLAS float32 results depend on the batch shape, and a row's features must
        # not depend on which other rows it is built with (training bulk vs one Serve request).
        comps, mean = self.pca_components.astype(np.float64), self.pca_mean.astype(np.float64)
        all_text, all_norm, clusters = self._item_arrays(ctx)
        item_text = all_text[item_idx]
        user_text = (prof.astype(np.float64) - mean) @ comps
        # One dot product per row: float64 sums over float32 inputs, never a batch-shaped BLAS call.
        p = prof[inv]
        dots = np.einsum("ij,ij->i", ctx.item_vectors[item_idx], p, dtype=np.float64)
        cos = dots / (np.linalg.norm(p.astype(np.float64), axis=1) * all_norm[item_idx] + _EPS)
        uf = fac[inv].astype(np.float64)
        als = (uf * ctx.item_factors[item_idx]).sum(1)
        # The ALS score standardised over the whole catalog for this user: comparable across users.
        mu, cov = ctx.factor_stats
        fac64 = fac.astype(np.float64)
        u_mean = fac64 @ mu
        u_std = np.sqrt(np.maximum(np.einsum("uf,fg,ug->u", fac64, cov, fac64), 0.0)) + _EPS
        als_z = (als - u_mean[inv]) / u_std[inv]
        # Similarity to what the user took last (session-like taste), in CF space.
        rf = rfac.astype(np.float64)[inv]
        rf_norm = np.linalg.norm(rf, axis=1) + _EPS
        recent_cos = (rf * ctx.unit_item_factors[item_idx]).sum(1) / rf_norm
        bridge = (uf * ctx.item_bridge[item_idx]).sum(1)
        # The item-item model's score, standardised over the catalog per user like als_z.
        item_z = (ctx.item_item.z_scores(hist, item_idx, row_of=inv) if ctx.item_item is not None
                  else np.zeros(len(item_idx)))
        flags = np.stack([np.asarray(table[c], np.float32) if c in table else np.zeros(len(item_idx), np.float32)
                          for c in SOURCE_FLAGS], axis=1)
        log_pop = np.log1p(ctx.item_pop[item_idx].astype(np.float64))
        if debias:
            log_pop = np.full_like(log_pop, self._pop_constant())
        seg = np.eye(len(Segment), dtype=np.float32)[ctx.item_segment[item_idx].astype(np.int64)]
        days = np.maximum(ctx.now_ts - last, 0).astype(np.float64) / DAY_S
        cols = [item_text, user_text[inv], cos[:, None], als[:, None], als_z[:, None], recent_cos[:, None],
                bridge[:, None], item_z[:, None], flags, log_pop[:, None],
                seg, np.log1p(n)[inv][:, None], np.log1p(days)[inv][:, None]]
        if clusters:  # each user's history, flat, once for every partition
            lengths = np.fromiter((len(h) for h in hist), np.int64, count=len(hist))
            seen = np.concatenate(hist).astype(np.int64) if lengths.sum() else np.zeros(0, np.int64)
            cols += [self._cluster_shares(c, lengths, seen, inv, item_idx, debias) for c in clusters]
        return np.concatenate([np.asarray(c, np.float64).reshape(len(item_idx), -1) for c in cols], axis=1)

    def _item_arrays(self, ctx: FeatureContext) -> tuple[np.ndarray, np.ndarray, list[_Clusters]]:
        """Per-item PCA text features, vector norms and text clusters, made once per context: every
        request reuses them."""
        c = self._item_cache
        if c is None or c[0] is not ctx or c[1] is not self.pca_components:
            comps, mean = self.pca_components.astype(np.float64), self.pca_mean.astype(np.float64)
            n = len(ctx.item_vectors)
            text, norm = np.empty((n, comps.shape[1])), np.empty(n)
            labels = np.empty((len(self.cluster_centroids), n), np.int64)
            cents = [cc.astype(np.float64) for cc in self.cluster_centroids]
            for lo in range(0, n, _ITEM_CHUNK):  # float64 copies a chunk at a time, not of the whole catalog
                v = ctx.item_vectors[lo:lo + _ITEM_CHUNK].astype(np.float64)
                text[lo:lo + len(v)], norm[lo:lo + len(v)] = (v - mean) @ comps, np.linalg.norm(v, axis=1)
                for j, cc in enumerate(cents):
                    labels[j, lo:lo + len(v)] = (v @ cc.T).argmax(axis=1)
            clusters = [_Clusters.of(lab, len(cc), ctx.item_pop) for lab, cc in zip(labels, cents, strict=True)]
            self._item_cache = c = (ctx, self.pca_components, text, norm, clusters)
        return c[2], c[3], c[4]

    def _cluster_shares(self, c: _Clusters, lengths: np.ndarray, seen: np.ndarray, inv: np.ndarray,
                        item_idx: np.ndarray, debias: bool) -> np.ndarray:
        """log P(item's cluster | user) and log P(item | its cluster), both smoothed: a topic model's two factors.

        The user's share counts their history in the item's cluster plus `cluster_smoothing` pseudo-
        interactions spread by the clusters' popularity; the item's share is its interactions (plus one)
        over its cluster's (plus its size). With `debias`, the item's share is its cluster's average.
        `lengths` and `seen` are the users' histories: their sizes and their items end to end.
        """
        rows = np.repeat(np.arange(len(lengths)), lengths)
        counts = sp.csr_matrix((np.ones(len(rows)), (rows, c.label[seen])), shape=(len(lengths), c.k))
        item_cluster = c.label[item_idx]
        in_cluster = np.asarray(counts[inv, item_cluster]).reshape(-1) if len(item_idx) else np.zeros(0)
        a = self.cluster_smoothing
        user_share = (in_cluster + a * c.prior[item_cluster]) / (lengths[inv] + a)
        item_share = (np.full(len(item_idx), 1.0) / c.size[item_cluster] if debias
                      else c.item_share[item_idx])
        return np.stack([np.log(user_share), np.log(item_share)], axis=1)

    def _pop_constant(self) -> float:
        # The training mean of log-popularity: after standardisation the column is exactly 0.
        if self.dense_mean is None:
            raise RuntimeError("FeatureBuilder is not fitted")
        return float(self.dense_mean[self.pop_column])

    def build(self, ctx: FeatureContext, table: CandidateTable, users_override: dict[str, UserState] | None = None,
              debias_popularity: bool = False) -> dict[str, np.ndarray]:
        """Model inputs for every row of ``table`` (user_id, item_idx, from_* flags).

        ``table`` is a DataFrame or a mapping of column arrays (what Serve passes), where ``user_id``
        may be one id for every row.

        ``users_override`` maps user ids to ``UserState`` for users the context does not know
        (or knows only stale). ``debias_popularity`` fixes log-popularity to its training mean.
        """
        if not self.fitted:
            raise RuntimeError("FeatureBuilder is not fitted; call fit() or load()")
        if ctx.item_vectors.shape[1] != self.text_in_dim or ctx.item_factors.shape[1] != self.factor_dim:
            raise FeatureSpecError(
                f"context widths (text {ctx.item_vectors.shape[1]}, factors {ctx.item_factors.shape[1]}) differ "
                f"from the fitted builder (text {self.text_in_dim}, factors {self.factor_dim})")
        raw = self._raw_dense(ctx, table, users_override, debias_popularity)
        dense = ((raw - self.dense_mean.astype(np.float64)) / self.dense_std).astype(np.float32)
        users, item_idx = _user_column(table), _item_rows(table)
        user_hash = stable_hash(np.char.add("u:", users)) if isinstance(users, np.ndarray) else np.full(
            len(item_idx), stable_hash([f"u:{users}"])[0], np.int64)
        return {
            "user_hash": user_hash % self.id_buckets,
            "item_hash": ctx.item_hash[item_idx] % self.id_buckets,
            "dense": dense,
        }

    # -- spec and persistence ------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {
            "version": FEATURE_VERSION,
            "dense_names": self.dense_names(),
            "n_dense": len(self.dense_names()),
            "text_in_dim": self.text_in_dim,
            "text_dim": self.reduced_dim,
            "factor_dim": self.factor_dim,
            "id_buckets": self.id_buckets,
            "id_hash": "crc32",
            "pop_constant": self._pop_constant(),
            "text_clusters": list(self.text_clusters),
            "cluster_smoothing": self.cluster_smoothing,
        }

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / STATE_FILE, pca_mean=self.pca_mean, pca_components=self.pca_components,
                 dense_mean=self.dense_mean, dense_std=self.dense_std,
                 **{f"cluster_centroids_{k}": c for k, c in zip(self.text_clusters, self.cluster_centroids,
                                                                 strict=True)})
        (out / SPEC_FILE).write_text(json.dumps(self.spec(), indent=2))

    @classmethod
    def load(cls, in_dir: str | Path) -> FeatureBuilder:
        d = Path(in_dir)
        if not (d / SPEC_FILE).exists() or not (d / STATE_FILE).exists():
            raise FileNotFoundError(f"{d} has no {SPEC_FILE} / {STATE_FILE}")
        spec = json.loads((d / SPEC_FILE).read_text())
        if spec.get("version") != FEATURE_VERSION:
            raise FeatureSpecError(f"{d / SPEC_FILE}: feature version {spec.get('version')} is not "
                                   f"{FEATURE_VERSION}, which this code builds")
        b = cls(RankConfig(id_buckets=spec["id_buckets"], text_dim=spec["text_dim"],
                           text_clusters=tuple(spec["text_clusters"]), cluster_smoothing=spec["cluster_smoothing"]))
        with np.load(d / STATE_FILE, allow_pickle=False) as z:
            b.pca_mean, b.pca_components = z["pca_mean"], z["pca_components"]
            b.dense_mean, b.dense_std = z["dense_mean"], z["dense_std"]
            b.cluster_centroids = [z[f"cluster_centroids_{k}"] for k in b.text_clusters]
        b.text_in_dim, b.factor_dim = spec["text_in_dim"], spec["factor_dim"]
        if b.spec() != spec:
            raise FeatureSpecError(f"{d}: {SPEC_FILE} does not describe {STATE_FILE}: "
                                   f"{spec_difference(spec, b.spec())}")
        return b


def spec_difference(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """A short human account of how two feature specs differ."""
    parts = []
    for k in sorted(set(expected) | set(got)):
        a, b = expected.get(k), got.get(k)
        if a != b:
            if isinstance(a, list) and isinstance(b, list):
                parts.append(f"{k}: {len(a)} names vs {len(b)}, first difference "
                             f"{next(((x, y) for x, y in zip(a, b, strict=False) if x != y), 'in length')}")
            else:
                parts.append(f"{k}: {a!r} vs {b!r}")
    return "; ".join(parts) or "no difference"


# -- Parquet form of built features (what training streams) ---------------------------
def features_to_arrow(feats: dict[str, np.ndarray], label: np.ndarray | None = None) -> pa.Table:
    dense = np.ascontiguousarray(feats["dense"], dtype=np.float32)
    cols = {
        "user_hash": pa.array(feats["user_hash"].astype(np.int64)),
        "item_hash": pa.array(feats["item_hash"].astype(np.int64)),
        "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1]),
    }
    if label is not None:
        cols["label"] = pa.array(np.asarray(label, np.float32))
    return pa.table(cols)


def arrow_to_features(table: pa.Table) -> dict[str, np.ndarray]:
    dense_col = table.column("dense").combine_chunks()
    width = dense_col.type.list_size
    out = {
        "user_hash": table.column("user_hash").to_numpy(),
        "item_hash": table.column("item_hash").to_numpy(),
        "dense": dense_col.flatten().to_numpy().reshape(-1, width),
    }
    if "label" in table.column_names:
        out["label"] = table.column("label").to_numpy()
    return out
