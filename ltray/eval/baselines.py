"""Baselines that ltray is measured against, behind one small interface (like implicit's).

    model = ALSBaseline(factors=64).fit(train, item_vectors=None, train_ts=None)
    recs = model.recommend(user_rows, k=20, exclude_seen=True)   # (n, k) int64, -1 pads

``train`` is a CSR (n_users, n_items) of interaction weights; ``train_ts`` (optional) a CSR of the
same shape and sparsity holding the interaction times in seconds. Items and users are integer rows.
Every baseline ranks the full catalog. ``tune`` grid-searches hyper-parameters on a validation split.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ltray.cf.itemitem import EaseSolution, rp3beta_weights
from ltray.data.segments import Segment, segments_from_counts
from ltray.eval.metrics import evaluate, to_csr
from ltray.topk import top_k
from ltray.validation import grid_search, held_out

DAY_S = 86_400.0
# Users scored per block, so a (block, n_items) float32 score matrix stays small.
_USER_BLOCK = 1024
# Items above which EASE is skipped: its item x item inverse costs n^3 flops and 4 n^2 bytes a copy
# (20k items: 1.6 GB, minutes on 2 cores). The pipeline passes cf.item.ease_max_items.
EASE_MAX_ITEMS = 20_000


class BaselineSkipped(RuntimeError):
    """A baseline that declines its input (too large to fit affordably); the message says why."""


# ----------------------------------------------------------------------------- inputs


def interaction_matrices(
    interactions: pd.DataFrame, user_index: pd.Index, item_index: pd.Index, binary: bool = False
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(weights, times) CSR matrices (n_users, n_items) from a canonical interactions table.

    A repeated (user, item) pair keeps its latest time and weight. Users and items are looked
    up in the given indexes (their positions are the rows); unknown ids are an error.
    """
    u = user_index.get_indexer(interactions["user_id"])
    i = item_index.get_indexer(interactions["item_id"])
    if (u < 0).any() or (i < 0).any():
        raise ValueError("interactions hold user or item ids outside the given indexes")
    ts = interactions["ts"].to_numpy(np.int64)
    w = (
        np.ones(len(u), np.float32)
        if binary or "weight" not in interactions
        else interactions["weight"].to_numpy(np.float32)
    )
    order = np.lexsort((ts, i, u))
    u, i, ts, w = u[order], i[order], ts[order], w[order]
    last = np.ones(len(u), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    shape = (len(user_index), len(item_index))
    weights = sp.csr_matrix((w[last], (u[last], i[last])), shape=shape, dtype=np.float32)
    times = sp.csr_matrix((ts[last].astype(np.float64), (u[last], i[last])), shape=shape)
    return weights, times


def holdout_sets(test: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> dict[int, np.ndarray]:
    """{user_row: held-out item rows} (what `evaluate` takes); every id must be in the indexes."""
    return held_out(test, user_index, item_index, strict=True)


def text_bag_features(texts: list[str], min_df: int = 2, max_features: int = 20_000) -> sp.csr_matrix:
    """Binary bag of words of the item texts (title words, genres, tags), rows L2-normalised.

    The item features for LightFM: what a practitioner would feed it without an encoder.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    vec = CountVectorizer(
        binary=True,
        min_df=min(min_df, len(texts)),
        max_features=max_features,
        stop_words="english",
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z\-]+\b",
    )
    return normalize(vec.fit_transform(texts).astype(np.float32)).tocsr()


# ----------------------------------------------------------------------------- the interface


class Baseline:
    """fit(train, item_vectors, train_ts) once, then recommend(user_rows, k) over the full catalog."""

    name = "baseline"
    train: sp.csr_matrix

    @classmethod
    def available(cls) -> bool:
        return True

    def fit(
        self,
        train: sp.csr_matrix,
        item_vectors: np.ndarray | None = None,
        train_ts: sp.csr_matrix | None = None,
        item_segment: np.ndarray | None = None,
    ) -> Baseline:
        """item_segment (int8 codes per item) is used by the segment-aware baselines, ignored by the rest."""
        self.train = sp.csr_matrix(train, dtype=np.float32)
        self.train.eliminate_zeros()
        if item_segment is not None:
            self.item_segment = np.asarray(item_segment)
        self._fit(self.train, item_vectors, train_ts)
        return self

    def _fit(self, train: sp.csr_matrix, item_vectors, train_ts) -> None:
        raise NotImplementedError

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """(n, n_items) float32 scores; higher is better, -inf = never recommend."""
        raise NotImplementedError

    def recommend(self, user_rows, k: int, exclude_seen: bool = True) -> np.ndarray:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = np.full((len(user_rows), k), -1, dtype=np.int64)
        for lo in range(0, len(user_rows), _USER_BLOCK):
            block = user_rows[lo : lo + _USER_BLOCK]
            exclude = self.train[block] if exclude_seen else None
            out[lo : lo + len(block)] = top_k(self.scores(block), k, exclude)
        return out


class MostPop(Baseline):
    """The most interacted-with training items (counts, not weights); ties by item row."""

    name = "MostPop"

    def _fit(self, train, item_vectors, train_ts):
        pop = train.getnnz(axis=0)
        order = np.lexsort((np.arange(len(pop)), -pop))
        self._score = np.empty(len(pop), np.float32)
        self._score[order] = -np.arange(len(pop), dtype=np.float32)

    def scores(self, user_rows):
        return np.broadcast_to(self._score, (len(user_rows), len(self._score)))


class ALSBaseline(Baseline):
    """implicit's ALS; confidence 1 + alpha * w, with w the weight or 1.0 when binary."""

    name = "ALS"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        binary: bool = False,
        seed: int = 0,
        num_threads: int = 0,
    ):
        self.params = dict(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, binary=binary
        )
        self.seed, self.num_threads = seed, num_threads

    def _fit(self, train, item_vectors, train_ts):
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = self.params
        m = train.copy()
        if p["binary"]:
            m.data[:] = 1.0
        # implicit runs its own threads; a multi-threaded BLAS underneath only oversubscribes.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=p["factors"],
                regularization=p["regularization"],
                alpha=p["alpha"],
                iterations=p["iterations"],
                random_state=self.seed,
                num_threads=self.num_threads,
            )
            model.fit(m, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def scores(self, user_rows):
        return self.user_factors[user_rows] @ self.item_factors.T


class ItemKNN(Baseline):
    """implicit's item-item cosine neighbours (K per item); a user's score sums the similarities
    of their items. Items no neighbour reaches fall back to popularity, below every scored item."""

    name = "ItemKNN"

    def __init__(self, neighbours: int = 100, binary: bool = True, num_threads: int = 0):
        self.params = dict(neighbours=neighbours, binary=binary)
        self.num_threads = num_threads

    def _fit(self, train, item_vectors, train_ts):
        from implicit.nearest_neighbours import CosineRecommender

        m = train.copy()
        if self.params["binary"]:
            m.data[:] = 1.0
        self._user_items = m
        model = CosineRecommender(K=self.params["neighbours"], num_threads=self.num_threads)
        with warnings.catch_warnings():  # implicit converts its own normalised COO back to CSR
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(m, show_progress=False)
        self.similarity = model.similarity.tocsr().astype(np.float32)
        pop = train.getnnz(axis=0).astype(np.float32)
        self._fallback = pop / max(pop.max(), 1.0) - 2.0  # in [-2, -1]: under any cosine score

    def scores(self, user_rows):
        s = np.asarray((self._user_items[user_rows] @ self.similarity).todense(), dtype=np.float32)
        return np.where(s > 0, s, self._fallback[None, :])


class ContentKNN(Baseline):
    """Text only: the user's profile is the recency-weighted mean of their items' vectors
    (weight 0.5 ** (age / half-life), age from the user's latest interaction); items by cosine.

    half_life_days None = plain mean; recent_items keeps only the user's latest N items (needs
    train_ts). center subtracts the catalog's mean vector first: sentence encoders give every text a
    large shared component, so uncentred profiles of long histories all drift to the same "average
    item" and every user gets nearly the same list.
    """

    name = "ContentKNN"

    def __init__(
        self,
        half_life_days: float | None = 180.0,
        use_weights: bool = False,
        center: bool = False,
        recent_items: int | None = None,
    ):
        self.params = dict(
            half_life_days=half_life_days, use_weights=use_weights, center=center, recent_items=recent_items
        )

    def _fit(self, train, item_vectors, train_ts):
        if item_vectors is None:
            raise ValueError("ContentKNN needs item_vectors")
        v = np.asarray(item_vectors, dtype=np.float32)
        if v.shape[0] != train.shape[1]:
            raise ValueError(f"{v.shape[0]} item vectors for {train.shape[1]} items")
        if self.params["center"]:
            v = v - v.mean(axis=0, keepdims=True)
        self.item_vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        w = train.copy()
        if not self.params["use_weights"]:
            w.data[:] = 1.0
        hl, recent = self.params["half_life_days"], self.params["recent_items"]
        if train_ts is not None and (hl is not None or recent is not None):
            rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
            ts = np.asarray(sp.csr_matrix(train_ts, dtype=np.float64)[rows, w.indices]).ravel()
            if recent is not None:
                # Position of each interaction in its user's history, newest first.
                order = np.lexsort((-ts, rows))
                pos = np.empty(len(ts), np.int64)
                pos[order] = np.arange(len(ts)) - w.indptr[rows[order]]
                w.data[pos >= recent] = 0.0
            if hl is not None:
                last = np.full(w.shape[0], -np.inf)
                np.maximum.at(last, rows, ts)
                age_days = (last[rows] - ts) / DAY_S
                w.data = (w.data * 0.5 ** (age_days / hl)).astype(np.float32)
        profiles = np.asarray(w @ self.item_vectors, dtype=np.float32)
        self.profiles = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)

    def scores(self, user_rows):
        return self.profiles[user_rows] @ self.item_vectors.T


class EASE(Baseline):
    """Steck's EASE (WWW 2019): the closed-form item-item model B = I - P diag(1/diag(P)),
    P = (X^T X + regularization I)^-1, so diag(B) = 0; a user's scores are x_u B, X binary.

    Only the items with a training interaction take part. Any other item has a zero Gram row and
    column: its column of B is zero by construction, so EASE knows nothing about it, and it scores
    -inf (never recommended) instead of an arbitrary order under the real scores (they may be
    negative, so 0 is no floor; every such item has popularity 0, so ItemKNN's popularity fallback
    would only order them by row). A list falls short of k only for a user who has seen all but
    fewer than k of the active items.

    Two exact routes to the same B (``solver``; "auto" takes the cheaper one):

    - "items": P by Cholesky (LAPACK potrf + potri, in place): n^3 flops for n active items, and
      B kept as an n x n matrix; the in-place symmetric route is the cheapest exact inverse
      (faster than an LU inverse or cho_solve against the identity).
    - "users", when fewer users m have interactions than there are active items: by Woodbury,
      P = (I - Z^T Z) / regularization with Z = L^-1 X and L L^T = X X^T + regularization I (m x m),
      so B_ij = z_i.z_j / (1 - |z_j|^2) off the diagonal and x_u B is computed from Z (m x n) without
      forming B: m^2 n flops. MovieLens latest-small (610 users, ~8k active items): over 100x fewer.

    float32 by default (X^T X of a binary X is exact in it up to 2^24 co-occurrences; on the test
    catalog both routes keep the scores within ~1e-5 of float64's, relative to their scale, and the
    top-20 lists identical, for regularization 10 to 2000: the tests check it); the
    Woodbury route computes Z and |z|^2 in float64 (1 - |z|^2 cancels when regularization is small
    next to an item's popularity) and keeps Z in ``dtype`` for scoring. Above ``max_items`` active
    items fit raises BaselineSkipped: the "items" route's n^3 inverse and n x n memory are the worst
    case of both routes.
    """

    name = "EASE"

    def __init__(
        self,
        regularization: float = 500.0,
        max_items: int = EASE_MAX_ITEMS,
        dtype: str = "float32",
        solver: str = "auto",
    ):
        if regularization <= 0:
            raise ValueError("EASE needs regularization > 0 (X^T X alone is singular)")
        if solver not in ("auto", "items", "users"):
            raise ValueError(f"solver must be auto, items or users, got {solver!r}")
        self.params = dict(regularization=regularization)
        self.max_items, self.dtype, self.solver = max_items, np.dtype(dtype), solver

    def _fit(self, train, item_vectors, train_ts):
        x = train.copy()
        x.data[:] = 1.0
        self.items = np.flatnonzero(x.getnnz(axis=0) > 0)
        n = len(self.items)
        if n > self.max_items:
            raise BaselineSkipped(
                f"{n:,} items with a training interaction > max_items {self.max_items:,} "
                f"(EASE inverts an n x n matrix: n^3 flops, {4 * n * n / 2**30:.1f} GiB a float32 copy)"
            )
        self._x = x[:, self.items].tocsr()  # binary, active items only: what scores multiply
        self._solution = EaseSolution.solve(self._x, float(self.params["regularization"]), self.dtype, self.solver)
        self.route = self._solution.route

    def scores(self, user_rows):
        s = self._solution.scores(self._x[np.asarray(user_rows, dtype=np.int64)])
        out = np.full((len(user_rows), self.train.shape[1]), -np.inf, dtype=np.float32)
        out[:, self.items] = s
        return out


class RP3beta(Baseline):
    """RP3beta (Paudel et al. 2017; as evaluated by Ferrari Dacrema et al., RecSys 2019): a 3-step
    random walk user -> item -> user -> item, popularity-discounted.

    P_ui = X row-normalised, P_iu = X^T row-normalised (X binary); each transition probability is
    raised to ``alpha`` (Cooper et al.'s P^3_alpha, as the RecSys 2019 reference code does: the
    elementwise power is taken on P_ui and P_iu, not on their product); W = P_iu^alpha @ P_ui^alpha,
    column j divided by pop_j ** beta, diagonal zero, the top ``neighbours`` entries of each row
    kept; a user's scores are x_u W. W is built a block of item rows at a time (a dense
    (block, n_items) float32 matrix, its top-k per row, back to CSR), so memory stays bounded on
    large catalogs. Items no neighbour reaches fall back to popularity, under every walk score
    (as ItemKNN's).
    """

    name = "RP3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.6, neighbours: int = 100):
        if alpha <= 0 or neighbours < 1:
            raise ValueError("RP3beta needs alpha > 0 and neighbours >= 1")
        self.params = dict(alpha=alpha, beta=beta, neighbours=neighbours)

    def _fit(self, train, item_vectors, train_ts):
        x = train.copy()
        x.data[:] = 1.0
        self._user_items = x
        self.similarity = rp3beta_weights(x, self.params["alpha"], self.params["beta"], self.params["neighbours"])
        pop = x.getnnz(axis=0).astype(np.float64)
        self._fallback = (pop / max(pop.max(initial=0.0), 1.0) - 2.0).astype(np.float32)  # [-2, -1]

    def scores(self, user_rows):
        s = np.asarray((self._user_items[user_rows] @ self.similarity).todense(), dtype=np.float32)
        return np.where(s > 0, s, self._fallback[None, :])


class _ALSContentHybrid(Baseline):
    """ALS and ContentKNN combined. The parts are fitted here, or handed in already fitted
    (``components=(als, content)``, on the same train this is fitted on): tuning a hybrid's own
    share or weight then refits neither part, and the parts keep the parameters tuned for them."""

    def __init__(
        self,
        als_params: Mapping[str, Any] | None = None,
        content_params: Mapping[str, Any] | None = None,
        components: tuple[ALSBaseline, ContentKNN] | None = None,
    ):
        if components is not None:
            self.als, self.content = components
        else:
            self.als = ALSBaseline(**dict(als_params or {}))
            self.content = ContentKNN(**dict(content_params or {}))
        self._given = components is not None

    def _fit(self, train, item_vectors, train_ts):
        if not self._given:
            self.als.fit(train, item_vectors, train_ts)
            self.content.fit(train, item_vectors, train_ts)
            return
        for part in (self.als, self.content):
            seen = getattr(part, "train", None)
            if seen is None or seen.shape != train.shape or (seen != train).nnz:
                raise ValueError(f"{self.name}: components must be fitted on the train it is fitted on")


class ALSTailQuota(_ALSContentHybrid):
    """ALS's list with a share of its k slots given to ContentKNN's best tail / cold items.

    The tail slots are spread evenly down the list (slot p is a tail slot when
    floor((p+1)*q) > floor(p*q)), so every prefix keeps about the same share; the other slots keep
    ALS's order. ALS items already chosen as tail picks are not repeated. ``tail_share`` 0 is ALS's
    list as it is.
    """

    name = "ALS+TailQuota"

    def __init__(
        self,
        item_segment: np.ndarray | None = None,
        tail_share: float = 0.4,
        als_params: Mapping[str, Any] | None = None,
        content_params: Mapping[str, Any] | None = None,
        components: tuple[ALSBaseline, ContentKNN] | None = None,
    ):
        if not 0 <= tail_share <= 1:
            raise ValueError("tail_share must lie in [0, 1]")
        super().__init__(als_params, content_params, components)
        self.item_segment = None if item_segment is None else np.asarray(item_segment)
        self.params = dict(tail_share=tail_share)

    def _fit(self, train, item_vectors, train_ts):
        if self.item_segment is None:
            raise ValueError("ALSTailQuota needs item_segment (constructor or fit)")
        if len(self.item_segment) != train.shape[1]:
            raise ValueError(f"item_segment has {len(self.item_segment)} items, train {train.shape[1]}")
        super()._fit(train, item_vectors, train_ts)

    def recommend(self, user_rows, k, exclude_seen=True):
        user_rows = np.asarray(user_rows, dtype=np.int64)
        n_tail = int(round(self.params["tail_share"] * k))
        head_list = self.als.recommend(user_rows, k, exclude_seen)
        out = np.full((len(user_rows), k), -1, dtype=np.int64)
        if n_tail == 0:
            return head_list
        is_head = self.item_segment == Segment.HEAD
        tail_list = np.full((len(user_rows), n_tail), -1, dtype=np.int64)
        for lo in range(0, len(user_rows), _USER_BLOCK):
            block = user_rows[lo : lo + _USER_BLOCK]
            s = self.content.scores(block).copy()
            s[:, is_head] = -np.inf
            tail_list[lo : lo + len(block)] = top_k(s, n_tail, self.train[block] if exclude_seen else None)
        p = np.arange(k)
        tail_slot = ((p + 1) * n_tail) // k > (p * n_tail) // k
        for r in range(len(user_rows)):
            picks = tail_list[r][tail_list[r] >= 0]
            rest = head_list[r][(head_list[r] >= 0) & ~np.isin(head_list[r], picks)]
            slots = tail_slot.copy()
            if len(picks) < n_tail:  # too few tail items: ALS fills the spare tail slots
                slots[np.flatnonzero(slots)[len(picks) :]] = False
            out[r, slots] = picks
            n_rest = min(len(rest), int((~slots).sum()))
            out[r, np.flatnonzero(~slots)[:n_rest]] = rest[:n_rest]
        return out


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row's scores as z-scores over the catalog (mean 0, std 1; a constant row becomes 0)."""
    s = np.asarray(scores, dtype=np.float64)
    sd = s.std(axis=1, keepdims=True)
    return ((s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


class ALSTextBlend(_ALSContentHybrid):
    """score = z(ALS) + text_weight * z(ContentKNN), each standardised per user over the catalog, so
    the weight means the same whatever the two models' score scales. ContentKNN scores every item
    from its text, so the blend can lift tail and cold items that ALS scores near zero.
    ``text_weight`` 0 is ALS's scores as they are (z-scoring and rounding back to float32 could
    merge near-ties and reorder them)."""

    name = "ALS+TextBlend"

    def __init__(
        self,
        text_weight: float = 0.3,
        als_params: Mapping[str, Any] | None = None,
        content_params: Mapping[str, Any] | None = None,
        components: tuple[ALSBaseline, ContentKNN] | None = None,
    ):
        if text_weight < 0:
            raise ValueError("text_weight must be >= 0")
        super().__init__(als_params, content_params, components)
        self.params = dict(text_weight=text_weight)

    def scores(self, user_rows):
        als = self.als.scores(user_rows)
        w = self.params["text_weight"]
        if w == 0:
            return als
        return standardise(als) + np.float32(w) * standardise(self.content.scores(user_rows))


class LightFMBaseline(Baseline):
    """LightFM with the WARP loss and item features (identity + e.g. `text_bag_features`).

    Optional: lightfm is imported lazily and `available()` says whether it is installed.
    """

    name = "LightFM"

    def __init__(
        self,
        item_features: sp.spmatrix | None = None,
        no_components: int = 64,
        learning_rate: float = 0.05,
        item_alpha: float = 1e-6,
        epochs: int = 20,
        max_sampled: int = 10,
        seed: int = 0,
        num_threads: int = 2,
    ):
        self.item_features = item_features
        self.params = dict(
            no_components=no_components,
            learning_rate=learning_rate,
            item_alpha=item_alpha,
            epochs=epochs,
            max_sampled=max_sampled,
        )
        self.seed, self.num_threads = seed, num_threads

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("lightfm") is not None

    def _fit(self, train, item_vectors, train_ts):
        from lightfm import LightFM

        n_items = train.shape[1]
        feats = sp.identity(n_items, dtype=np.float32, format="csr")
        if self.item_features is not None:
            if self.item_features.shape[0] != n_items:
                raise ValueError(
                    f"item_features has {self.item_features.shape[0]} rows, train {n_items} items"
                )
            feats = sp.hstack([feats, sp.csr_matrix(self.item_features, dtype=np.float32)]).tocsr()
        p = self.params
        model = LightFM(
            loss="warp",
            no_components=p["no_components"],
            learning_rate=p["learning_rate"],
            item_alpha=p["item_alpha"],
            max_sampled=p["max_sampled"],
            random_state=self.seed,
        )
        binary = train.copy()
        binary.data[:] = 1.0
        model.fit(binary.tocoo(), item_features=feats, epochs=p["epochs"], num_threads=self.num_threads)
        item_bias, item_emb = model.get_item_representations(feats)
        _, user_emb = model.get_user_representations()
        self.user_factors = np.asarray(user_emb, np.float32)
        self.item_factors = np.asarray(item_emb, np.float32)
        self.item_bias = np.asarray(item_bias, np.float32)

    def scores(self, user_rows):
        return self.user_factors[user_rows] @ self.item_factors.T + self.item_bias[None, :]


BASELINES: dict[str, type[Baseline]] = {
    "mostpop": MostPop,
    "als": ALSBaseline,
    "itemknn": ItemKNN,
    "contentknn": ContentKNN,
    "ease": EASE,
    "rp3beta": RP3beta,
    "als_tail_quota": ALSTailQuota,
    "als_text_blend": ALSTextBlend,
    "lightfm": LightFMBaseline,
}


# ----------------------------------------------------------------------------- tuning


@dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_score: float
    metric: str
    trials: list[dict[str, Any]] = field(default_factory=list)  # params + score + fit_s per grid point

    def __iter__(self):
        """`params, score = tune(...)` unpacks."""
        return iter((self.best_params, self.best_score))


def tune(
    baseline_factory: Callable[..., Baseline],
    grid: Mapping[str, list],
    train: sp.csr_matrix,
    valid,
    metric: str = "Recall@20",
    *,
    item_vectors: np.ndarray | None = None,
    train_ts: sp.csr_matrix | None = None,
    item_segment: np.ndarray | None = None,
    head_share: float = 0.8,
    k: int | None = None,
    users: np.ndarray | None = None,
) -> TuneResult:
    """Grid search: fit ``baseline_factory(**point)`` on ``train`` for every grid point and score
    ``metric`` on the held-out ``valid`` items ({user_row: items} or CSR). The first best point wins
    ties. Segments default to those of ``train`` (head_share rule), as the protocol defines them;
    they are also handed to ``fit`` (for ALSTailQuota). ``users``: evaluate only these (default:
    every user with validation items). Returns a TuneResult (unpacks as ``params, score``)."""
    if not isinstance(metric, str):
        raise TypeError(
            f"metric must be a metric name such as 'Recall@20', got {type(metric).__name__}; "
            "pass the users to score as users=..."
        )
    pop = np.asarray(train.getnnz(axis=0), dtype=np.float64)
    seg = segments_from_counts(pop, head_share) if item_segment is None else item_segment
    if k is None:
        k = int(metric.rsplit("@", 1)[1]) if "@" in metric else 20
    truth = to_csr(valid, train.shape[0], train.shape[1])
    if users is None:
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
    users = np.asarray(users, dtype=np.int64)

    def score(point: dict[str, Any]) -> float:
        model = baseline_factory(**point).fit(train, item_vectors, train_ts, item_segment=seg)
        return evaluate(model.recommend(users, k), truth, seg, pop, ks=(k,), user_rows=users)[metric]

    best, best_score, trials = grid_search(grid, score, metric)
    return TuneResult(best, best_score, metric, trials)
