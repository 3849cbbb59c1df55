"""Shared builders for the ranking tests: a FeatureContext and sample tables from the synthetic data.

Text vectors are seeded random topic centroids plus noise (the text is not the point here);
ALS is real (implicit), fit only on interactions before the validation cut so that
validation is later in time and unseen by every feature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ltray.config import RankConfig
from ltray.data.segments import compute_segments, segment_codes
from ltray.rank.features import SOURCE_FLAGS, FeatureContext
from ltray.rank.sampling import sample_training_table, time_validation_split

TEXT_DIM = 32
FACTORS = 16


def topic_vectors(items: pd.DataFrame, seed: int = 0, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes, uniq = pd.factorize(items["topic"])
    centroids = rng.normal(size=(len(uniq), TEXT_DIM))
    v = centroids[codes] + noise * rng.normal(size=(len(items), TEXT_DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fit_als(user_codes: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int):
    from implicit.als import AlternatingLeastSquares

    m = sp.csr_matrix((np.ones(len(user_codes), np.float32), (user_codes, item_idx)), shape=(n_users, n_items))
    m.data[:] = 1.0
    als = AlternatingLeastSquares(factors=FACTORS, iterations=8, regularization=0.05, random_state=0,
                                  num_threads=1)
    als.fit(m, show_progress=False)
    uf, itf = np.asarray(als.user_factors, np.float32), np.asarray(als.item_factors, np.float32)
    itf[np.bincount(item_idx, minlength=n_items) == 0] = 0.0  # cold items: no CF signal
    return uf, itf


def context_from_training(item_ids, train: pd.DataFrame, item_vectors: np.ndarray, item_factors: np.ndarray,
                          item_bridge: np.ndarray, user_ids, user_factors: np.ndarray, user_profiles: np.ndarray,
                          head_share: float = 0.8, now_ts: int | None = None) -> FeatureContext:
    """A FeatureContext from hand-made factors: counts, segments, activity and recency from the training
    interactions (user_id, item_id, ts), by the library's own segment rule."""
    item_ids = np.asarray(item_ids).astype(str)
    user_ids = np.asarray(user_ids).astype(str)
    seg = compute_segments(item_ids, train, head_share)
    by_user = train.groupby("user_id")["ts"].agg(["size", "max"]).reindex(pd.Index(user_ids))
    now = int(train["ts"].max()) if now_ts is None else int(now_ts)
    return FeatureContext(item_ids=item_ids, item_vectors=np.asarray(item_vectors, np.float32),
                          item_factors=np.asarray(item_factors, np.float32),
                          item_bridge=np.asarray(item_bridge, np.float32),
                          item_pop=seg.table["count"].to_numpy(dtype=np.float32),
                          item_segment=segment_codes(seg.table["segment"]), user_ids=user_ids,
                          user_factors=np.asarray(user_factors, np.float32),
                          user_profiles=np.asarray(user_profiles, np.float32),
                          user_n=by_user["size"].fillna(0).to_numpy(dtype=np.float32),
                          user_last_ts=by_user["max"].fillna(now).to_numpy(dtype=np.int64), now_ts=now)


def build_case(dataset, val_fraction: float = 0.15, context_fraction: float = 0.0, seed: int = 0):
    """FeatureContext fit on the earlier interactions, plus (train_pos, val_pos, candidates, history).

    With ``context_fraction`` > 0 the context (ALS, profiles, popularity) is fit on the earliest
    interactions only and the ranker trains on the ones after it, as it will be used: scoring the
    future from the past. With 0 the ranker trains on the very interactions ALS was fit on.
    """
    items, inter = dataset.items, dataset.interactions
    item_index = pd.Index(items["item_id"])
    inter = inter.assign(item_idx=item_index.get_indexer(inter["item_id"]).astype(np.int64))
    inter = inter.drop_duplicates(["user_id", "item_id"])
    history, val_pos = time_validation_split(inter, val_fraction)
    if context_fraction > 0:
        ctx_pos, rank_pos = time_validation_split(history, 1.0 - context_fraction)
    else:
        ctx_pos, rank_pos = history, history
    train_pos = ctx_pos
    user_ids = np.sort(inter["user_id"].unique())
    user_index = pd.Index(user_ids)
    n_items, n_users = len(items), len(user_ids)

    vectors = topic_vectors(items, seed)
    uc = user_index.get_indexer(train_pos["user_id"])
    uf, itf = fit_als(uc, train_pos["item_idx"].to_numpy(), n_users, n_items)
    seen = np.bincount(train_pos["item_idx"], minlength=n_items) > 0
    x, y = vectors[seen].astype(np.float64), itf[seen].astype(np.float64)
    w = np.linalg.solve(x.T @ x + np.eye(TEXT_DIM), x.T @ y)
    bridge = (vectors @ w).astype(np.float32)
    prof = np.zeros((n_users, TEXT_DIM), np.float32)
    np.add.at(prof, uc, vectors[train_pos["item_idx"].to_numpy()])
    prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-8)
    ctx = context_from_training(items["item_id"], train_pos, vectors, itf, bridge, user_ids, uf, prof,
                                now_ts=int(train_pos["ts"].max()))
    return ctx, rank_pos, val_pos, make_candidates(ctx), history


def make_candidates(ctx: FeatureContext, n_cf: int = 30, n_pop: int = 15,
                    n_tail: int = 15) -> pd.DataFrame:
    """A stand-in for the candidate generators: ALS top, most popular, tail items nearest the profile.

    Seen items are not filtered out, so training positives that recall returns keep their flags.
    """
    tail = np.flatnonzero(ctx.item_segment == 1)
    top_pop = np.argsort(-ctx.item_pop)[:n_pop]
    rows = []
    for u, uid in enumerate(ctx.user_ids):
        cf = np.argsort(-(ctx.item_factors @ ctx.user_factors[u]))[:n_cf]
        tl = tail[np.argsort(-(ctx.item_vectors[tail] @ ctx.user_profiles[u]))[:n_tail]]
        for flag, its in (("from_cf", cf), ("from_pop", top_pop), ("from_tail", tl)):
            rows += [(uid, int(i), flag) for i in its]
    df = pd.DataFrame(rows, columns=["user_id", "item_idx", "src"])
    df["one"] = np.float32(1.0)
    wide = df.pivot_table(index=["user_id", "item_idx"], columns="src", values="one", aggfunc="max", fill_value=0)
    wide = wide.reset_index()
    for c in SOURCE_FLAGS:
        wide[c] = wide[c].astype(np.float32) if c in wide else np.zeros(len(wide), np.float32)
    return wide[["user_id", "item_idx", *SOURCE_FLAGS]]


def sample_tables(ctx, train_pos, val_pos, candidates, history, cfg: RankConfig, seed: int = 0):
    """Labelled train / validation tables; validation negatives avoid everything the user did before."""
    rng = np.random.default_rng(seed)
    train = sample_training_table(train_pos[["user_id", "item_idx", "ts"]], candidates, ctx, cfg, rng,
                                  seen=history[["user_id", "item_idx"]])
    val = sample_training_table(val_pos[["user_id", "item_idx", "ts"]], candidates, ctx, cfg, rng,
                                seen=history[["user_id", "item_idx"]])
    return train.sample(frac=1.0, random_state=seed).reset_index(drop=True), val
