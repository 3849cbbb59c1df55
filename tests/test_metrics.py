"""Every metric on a tiny catalog whose expected values are computed by hand in the comments."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ltray.data import compute_segments
from ltray.data.segments import segment_codes, segments_from_counts
from ltray.eval.metrics import (
    decile_exposure,
    evaluate,
    exposure_counts,
    gini,
    lorenz_curve,
    popularity_deciles,
    to_csr,
)

# Six items. Training counts 10, 6, 2, 1, 0, 1 (total 20): items 0 and 1 cover 16/20 = 80% -> head;
# items 2, 3, 5 are seen -> tail; item 4 is never seen -> cold.
POP = np.array([10, 6, 2, 1, 0, 1], dtype=np.float64)
SEG = np.array([0, 0, 1, 1, 2, 1], dtype=np.int8)
# Three users; user 2 has no test items (its list counts only for the list metrics).
RECS = np.array([[0, 2, 4], [1, 3, -1], [5, 0, 1]], dtype=np.int64)
TEST = {0: np.array([2, 4, 1]), 1: np.array([0])}
L3, L4 = 1 / np.log2(3), 1 / np.log2(4)  # discounts of ranks 2 and 3


@pytest.fixture(scope="module")
def m():
    return evaluate(RECS, TEST, SEG, POP, ks=(2, 3))


def test_segments_from_counts_follows_the_head_share_rule():
    assert segments_from_counts(POP, 0.8).tolist() == SEG.tolist()
    # Same rule as the data layer's compute_segments (no popularity ties at the cut here).
    ids = [f"i{j}" for j in range(6)]
    train = pd.DataFrame({"item_id": np.repeat(ids, POP.astype(int))})
    labels = compute_segments(ids, train, 0.8).table["segment"]
    assert segment_codes(labels).tolist() == SEG.tolist()
    with pytest.raises(ValueError, match="unknown segment"):
        segment_codes(["head", "warm"])


def test_recall_ndcg_hitrate_by_hand(m):
    # k=2: user 0 sees [0, 2] -> 1 of its 3 test items (rank 2); user 1 sees [1, 3] -> 0 of 1.
    assert m["n_users"] == 2
    assert m["Recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    # NDCG@2 user 0: DCG = 1/log2(3); ideal over min(3, 2) = 2 hits: 1 + 1/log2(3).
    assert m["NDCG@2"] == pytest.approx((L3 / (1 + L3) + 0) / 2)
    assert m["HitRate@2"] == pytest.approx(0.5)
    # k=3: user 0 sees [0, 2, 4] -> hits at ranks 2 and 3: recall 2/3, DCG = 1/log2(3) + 1/log2(4),
    # ideal over 3 hits: 1 + 1/log2(3) + 1/log2(4).
    assert m["Recall@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["NDCG@3"] == pytest.approx(((L3 + L4) / (1 + L3 + L4)) / 2)
    assert m["HitRate@3"] == pytest.approx(0.5)


def test_segment_recalls_average_over_users_with_that_segment(m):
    # Head test items: user 0 {1}, user 1 {0}: never recommended -> 0.
    assert m["HeadRecall@2"] == 0.0 and m["HeadRecall@3"] == 0.0
    # Tail test items: only user 0 has one ({2}), found at rank 2 -> 1.0 (user 1 does not count).
    assert m["TailRecall@2"] == pytest.approx(1.0)
    # Cold test items: only user 0 ({4}), found at rank 3, so only at k=3.
    assert m["ColdRecall@2"] == 0.0
    assert m["ColdRecall@3"] == pytest.approx(1.0)


def test_list_metrics_by_hand(m):
    # Top-2 of all three lists: {0, 2}, {1, 3}, {5, 0} -> 5 distinct of 6 items.
    assert m["Coverage@2"] == pytest.approx(5 / 6)
    assert m["Coverage@3"] == pytest.approx(1.0)
    # APLT (tail + cold share per list, averaged): k=2: 1/2, 1/2, 1/2; k=3: 2/3 (items 2 and 4),
    # 1/2 (user 1's list has 2 valid slots, one tail), 1/3 (item 5).
    assert m["APLT@2"] == pytest.approx(0.5)
    assert m["APLT@3"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 3) / 3)
    # Gini@2 counts [2,1,1,1,0,1] sorted [0,1,1,1,1,2]: sum (2i-7) x_i = -3-1+1+3+10 = 10; 10 / (6*6).
    assert m["Gini@2"] == pytest.approx(10 / 36)
    # Gini@3 counts [2,2,1,1,1,1] sorted [1,1,1,1,2,2]: -5-3-1+1+6+10 = 8; 8 / (6*8).
    assert m["Gini@3"] == pytest.approx(1 / 6)
    # AvgPop@2: (10+2)/2, (6+1)/2, (1+10)/2 -> 6, 3.5, 5.5; AvgPop@3: 12/3, 7/2 (padding skipped), 17/3.
    assert m["AvgPop@2"] == pytest.approx(5.0)
    assert m["AvgPop@3"] == pytest.approx((4 + 3.5 + 17 / 3) / 3)


def test_gini_extremes():
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(3 / 4)  # 1 - 1/n
    assert gini(np.zeros(5)) == 0.0


def test_perfect_list_has_ndcg_one_and_recall_capped_by_k():
    recs = np.array([[3, 1, 0, 2]])
    m = evaluate(recs, {0: [3, 1]}, np.zeros(5, np.int8), np.ones(5), ks=(1, 2, 4))
    assert m["NDCG@1"] == m["NDCG@2"] == m["NDCG@4"] == pytest.approx(1.0)
    # Recall@1 = 1 hit / 2 test items (the usual definition: not normalised by min(|test|, k)).
    assert m["Recall@1"] == pytest.approx(0.5)
    assert m["Recall@2"] == pytest.approx(1.0)


def test_sparse_test_and_user_rows_give_the_same_numbers(m):
    truth = to_csr(TEST, 3, 6)
    assert sp.issparse(truth) and truth.nnz == 4
    assert evaluate(RECS, truth, SEG, POP, ks=(2, 3)) == pytest.approx(m)
    # Lists in another order, mapped by user_rows.
    perm = np.array([2, 0, 1])
    assert evaluate(RECS[perm], TEST, SEG, POP, ks=(2, 3), user_rows=perm) == pytest.approx(m)


def test_bad_inputs_fail_loudly():
    with pytest.raises(ValueError, match="repeats an item"):
        evaluate(np.array([[1, 1]]), {0: [1]}, SEG, POP, ks=(2,))
    with pytest.raises(ValueError, match="have no list"):
        evaluate(RECS[:1], TEST, SEG, POP, ks=(2,))
    with pytest.raises(ValueError, match="outside"):
        evaluate(np.array([[9, 1]]), {0: [1]}, SEG, POP, ks=(2,))
    with pytest.raises(ValueError, match="width"):
        evaluate(RECS, TEST, SEG, POP, ks=(5,))


def test_decile_exposure_and_lorenz_by_hand():
    # Popularity order 0, 1, 2, 3, 5, 4 -> three equal bins {0, 1}, {2, 3}, {5, 4}.
    assert popularity_deciles(POP, 3).tolist() == [0, 0, 1, 1, 2, 2]
    # Top-3 exposure: item 0 twice, item 1 twice, items 2..5 once -> 4, 2, 2 of 8 slots.
    assert exposure_counts(RECS, 6, 3).tolist() == [2, 2, 1, 1, 1, 1]
    assert decile_exposure(RECS, POP, k=3, n_bins=3) == pytest.approx([0.5, 0.25, 0.25])
    x, y = lorenz_curve(RECS, 6, k=3)
    # Sorted counts [1,1,1,1,2,2] / 8, cumulated.
    assert y == pytest.approx([0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 6 / 8, 1])
    assert x == pytest.approx(np.arange(7) / 6)
    # The Lorenz area and the Gini coefficient agree: G = 1 - 2 * area.
    area = np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))
    assert 1 - 2 * area == pytest.approx(evaluate(RECS, TEST, SEG, POP, ks=(3,))["Gini@3"])


def test_movielens_sized_evaluation_is_fast():
    rng = np.random.default_rng(0)
    n_users, n_items = 610, 9742
    pop = rng.zipf(1.5, n_items).astype(float)
    seg = segments_from_counts(pop)
    recs = np.stack([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    test = {u: rng.choice(n_items, 1 + u % 30, replace=False) for u in range(n_users)}
    t = time.perf_counter()
    m = evaluate(recs, test, seg, pop, ks=(10, 20))
    assert time.perf_counter() - t < 1.0
    assert 0 <= m["Recall@20"] < 0.05  # random lists over 9,742 items rarely hit
