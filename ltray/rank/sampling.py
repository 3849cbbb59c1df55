"""Training samples for the CTR model: positives, mixed negatives, and a split by time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ltray.config import RankConfig
from ltray.rank.features import SOURCE_FLAGS, FeatureContext

RANDOM, POPULAR, HARD = 0, 1, 2


def time_validation_split(table: pd.DataFrame, fraction: float, ts_col: str = "ts", by: str | None = None
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest ``fraction`` of rows (by time) validates; the rest trains. Never a shuffle.

    With ``by`` (e.g. "user_id") the cut is per group: each user's latest rows validate, so every
    validation row is at or after that user's training rows and every user is represented (a
    global cut lets the few users active last dominate the validation set). Without it, rows at
    the global cut time all go to validation, so every validation row is at or after every
    training row.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    ts = table[ts_col].to_numpy()
    if by is None:
        is_val = ts >= np.quantile(ts, 1.0 - fraction, method="higher")
    else:
        cut, single = _group_cuts(pd.factorize(table[by])[0], ts, 1.0 - fraction)
        # A user whose rows share one time stays in training rather than all in validation.
        is_val = (ts >= cut) & ~single
    if is_val.all() or not is_val.any():
        raise ValueError(f"cannot split {len(table)} rows by time at fraction {fraction}: "
                         "too few distinct timestamps")
    return table.loc[~is_val].reset_index(drop=True), table.loc[is_val].reset_index(drop=True)


def _group_cuts(groups: np.ndarray, ts: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its group's q-quantile of ts (numpy's method="higher") and whether the group has one time.

    Vectorised (sort once) rather than a Python call per user: training tables have millions of rows.
    """
    order = np.lexsort((ts, groups))
    g, t = groups[order], ts[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    cut_of_group = t[starts + np.ceil(q * (sizes - 1)).astype(np.int64)]
    single_of_group = t[starts] == t[starts + sizes - 1]
    group_of = np.empty(groups.max() + 1 if len(groups) else 0, np.int64)
    group_of[g[starts]] = np.arange(len(starts))
    return cut_of_group[group_of[groups]], single_of_group[group_of[groups]]


def _pair_keys(user_codes: np.ndarray, item_idx: np.ndarray, n_items: int) -> np.ndarray:
    return user_codes.astype(np.int64) * n_items + item_idx.astype(np.int64)


def attach_flags(table: pd.DataFrame, candidates: pd.DataFrame | None) -> pd.DataFrame:
    """Source flags of each (user, item) from the candidate table; zeros where recall did not return it.

    Positives and negatives get their flags the same way, so a flag never tells the label.
    """
    out = table[["user_id", "item_idx"]].copy()
    if candidates is not None and len(candidates):
        cols = [c for c in SOURCE_FLAGS if c in candidates]
        flags = candidates[["user_id", "item_idx", *cols]].groupby(["user_id", "item_idx"], sort=False).max()
        out = out.join(flags, on=["user_id", "item_idx"])
    for c in SOURCE_FLAGS:
        out[c] = out[c].fillna(0).astype(np.float32) if c in out else np.zeros(len(out), np.float32)
    for c in table.columns:
        if c not in out:
            out[c] = table[c].to_numpy()
    return out


def sample_training_table(positives: pd.DataFrame, candidates: pd.DataFrame | None, ctx: FeatureContext,
                          cfg: RankConfig, rng: np.random.Generator, seen: pd.DataFrame | None = None
                          ) -> pd.DataFrame:
    """Positives (label 1) plus ``negatives_per_positive`` sampled negatives (label 0) per positive, in random row order.

    Negatives mix random catalog items, popularity**exponent items and hard negatives (candidates
    the user did not take) per ``cfg.negative_mix``; a user without hard candidates gets popular
    ones instead. A negative never equals one of the user's positives, nor any pair in ``seen``
    (e.g. the user's training items when sampling validation). Columns: user_id, item_idx,
    from_* flags, label, plus ``ts`` when the positives carry it (negatives share their positive's ts).
    """
    pos = positives.reset_index(drop=True)
    n_items, k = ctx.n_items, cfg.negatives_per_positive
    users = pos["user_id"].astype(str).to_numpy()
    pos_items = pos["item_idx"].to_numpy(dtype=np.int64)
    excl = pos[["user_id", "item_idx"]] if seen is None else pd.concat(
        [pos[["user_id", "item_idx"]], seen[["user_id", "item_idx"]]], ignore_index=True)
    user_codes, uniq_users = pd.factorize(pd.concat([pd.Series(users), excl["user_id"].astype(str)]))
    pos_codes, excl_codes = user_codes[:len(users)], user_codes[len(users):]
    forbidden = np.unique(_pair_keys(excl_codes, excl["item_idx"].to_numpy(), n_items))

    # Hard pools: each user's candidates that are not positives, as CSR-like arrays.
    hard_ptr = np.zeros(len(uniq_users) + 1, np.int64)
    hard_items = np.zeros(0, np.int64)
    if candidates is not None and len(candidates):
        c = candidates[["user_id", "item_idx"]].drop_duplicates()
        c_codes = pd.Index(uniq_users).get_indexer(c["user_id"].astype(str))
        c_items = c["item_idx"].to_numpy(dtype=np.int64)
        ok = c_codes >= 0
        ok &= ~np.isin(_pair_keys(np.maximum(c_codes, 0), c_items, n_items), forbidden)
        order = np.argsort(c_codes[ok], kind="stable")
        hard_items = c_items[ok][order]
        hard_ptr[1:] = np.cumsum(np.bincount(c_codes[ok], minlength=len(uniq_users)))

    pop_w = np.power(ctx.item_pop.astype(np.float64), cfg.popularity_exponent) * (ctx.item_pop > 0)
    pop_cdf = np.cumsum(pop_w)
    if pop_cdf[-1] <= 0:
        pop_cdf = np.arange(1, n_items + 1, dtype=np.float64)

    neg_users = np.repeat(pos_codes, k)
    kinds = rng.choice(3, size=len(neg_users), p=np.asarray(cfg.negative_mix, np.float64))
    n_hard = hard_ptr[neg_users + 1] - hard_ptr[neg_users]
    kinds[(kinds == HARD) & (n_hard == 0)] = POPULAR

    def draw(rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), np.int64)
        kk = kinds[rows]
        m = kk == RANDOM
        out[m] = rng.integers(n_items, size=int(m.sum()))
        m = kk == POPULAR
        out[m] = np.minimum(np.searchsorted(pop_cdf, rng.random(int(m.sum())) * pop_cdf[-1], side="right"),
                            n_items - 1)
        m = kk == HARD
        u = neg_users[rows[m]]
        out[m] = hard_items[hard_ptr[u] + (rng.random(int(m.sum())) * n_hard[rows[m]]).astype(np.int64)]
        return out

    neg_items = draw(np.arange(len(neg_users)))
    bad = np.isin(_pair_keys(neg_users, neg_items, n_items), forbidden)
    for _ in range(cfg.negative_redraws):
        if not bad.any():
            break
        rows = np.flatnonzero(bad)
        neg_items[rows] = draw(rows)
        bad[rows] = np.isin(_pair_keys(neg_users[rows], neg_items[rows], n_items), forbidden)
    keep = ~bad

    table = pd.DataFrame({
        "user_id": np.concatenate([users, np.asarray(uniq_users)[neg_users[keep]]]),
        "item_idx": np.concatenate([pos_items, neg_items[keep]]),
        "label": np.concatenate([np.ones(len(users), np.float32), np.zeros(int(keep.sum()), np.float32)]),
    })
    if "ts" in pos:
        ts = pos["ts"].to_numpy(dtype=np.int64)
        table["ts"] = np.concatenate([ts, np.repeat(ts, k)[keep]])
    # Rows in random order: a reader streaming the table must never see all positives, then all
    # negatives: the model would swing between epochs.
    table = table.iloc[rng.permutation(len(table))].reset_index(drop=True)
    return attach_flags(table, candidates)
