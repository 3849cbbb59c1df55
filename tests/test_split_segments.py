"""Splits by time and popularity segments, on examples computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ltray.data import COLD, HEAD, TAIL, compute_segments, global_time_cut, temporal_holdout


def _log(rows) -> pd.DataFrame:
    """rows: (user, item, ts) in file order."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "ts": np.array([r[2] for r in rows], dtype=np.int64), "weight": np.ones(len(rows), np.float32),
    })


def _pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df["user_id"], df["item_id"], strict=True))


# -- temporal holdout -------------------------------------------------------------------
@pytest.fixture
def hand_log() -> pd.DataFrame:
    rows = []
    # A: 10 items in shuffled file order, times 1..10 -> 0.2*10+0.5 = 2.5 -> the last 2 (a9, a10).
    for t in (3, 10, 1, 7, 9, 2, 5, 8, 4, 6):
        rows.append(("A", f"a{t}", t))
    # B: 5 items, the last two at the same time: file order decides, b5 (later in file) is last -> test.
    rows += [("B", "b1", 10), ("B", "b2", 20), ("B", "b3", 30), ("B", "b4", 50), ("B", "b5", 50)]
    # C: 4 items, fewer than 5 -> all train.
    rows += [("C", "c1", 1), ("C", "c2", 2), ("C", "c3", 3), ("C", "c4", 4)]
    # D: x repeated at t=3 and t=9 counts once at t=3: 6 distinct items -> 0.2*6+0.5 = 1.7 -> 1 test
    # (d6 at t=7).
    rows += [("D", "x", 9), ("D", "d1", 1), ("D", "d2", 2), ("D", "x", 3), ("D", "d4", 4), ("D", "d5", 5),
             ("D", "d6", 7)]
    # E: 6 rows but only 4 distinct items -> below 5 -> all train.
    rows += [("E", "e1", 1), ("E", "e1", 2), ("E", "e2", 3), ("E", "e2", 4), ("E", "e3", 5), ("E", "e4", 6)]
    return _log(rows)


def test_temporal_holdout_by_hand(hand_log):
    train, test = temporal_holdout(hand_log, test_fraction=0.2, min_user_interactions=5)
    assert sorted(_pairs(test)) == [("A", "a10"), ("A", "a9"), ("B", "b5"), ("D", "d6")]
    assert sorted(train.loc[train["user_id"] == "A", "item_id"]) == sorted(f"a{t}" for t in range(1, 9))
    assert train.loc[train["user_id"] == "B", "item_id"].tolist() == ["b1", "b2", "b3", "b4"]
    assert train.loc[train["user_id"] == "C", "item_id"].tolist() == ["c1", "c2", "c3", "c4"]
    # The repeated pair is kept once, at its first time.
    d = train.loc[train["user_id"] == "D"]
    assert d["item_id"].tolist() == ["d1", "d2", "x", "d4", "d5"]
    assert d.loc[d["item_id"] == "x", "ts"].tolist() == [3]
    assert train.loc[train["user_id"] == "E", "item_id"].tolist() == ["e1", "e2", "e3", "e4"]
    assert train.loc[train["user_id"] == "E", "ts"].tolist() == [1, 3, 5, 6]
    assert len(train) + len(test) == 10 + 5 + 4 + 6 + 4
    assert list(train.columns) == list(hand_log.columns) == list(test.columns)


def test_ties_keep_file_order(hand_log):
    # Swap b4 and b5 in the file: now b4 is the later row at t=50 and goes to test.
    log = hand_log.copy()
    i4, i5 = log.index[log["item_id"] == "b4"][0], log.index[log["item_id"] == "b5"][0]
    log.loc[[i4, i5]] = log.loc[[i5, i4]].to_numpy()
    _, test = temporal_holdout(log)
    assert test.loc[test["user_id"] == "B", "item_id"].tolist() == ["b4"]


@pytest.mark.parametrize(
    ("n", "fraction", "n_test"),
    [(5, 0.2, 1), (7, 0.2, 1), (8, 0.2, 2), (12, 0.2, 2), (13, 0.2, 3), (20, 0.2, 4), (5, 0.5, 3),
     (6, 0.5, 3), (7, 0.5, 4), (5, 0.01, 1)],  # max(1, floor(f*n + 0.5)); at least one test interaction
)
def test_test_size_per_user(n, fraction, n_test):
    log = _log([("u", f"i{k}", 100 + k) for k in range(n)])
    train, test = temporal_holdout(log, test_fraction=fraction, min_user_interactions=5)
    assert test["item_id"].tolist() == [f"i{k}" for k in range(n - n_test, n)]
    assert len(train) == n - n_test


def test_min_user_interactions_is_the_threshold():
    log = _log([("u", f"i{k}", k) for k in range(4)])
    assert len(temporal_holdout(log, min_user_interactions=5)[1]) == 0
    train, test = temporal_holdout(log, min_user_interactions=4)
    assert test["item_id"].tolist() == ["i3"] and len(train) == 3


def test_holdout_invariants_on_generated_data(small_synthetic):
    log = small_synthetic.interactions
    # Shuffle the file order and add repeats, so the invariants cannot rest on a tidy input.
    rng = np.random.default_rng(0)
    repeats = log.sample(300, random_state=1).assign(ts=lambda d: d["ts"] + 1000)
    log = pd.concat([log, repeats]).iloc[rng.permutation(len(log) + len(repeats))].reset_index(drop=True)
    train, test = temporal_holdout(log, 0.2, 5)
    again = temporal_holdout(log, 0.2, 5)
    pd.testing.assert_frame_equal(train, again[0])
    pd.testing.assert_frame_equal(test, again[1])
    # No (user, item) pair is in both, and every pair appears once.
    assert not set(_pairs(train)) & set(_pairs(test))
    assert not train.duplicated(["user_id", "item_id"]).any()
    assert not test.duplicated(["user_id", "item_id"]).any()
    # Per user, every train interaction is no later than every test interaction.
    last_train = train.groupby("user_id")["ts"].max()
    first_test = test.groupby("user_id")["ts"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()
    # Every user with >= 5 distinct items has a test part of the right size; the others none.
    distinct = log.drop_duplicates(["user_id", "item_id"]).groupby("user_id").size()
    want = np.maximum(1, np.floor(0.2 * distinct + 0.5)).astype(int).where(distinct >= 5, 0)
    got = test.groupby("user_id").size().reindex(want.index, fill_value=0)
    assert (got == want).all()
    # Each kept pair is at its first time.
    first = log.groupby(["user_id", "item_id"])["ts"].min()
    both = pd.concat([train, test])
    assert (both.set_index(["user_id", "item_id"])["ts"] == first.reindex(both.set_index(
        ["user_id", "item_id"]).index)).all()


# -- global time cut ---------------------------------------------------------------------
def test_global_time_cut_by_hand():
    log = _log([(f"u{k % 3}", f"i{k}", k) for k in (4, 1, 10, 7, 2, 9, 3, 8, 6, 5)])
    # The 0.8 quantile of 1..10 is 8.2: times >= 9 test.
    train, test, cut = global_time_cut(log, 0.2)
    assert cut == 9
    assert sorted(test["ts"]) == [9, 10]
    assert sorted(train["ts"]) == list(range(1, 9))
    # The 0.75 quantile is 7.75: times >= 8 test.
    train, test, cut = global_time_cut(log, 0.25)
    assert cut == 8 and sorted(test["ts"]) == [8, 9, 10]


def test_global_time_cut_ties_and_repeats():
    # Repeats count once at their first time: (u, a) at 1 and 5 is one interaction at 1.
    log = _log([("u", "a", 1), ("u", "b", 2), ("v", "a", 2), ("v", "c", 2), ("w", "d", 3), ("u", "a", 5)])
    train, test, cut = global_time_cut(log, 0.5)
    # Times after dedupe: 1, 2, 2, 2, 3 -> median 2 -> every interaction at t=2 goes to test.
    assert cut == 2
    assert sorted(_pairs(train)) == [("u", "a")]
    assert sorted(_pairs(test)) == [("u", "b"), ("v", "a"), ("v", "c"), ("w", "d")]


def test_global_time_cut_leaves_late_items_cold(small_synthetic):
    train, test, cut = global_time_cut(small_synthetic.interactions, 0.2)
    assert train["ts"].max() < cut <= test["ts"].min()
    assert len(test) / (len(train) + len(test)) == pytest.approx(0.2, abs=0.02)


# -- segments -----------------------------------------------------------------------------
def _train_counts(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"u{k}", item, k) for item, n in counts.items() for k in range(n)]
    return _log(rows)


def test_segments_by_hand():
    # Counts a=4, b=3, c=2, d=1 (10 in all): prefixes cover .4, .7, .9 -> head {a, b, c}; e unseen -> cold.
    catalog = ["e", "d", "c", "b", "a"]
    seg = compute_segments(catalog, _train_counts({"a": 4, "b": 3, "c": 2, "d": 1}), head_share=0.8)
    assert seg.table["item_id"].tolist() == catalog  # catalog order is kept
    assert seg.table["count"].tolist() == [0, 1, 2, 3, 4]
    assert seg.table["segment"].tolist() == [COLD, TAIL, HEAD, HEAD, HEAD]
    assert seg.counts() == {HEAD: 3, TAIL: 1, COLD: 1}
    assert sorted(seg.ids(HEAD)) == ["a", "b", "c"]
    assert sorted(seg.ids(TAIL, COLD)) == ["d", "e"]
    assert seg.of(["a", "e", "d"]).tolist() == [HEAD, COLD, TAIL]
    assert seg.head_share == 0.8


def test_head_is_the_smallest_prefix_reaching_the_share():
    counts = {"a": 4, "b": 3, "c": 2, "d": 1}
    # Exactly 0.7 is reached by {a, b}: no third item is added.
    assert sorted(compute_segments(list(counts), _train_counts(counts), 0.7).ids(HEAD)) == ["a", "b"]
    # Just over 0.7 needs c as well.
    assert sorted(compute_segments(list(counts), _train_counts(counts), 0.71).ids(HEAD)) == ["a", "b", "c"]
    # One item holding 80% is the head alone.
    one = {"x": 8, "y": 1, "z": 1}
    assert compute_segments(list(one), _train_counts(one), 0.8).ids(HEAD).tolist() == ["x"]


def test_popularity_ties_break_by_item_id():
    counts = {"q": 2, "p": 2, "r": 1}  # 5 in all; 0.4 is reached by one of the two items with 2
    seg = compute_segments(["q", "p", "r"], _train_counts(counts), 0.4)
    assert seg.ids(HEAD).tolist() == ["p"]
    assert seg.of(["q", "r"]).tolist() == [TAIL, TAIL]


def test_segments_ignore_interactions_outside_the_catalog_and_count_repeats():
    train = _log([("u", "a", 1), ("u", "a", 2), ("v", "a", 3), ("u", "b", 4), ("u", "zz", 5)])
    seg = compute_segments(["a", "b", "c"], train, 0.5)
    assert seg.table["count"].tolist() == [3, 1, 0]
    assert seg.table["segment"].tolist() == [HEAD, TAIL, COLD]


def test_no_training_interactions_means_everything_is_cold():
    seg = compute_segments(["a", "b"], _log([]), 0.8)
    assert seg.counts() == {HEAD: 0, TAIL: 0, COLD: 2}


def test_head_covers_the_share_on_real_data(movielens):
    train, _ = temporal_holdout(movielens.interactions)
    seg = compute_segments(movielens.items["item_id"], train, 0.8)
    t = seg.table.sort_values("count", ascending=False)
    head = t[t["segment"] == HEAD]
    total = t["count"].sum()
    # Head covers >= 80%, and dropping its least popular item would fall below 80%.
    assert head["count"].sum() / total >= 0.8 > (head["count"].sum() - head["count"].min()) / total
    assert head["count"].min() >= t.loc[t["segment"] == TAIL, "count"].max()
    assert (t.loc[t["segment"] == COLD, "count"] == 0).all()
    assert (t.loc[t["segment"] == TAIL, "count"] > 0).all()
    assert len(head) < 0.25 * len(t)  # MovieLens has a long tail
