"""The ranker's training table: row order and the time-based validation cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rank_helpers import build_case

from ltray.config import RankConfig
from ltray.rank.sampling import sample_training_table, time_validation_split

CFG = RankConfig(negatives_per_positive=3)


@pytest.fixture(scope="module")
def case(small_synthetic):
    return build_case(small_synthetic)


def test_rows_come_in_random_order_and_depend_only_on_the_seed(case):
    ctx, train_pos, _val, cands, _hist = case
    pos = train_pos[["user_id", "item_idx", "ts"]]
    a = sample_training_table(pos, cands, ctx, CFG, np.random.default_rng(7))
    b = sample_training_table(pos, cands, ctx, CFG, np.random.default_rng(7))
    pd.testing.assert_frame_equal(a, b)
    labels = a["label"].to_numpy()
    n_pos = int(labels.sum())
    # Not positives first: the first n_pos rows hold about the table's share of positives.
    assert labels[:n_pos].mean() < 0.5
    first, second = labels[: len(labels) // 2].mean(), labels[len(labels) // 2:].mean()
    assert abs(first - second) < 0.05


def _table() -> pd.DataFrame:
    # user a: 10 rows at t 0..9; user b: 10 rows at t 100..109; user c: one timestamp only.
    return pd.DataFrame({"user_id": ["a"] * 10 + ["b"] * 10 + ["c"] * 3,
                         "ts": list(range(10)) + list(range(100, 110)) + [50, 50, 50],
                         "label": 1.0})


def test_per_user_cut_validates_each_users_latest_rows():
    train, val = time_validation_split(_table(), 0.2, by="user_id")
    assert set(val["user_id"]) == {"a", "b"}  # every user with two or more times is represented
    for u, g in val.groupby("user_id"):
        assert g["ts"].min() > train.loc[train["user_id"] == u, "ts"].max()
        assert len(g) == 2
    assert (train["user_id"] == "c").sum() == 3  # one timestamp only: it trains


def test_global_cut_lets_the_latest_user_take_all_of_validation():
    train, val = time_validation_split(_table(), 0.2)
    assert set(val["user_id"]) == {"b"}
    assert val["ts"].min() >= train["ts"].max()
