"""The pure parts of the composition: the tail-aware blend, the score combination, the operating-point rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltray.blend import blend, blend_positions
from ltray.recommend import combine
from ltray.tuning import choose_tail_share, long_tail_value, most_accurate_weight


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


def test_recall_floor_in_standard_errors_keeps_a_noisy_point_out():
    curve = [
        {"tail_share": 0.0, "Recall@20": 0.100, "TailRecall@20": 0.000, "floor_se": 0.0002},
        {"tail_share": 0.1, "Recall@20": 0.099, "TailRecall@20": 0.010, "floor_se": 0.0005},
        {"tail_share": 0.2, "Recall@20": 0.0985, "TailRecall@20": 0.020, "floor_se": 0.004},
    ]
    assert choose_tail_share(curve, cf_recall=0.1, max_loss=0.02)["tail_share"] == 0.2  # plain floor 0.098
    assert choose_tail_share(curve, cf_recall=0.1, max_loss=0.02, z=1.0)["tail_share"] == 0.1


def test_ranker_weight_is_chosen_for_accuracy_before_the_shares():
    # w=32 holds more tail on validation, but w=8 is the more accurate ranking without quotas: the
    # shares are traded at w=8 only, even though w=32's tail point also keeps the floor.
    def pt(w, share, recall, tail):
        return {"ranker_weight": w, "tail_share": share, "cold_share": 0.0, "Recall@20": recall,
                "TailRecall@20": tail, "ColdRecall@20": 0.0}

    curve = [pt(8, 0.0, 0.110, 0.00), pt(8, 0.1, 0.100, 0.01), pt(8, 0.2, 0.090, 0.02),
             pt(32, 0.0, 0.105, 0.00), pt(32, 0.1, 0.099, 0.03)]
    chosen = choose_tail_share(curve, cf_recall=0.1, max_loss=0.02)
    assert (chosen["ranker_weight"], chosen["tail_share"]) == (8, 0.1)
    assert most_accurate_weight(curve) == curve[:3]
    # one weight only (blend.ranker_weight set) or no point without quotas: the whole curve
    assert most_accurate_weight(curve[3:]) == curve[3:] and most_accurate_weight([curve[1], curve[4]]) == [curve[1],
                                                                                                          curve[4]]


def test_user_recall_averages_to_evaluate_and_its_gap_se_is_paired():
    from ltray.eval.metrics import evaluate
    from ltray.tuning import floor_gap_se
    from ltray.validation import user_recall

    rng = np.random.default_rng(0)
    lists = np.stack([rng.permutation(50)[:20] for _ in range(30)])
    lists[3, 15:] = -1  # a short list
    held = {p: rng.choice(50, size=rng.integers(1, 6), replace=False) for p in range(30) if p % 4}
    per_user = user_recall(lists, held)
    assert len(per_user) == len(held)
    seg, pop = np.zeros(50, np.int64), np.ones(50)
    assert per_user.mean() == pytest.approx(evaluate(lists, held, seg, pop, ks=(20,))["Recall@20"])
    # Each user's share of held items in their list, the short list (-1 padding) included.
    expected = [np.isin(held[p], lists[p, :20]).sum() / len(held[p]) for p in sorted(held)]
    np.testing.assert_allclose(per_user, expected)
    assert 3 in held and (per_user > 0).any() and (per_user < 1).any()
    # The same lists as CF give a gap of exactly max_loss x recall per user; its se is that of the recall.
    assert floor_gap_se(per_user, per_user, 0.02) == pytest.approx(0.02 * per_user.std(ddof=1) / np.sqrt(len(held)))
    assert floor_gap_se(per_user, per_user, 0.0) == 0.0


# -- the numpy blend against the pandas blend it replaced (kept here as the reference) ----------------------
def _reference_blend(cands: pd.DataFrame, k: int, tail_share: float, method: str, cold_share: float):
    if len(cands) == 0:
        return cands
    ranked = cands.sort_values("score", ascending=False, kind="stable")
    seg = ranked["segment"].to_numpy()
    is_tail = seg != "head"
    q, qc = int(round(tail_share * k)), min(k, int(round(cold_share * k)))
    if method == "boost" and q and not qc:
        if is_tail[:k].sum() >= q:
            return ranked.head(k)
        scores = ranked["score"].to_numpy(np.float64)
        tail_scores = np.sort(scores[is_tail])[::-1]
        if len(tail_scores) == 0 or (~is_tail).sum() == 0:
            return ranked.head(k)
        kth_head = np.sort(scores[~is_tail])[::-1][min(k - q, (~is_tail).sum() - 1)]
        gap = max(0.0, kth_head - tail_scores[min(q, len(tail_scores)) - 1]) + 1e-6
        boosted = ranked.assign(score=np.where(is_tail, scores + gap, scores))
        return boosted.sort_values("score", ascending=False, kind="stable").head(k)
    cold_pick = ranked.loc[seg == "cold"].head(qc)
    tail_pick = ranked.loc[is_tail].drop(index=cold_pick.index).head(min(q, k - len(cold_pick)))
    picked = pd.concat([cold_pick, tail_pick])
    rest = ranked.drop(index=picked.index).head(k - len(picked))
    return pd.concat([rest, picked]).sort_values("score", ascending=False, kind="stable")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_numpy_blend_equals_the_pandas_reference(data):
    n = data.draw(st.integers(0, 40))
    # Few distinct scores, so ties (and their order) are exercised; NaN too.
    scores = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, -1.0, float("nan")]), min_size=n,
                                max_size=n))
    segs = data.draw(st.lists(st.sampled_from(["head", "tail", "cold"]), min_size=n, max_size=n))
    k = data.draw(st.integers(1, 25))
    share = data.draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]))
    cold = data.draw(st.sampled_from([0.0, 0.0, 0.1, 0.3]))
    method = data.draw(st.sampled_from(["quota", "boost"]))
    cands = _cands(segs, scores)
    want = _reference_blend(cands, k, share, method, cold)
    got = blend(cands, k, share, method, cold)
    assert got["item_idx"].tolist() == want["item_idx"].tolist()
    np.testing.assert_array_equal(got["score"].to_numpy(np.float64), want["score"].to_numpy(np.float64))
    codes = np.array([{"head": 0, "tail": 1, "cold": 2}[s] for s in segs], np.int8)
    pos, _ = blend_positions(cands["score"].to_numpy(), codes, k, share, method, cold)
    assert pos.tolist() == want["item_idx"].tolist()  # item_idx == row position here


def test_cold_quota_follows_the_cold_score_when_given():
    # the final score prefers cold item 8; the cold score (text closeness) prefers cold item 9
    cold_score = np.array([np.nan] * 8 + [0.1, 0.9])
    cands = _cands(SEG, SCORES).assign(closeness=cold_score)
    assert 8 in blend(cands, 5, 0.0, cold_share=0.2)["item_idx"].tolist()
    out = blend(cands, 5, 0.0, cold_share=0.2, cold_score="closeness")
    assert out["item_idx"].tolist() == [0, 1, 2, 3, 9]  # still ordered by the final score
    # cold items without a cold score (NaN) come last among the cold
    none_scored = cands.assign(closeness=[np.nan] * 9 + [0.5])
    assert 9 in blend(none_scored, 5, 0.0, cold_share=0.2, cold_score="closeness")["item_idx"].tolist()


def test_balanced_objective_keeps_both_kinds_of_long_tail():
    curve = [
        {"tail_share": 0.2, "cold_share": 0.0, "Recall@20": 0.099, "TailRecall@20": 0.040, "ColdRecall@20": 0.0},
        {"tail_share": 0.1, "cold_share": 0.1, "Recall@20": 0.099, "TailRecall@20": 0.020, "ColdRecall@20": 0.015},
        {"tail_share": 0.0, "cold_share": 0.2, "Recall@20": 0.099, "TailRecall@20": 0.002, "ColdRecall@20": 0.030},
        {"tail_share": 0.1, "cold_share": 0.2, "Recall@20": 0.090, "TailRecall@20": 0.030, "ColdRecall@20": 0.030},
    ]
    assert choose_tail_share(curve, cf_recall=0.1, max_loss=0.02, objective="sum")["tail_share"] == 0.2
    assert choose_tail_share(curve, cf_recall=0.1, max_loss=0.02)["tail_share"] == 0.1  # balanced is the default
    # sqrt(0.02 * 0.015) is the most
    balanced = choose_tail_share(curve, cf_recall=0.1, max_loss=0.02, objective="balanced")
    assert (balanced["tail_share"], balanced["cold_share"]) == (0.1, 0.1)
    assert long_tail_value(curve[0], "balanced") == 0.0 and long_tail_value(curve[0], "sum") == pytest.approx(0.04)


def test_balanced_objective_falls_back_to_the_sum_only_when_one_kind_is_never_hit():
    # No tail item is found at any point (a tail nothing predicts): cold slots must still count.
    curve = [
        {"tail_share": 0.0, "cold_share": 0.0, "Recall@20": 0.100, "TailRecall@20": 0.0, "ColdRecall@20": 0.0},
        {"tail_share": 0.0, "cold_share": 0.1, "Recall@20": 0.099, "TailRecall@20": 0.0, "ColdRecall@20": 0.020},
        {"tail_share": 0.1, "cold_share": 0.0, "Recall@20": 0.099, "TailRecall@20": 0.0, "ColdRecall@20": 0.0},
    ]
    chosen = choose_tail_share(curve, cf_recall=0.1, max_loss=0.02)
    assert (chosen["tail_share"], chosen["cold_share"]) == (0.0, 0.1)
    # and the same the other way round: tail hits, no cold hit anywhere
    flipped = [{**c, "TailRecall@20": c["ColdRecall@20"], "ColdRecall@20": 0.0} for c in curve]
    assert choose_tail_share(flipped, cf_recall=0.1, max_loss=0.02)["cold_share"] == 0.1
    # both kinds are hit, but never at one point: no slot serves both, so none is spent
    apart = [curve[0], curve[1], {**curve[2], "TailRecall@20": 0.010}]
    chosen = choose_tail_share(apart, cf_recall=0.1, max_loss=0.02)
    assert (chosen["tail_share"], chosen["cold_share"]) == (0.0, 0.0)
    assert choose_tail_share(apart, cf_recall=0.1, max_loss=0.02, objective="sum")["cold_share"] == 0.1
    assert choose_tail_share([*apart, {**curve[1], "TailRecall@20": 0.001, "Recall@20": 0.0985}],
                             cf_recall=0.1, max_loss=0.02)["TailRecall@20"] == 0.001  # both: balanced again
    # cold is hit, but only below the floor: slots cost too much there, so none are bought (not the sum,
    # which would spend the floor on tail slots alone)
    below = [curve[0], {**curve[1], "Recall@20": 0.090}, {**curve[2], "TailRecall@20": 0.010}]
    chosen = choose_tail_share(below, cf_recall=0.1, max_loss=0.02)
    assert (chosen["tail_share"], chosen["cold_share"]) == (0.0, 0.0)
    assert choose_tail_share(below[::2], cf_recall=0.1, max_loss=0.02)["tail_share"] == 0.1  # no cold anywhere


def test_affinity_quotas_scale_with_the_users_history_and_stop_at_the_cap(small_config):
    from types import SimpleNamespace

    from ltray.recommend import Recommender
    from ltray.user_state import UserState

    # shares_for reads only the config, its own shares and the average affinity of the models.
    rec = Recommender.__new__(Recommender)
    rec.cfg, rec.tail_share, rec.cold_share, rec.quota_by = small_config, 0.2, 0.1, "affinity"
    rec.models = SimpleNamespace(mean_tail_affinity=0.25)
    z = np.zeros(2, np.float32)

    def user(affinity):
        return UserState(z, z, np.zeros(0, np.int64), np.zeros(0, np.int64), tail_affinity=affinity)

    assert rec.shares_for(user(0.25)) == pytest.approx((0.2, 0.1))       # the average user: the shares as set
    assert rec.shares_for(user(0.125)) == pytest.approx((0.1, 0.05))     # half the affinity: half the slots
    assert rec.shares_for(user(0.0)) == (0.0, 0.0)                       # head-only history: none
    cap = small_config.blend.max_user_share
    assert sum(rec.shares_for(user(1.0))) == pytest.approx(cap)          # 4x the average, capped
    assert rec.shares_for(user(1.0))[0] / rec.shares_for(user(1.0))[1] == pytest.approx(2.0)
    assert rec.shares_for(user(0.125), quota_by="uniform") == (0.2, 0.1)
    assert rec.shares_for(None) == (0.2, 0.1)                            # nothing known of the user: uniform
    assert rec.shares_for(user(0.125), tail_share=0.4, cold_share=0.0) == pytest.approx((0.2, 0.0))


def test_blend_settings_search_what_the_config_leaves_open():
    from ltray.config import load_config
    from ltray.tuning import blend_settings

    cfg = load_config(overrides=["eval.ranker_weight_grid=[0, 1]", "eval.tail_share_grid=[0, 0.2]",
                                 "eval.cold_share_grid=[0, 0.1]", "eval.quota_by_grid=[uniform, affinity]"])
    settings = blend_settings(cfg)
    # 2 weights x 4 share pairs x 2 spreads, less the no-quota point's second spread (the same list)
    assert len(settings) == 2 * (4 * 2 - 1) and len(set(settings)) == len(settings)
    assert all(st.quota_by == "uniform" for st in settings if st.tail_share + st.cold_share == 0)
    fixed = blend_settings(cfg.model_copy(update={"blend": cfg.blend.model_copy(
        update={"ranker_weight": 8.0, "tail_share": 0.1, "cold_share": 0.0, "quota_by": "uniform"})}))
    assert fixed == [(8.0, 0.1, 0.0, "uniform")]


def test_cold_score_follows_the_cold_order():
    """The cold quota's score: the text search's (content), the cosine to the profile (profile, cold rows
    only), or none (score: the final score fills it)."""
    from types import SimpleNamespace

    from ltray.recommend import Recommender
    from ltray.user_state import UserState

    rec = Recommender.__new__(Recommender)
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    rec.models = SimpleNamespace(item_vectors=vectors, item_segment=np.array([1, 2, 2], np.int8))
    cands = {"item_idx": np.array([0, 1, 2]), "tail_score": np.array([0.5, 0.9, 0.1], np.float32)}
    state = UserState(np.zeros(2, np.float32), np.array([1, 0], np.float32), np.zeros(0, np.int64),
                      np.zeros(0, np.int64))
    score = np.array([3.0, 2.0, 1.0])
    # One cold slot in a list of two: item 0 (tail) by score, then the cold item the order prefers.
    for order, want, cold_score in (("content", 1, cands["tail_score"]), ("profile", 2, [np.nan, 0.0, 0.6]),
                                    ("score", 1, None)):
        rec.cfg = SimpleNamespace(blend=SimpleNamespace(cold_order=order))
        got = rec.cold_score(state, cands)
        assert got is None if cold_score is None else np.allclose(got, cold_score, equal_nan=True), order
        pos, _ = blend_positions(score, rec.models.item_segment, 2, 0.0, cold_share=0.5, cold_score=got)
        assert sorted(pos.tolist()) == [0, want], order


def test_content_bridge_cold_order_adds_the_text_and_the_bridge_views():
    """content_bridge: a z-score of the text search's score plus one of the bridge's (ALS factor x factors
    predicted from text), over the user's cold candidates; a cold item the text search did not bring counts
    as its worst; a user without an ALS factor gets the text order."""
    from types import SimpleNamespace

    from ltray.recommend import Recommender
    from ltray.user_state import UserState

    rec = Recommender.__new__(Recommender)
    rec.cfg = SimpleNamespace(blend=SimpleNamespace(cold_order="content_bridge"))
    rec.models = SimpleNamespace(
        item_vectors=np.eye(4, 2, dtype=np.float32), item_segment=np.array([1, 2, 2, 2], np.int8),
        item_bridge=np.array([[9, 0], [0, 0], [1, 0], [3, 0]], np.float32))
    # Item 3 came from another source (no text score); item 0 is a tail item.
    cands = {"item_idx": np.array([0, 1, 2, 3]), "tail_score": np.array([0.5, 0.9, 0.1, np.nan], np.float32)}

    def state(factor):
        return UserState(np.asarray(factor, np.float32), np.array([1, 0], np.float32), np.zeros(0, np.int64),
                         np.zeros(0, np.int64))

    got = rec.cold_score(state([1, 0]), cands)
    assert np.isnan(got[0]) and np.isfinite(got[1:]).all()
    # text z (1.41, -0.71, -0.71) + bridge z (-1.07, -0.27, 1.34): the bridge's favourite leads, the text's
    # favourite beats the item both views rank low.
    assert np.argsort(-got[1:]).tolist() == [2, 0, 1]
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(got[1:], z(np.array([0.9, 0.1, 0.1])) + z(np.array([0.0, 1.0, 3.0])), rtol=1e-5)
    no_factor = rec.cold_score(state([0, 0]), cands)
    np.testing.assert_allclose(no_factor[1:], z(np.array([0.9, 0.1, 0.1])), rtol=1e-5)
    assert np.isnan(rec.cold_score(None, cands)).all()


def test_content_profile_bridge_cold_order_adds_the_profile_view():
    """content_profile_bridge: content_bridge's two z-scores plus a third, the cosine to the user's profile,
    over the user's cold candidates; the profile's favourite then beats an item only the bridge likes."""
    from types import SimpleNamespace

    from ltray.recommend import Recommender
    from ltray.user_state import UserState

    rec = Recommender.__new__(Recommender)
    rec.models = SimpleNamespace(
        item_vectors=np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0]], np.float32),
        item_segment=np.array([1, 2, 2, 2], np.int8),
        item_bridge=np.array([[9, 0], [0, 0], [1, 0], [3, 0]], np.float32))
    cands = {"item_idx": np.array([0, 1, 2, 3]), "tail_score": np.array([0.5, 0.9, 0.1, np.nan], np.float32)}
    state = UserState(np.array([1, 0], np.float32), np.array([0, 1], np.float32), np.zeros(0, np.int64),
                      np.zeros(0, np.int64))
    scores = {}
    for order in ("content_bridge", "content_profile_bridge"):
        rec.cfg = SimpleNamespace(blend=SimpleNamespace(cold_order=order))
        scores[order] = rec.cold_score(state, cands)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    profile = np.array([1.0, 0.8, 0.0])  # items 1-3 against the profile (0, 1)
    got = scores["content_profile_bridge"]
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], scores["content_bridge"][1:] + z(profile), rtol=1e-5)
    # Two views against one: the profile's and the text's favourite (item 1) now leads the bridge's (item 3).
    assert np.argmax(scores["content_bridge"][1:]) == 2 and np.argmax(got[1:]) == 0
