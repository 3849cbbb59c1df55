"""Splits by time: a per-user temporal holdout, and a global time cut."""

from __future__ import annotations

import numpy as np
import pandas as pd


def dedupe_first(interactions: pd.DataFrame) -> pd.DataFrame:
    """A repeated (user, item) pair counts once, at its first time; ties keep file order."""
    df = interactions.reset_index(drop=True)
    order = np.lexsort((np.arange(len(df)), df["ts"].to_numpy()))
    df = df.iloc[order]
    return df.loc[~df.duplicated(["user_id", "item_id"], keep="first")]


def temporal_holdout(interactions: pd.DataFrame, test_fraction: float = 0.2,
                     min_user_interactions: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each user with >= min interactions, the last max(1, floor(f*n + 0.5)) go to test.

    Interactions are first de-duplicated per (user, item) at their first time and
    ordered by time with ties in file order. Users with fewer interactions stay in train.
    """
    df = dedupe_first(interactions)
    # Stable sort by user keeps each user's time order from dedupe_first.
    df = df.sort_values("user_id", kind="stable").reset_index(drop=True)
    n = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    pos = df.groupby("user_id", sort=False).cumcount().to_numpy()
    n_test = np.maximum(1, np.floor(test_fraction * n + 0.5)).astype(int)
    is_test = (n >= min_user_interactions) & (pos >= n - n_test)
    return df.loc[~is_test].reset_index(drop=True), df.loc[is_test].reset_index(drop=True)


def global_time_cut(interactions: pd.DataFrame, test_fraction: float = 0.2
                    ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Everything before the (1 - f) time quantile trains; the rest tests. Returns (train, test, cut).

    The cut is the quantile rounded up to a whole second, so a quantile that falls between two
    timestamps does not pull the earlier one into test.
    """
    df = dedupe_first(interactions).reset_index(drop=True)
    cut = int(np.ceil(np.quantile(df["ts"].to_numpy(), 1.0 - test_fraction)))
    is_test = df["ts"].to_numpy() >= cut
    return df.loc[~is_test].reset_index(drop=True), df.loc[is_test].reset_index(drop=True), cut
