"""The pure parts of the composition: the tail-aware blend, the score combination, the operating-point rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ltray.blend import blend
from ltray.recommend import combine
from ltray.tuning import choose_tail_share


def _cands(segments, scores):
    return pd.DataFrame({"item_idx": np.arange(len(scores), dtype=np.int64), "score": np.asarray(scores, np.float32),
                         "segment": segments, "source": ["cf"] * len(scores)})


# Ten candidates: head items score highest, then tail, then cold.
SEG = ["head"] * 5 + ["tail"] * 3 + ["cold"] * 2
SCORES = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]


def test_blend_without_quota_is_top_k_by_score():
    out = blend(_cands(SEG, SCORES), 4, 0.0)
    assert out["item_idx"].tolist() == [0, 1, 2, 3]


def test_tail_quota_takes_the_best_tail_items_and_drops_the_weakest_head():
    out = blend(_cands(SEG, SCORES), 4, 0.5)  # 2 of 4 slots for tail/cold
    assert out["item_idx"].tolist() == [0, 1, 5, 6]
    assert (out["segment"] != "head").sum() == 2


def test_tail_quota_counts_tail_items_that_win_on_score():
    scores = [10, 9, 2, 1, 0, 9.5, 4, 3, 2, 1]  # tail item 5 ranks second on its own
    out = blend(_cands(SEG, scores), 4, 0.25)
    assert out["item_idx"].tolist() == [0, 5, 1, 6]


def test_cold_quota_comes_on_top_of_the_tail_quota():
    out = blend(_cands(SEG, SCORES), 5, 0.2, cold_share=0.2)
    segs = out["segment"].tolist()
    assert segs.count("cold") == 1 and segs.count("tail") == 1 and segs.count("head") == 3
    assert 8 in out["item_idx"].tolist()  # the best cold item


def test_quota_larger_than_the_pool_fills_from_the_rest():
    out = blend(_cands(SEG, SCORES), 8, 1.0)
    assert len(out) == 8 and out["item_idx"].is_unique
    assert (out["segment"] != "head").sum() == 5  # every tail/cold candidate, then head items


def test_boost_lets_exactly_the_quota_in_and_keeps_scores_ordered():
    out = blend(_cands(SEG, SCORES), 4, 0.5, method="boost")
    assert (out["segment"] != "head").sum() >= 2
    assert out["score"].is_monotonic_decreasing


def test_combine_weights_the_ranker_logit():
    cf = np.array([1.0, 0.0])
    logit = np.array([0.0, 2.0])
    assert np.argmax(combine(cf, logit, 0.0)) == 0  # ALS order
    assert np.argmax(combine(cf, logit, 8.0)) == 1  # the ranker decides
    np.testing.assert_allclose(combine(cf, None, 8.0), cf)


@pytest.mark.parametrize("loss, expect", [(0.02, 0.1), (0.0, 0.0), (0.5, 0.2)])
def test_operating_point_rule(loss, expect):
    curve = [
        {"tail_share": 0.0, "Recall@20": 0.100, "TailRecall@20": 0.000, "ColdRecall@20": 0.0},
        {"tail_share": 0.1, "Recall@20": 0.099, "TailRecall@20": 0.010, "ColdRecall@20": 0.0},
        {"tail_share": 0.2, "Recall@20": 0.090, "TailRecall@20": 0.020, "ColdRecall@20": 0.0},
    ]
    assert choose_tail_share(curve, cf_recall=0.100, max_loss=loss)["tail_share"] == expect


def test_operating_point_rule_falls_back_to_the_most_accurate_point():
    curve = [{"tail_share": 0.1, "Recall@20": 0.05, "TailRecall@20": 0.02},
             {"tail_share": 0.0, "Recall@20": 0.08, "TailRecall@20": 0.00}]
    assert choose_tail_share(curve, cf_recall=0.1, max_loss=0.02)["tail_share"] == 0.0
