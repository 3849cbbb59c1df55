"""The tail-aware blend: a user's scored candidates -> the final top k.

Quotas (or a calibrated boost) for tail and cold items, filled by the best-scored
items of each kind. `blend_positions` is the one implementation (plain numpy: it runs on
every request); `blend` applies it to a candidate DataFrame for offline code.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ltray.data.segments import COLD, HEAD, Segment


def blend(cands: pd.DataFrame, k: int, tail_share: float, method: str = "quota", cold_share: float = 0.0,
          cold_score: str | None = None) -> pd.DataFrame:
    """Top-k by score with at least round(tail_share * k) tail/cold items and, on top of them, at
    least round(cold_share * k) cold (never interacted) items: quotas filled by the best-scored
    items of each kind (cold ones by the column `cold_score` when given); best first. The rows of
    `cands` (with the boost, their raised scores)."""
    if len(cands) == 0:
        return cands
    pos, scores = blend_positions(cands["score"].to_numpy(), cands["segment"].to_numpy(), k, tail_share, method,
                                  cold_share, None if cold_score is None else cands[cold_score].to_numpy())
    picked = cands.iloc[pos]
    return picked if scores is None else picked.assign(score=scores)


class BlendSetting(NamedTuple):
    """One operating point of the blend; None takes the Recommender's own value."""

    ranker_weight: float | None = None
    tail_share: float | None = None
    cold_share: float | None = None
    quota_by: str | None = None  # "uniform" or "affinity" (shares scaled by the user's tail affinity)


class Ranking(NamedTuple):
    """One list of candidates ranked by a score, with what every quota needs: computed once per score,
    then `pick` serves any number of slot counts."""
    score: np.ndarray
    ranked: np.ndarray       # row positions, best first
    is_tail: np.ndarray      # in rank order: not a head item
    cold_order: np.ndarray   # positions in `ranked` of the cold items, in the order the cold quota takes them


def rank_for_blend(score: np.ndarray, segment: np.ndarray, cold_score: np.ndarray | None = None) -> Ranking:
    score = np.asarray(score)
    seg = np.asarray(segment)
    is_head, is_cold = (seg == Segment.HEAD, seg == Segment.COLD) if seg.dtype.kind in "iu" else (
        seg == HEAD, seg == COLD)
    ranked = _order(score)
    if cold_score is None:
        cold_order = np.flatnonzero(is_cold[ranked])
    else:  # the best cold items by their own score, as positions in `ranked`
        cold_rows = np.flatnonzero(is_cold)
        where = np.empty(len(ranked), np.int64)
        where[ranked] = np.arange(len(ranked))
        cold_order = where[cold_rows[_order(np.asarray(cold_score)[cold_rows])]]
    return Ranking(score, ranked, ~is_head[ranked], cold_order)


def pick(r: Ranking, k: int, q: int, qc: int, method: str = "quota") -> tuple[np.ndarray, np.ndarray | None]:
    """The top k of a `Ranking` with q tail and qc cold slots (`quota_slots`); as `blend_positions`."""
    ranked, is_tail = r.ranked, r.is_tail
    if method == "boost" and q and not qc:
        # A calibrated boost: raise tail scores by the gap that lets the quota in, no more.
        if is_tail[:k].sum() >= q:
            return ranked[:k], None
        return _boost(r.score[ranked], ranked, is_tail, k, q)
    # Positions in rank order: the cold quota, then the tail quota, then the best of the rest.
    cold_pick = r.cold_order[:qc]
    taken = np.zeros(len(ranked), bool)
    taken[cold_pick] = True
    tail_pick = np.flatnonzero(is_tail & ~taken)[: min(q, k - len(cold_pick))]
    taken[tail_pick] = True
    rest = np.flatnonzero(~taken)[: k - len(cold_pick) - len(tail_pick)]
    # The rest first, then the quota picks; a stable sort by score keeps that order among ties.
    chosen = ranked[np.concatenate([rest, cold_pick, tail_pick])]
    return chosen[_order(r.score[chosen])], None


def blend_positions(score: np.ndarray, segment: np.ndarray, k: int, tail_share: float, method: str = "quota",
                    cold_share: float = 0.0, cold_score: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """`blend` on plain arrays: (row positions of the top k, best first; their boosted scores or None).

    `segment` holds names ("head"/"tail"/"cold") or int codes. Ties in score keep row order.
    `cold_score` (NaN = none) picks the cold quota's items instead of `score`: the final score knows
    little of items nobody has touched. The list is still ordered by `score`.
    """
    return pick(rank_for_blend(score, segment, cold_score), k, *quota_slots(k, tail_share, cold_share), method)


def quota_slots(k: int, tail_share: float, cold_share: float = 0.0) -> tuple[int, int]:
    """(tail slots, cold slots) of a top-k list: all `blend_positions` takes of the two shares."""
    return int(round(tail_share * k)), min(k, int(round(cold_share * k)))


def _order(score: np.ndarray) -> np.ndarray:
    """Best first, ties in row order, NaN last (as pandas' stable descending sort)."""
    s = np.asarray(score)
    nan = np.isnan(s) if s.dtype.kind == "f" else np.zeros(len(s), bool)
    # Stable argsort of the negation: equal scores keep their row order.
    order = np.argsort(-s[~nan], kind="stable")
    return np.concatenate([np.flatnonzero(~nan)[order], np.flatnonzero(nan)])


def _boost(ranked_scores: np.ndarray, ranked: np.ndarray, is_tail: np.ndarray, k: int, q: int
           ) -> tuple[np.ndarray, np.ndarray | None]:
    scores = ranked_scores.astype(np.float64)
    tail_scores = np.sort(scores[is_tail])[::-1]
    head_scores = np.sort(scores[~is_tail])[::-1]
    if len(tail_scores) == 0 or len(head_scores) == 0:
        return ranked[:k], None
    kth_head = head_scores[min(k - q, len(head_scores) - 1)]
    gap = max(0.0, kth_head - tail_scores[min(q, len(tail_scores)) - 1]) + 1e-6
    boosted = np.where(is_tail, scores + gap, scores)
    top = _order(boosted)[:k]
    return ranked[top], boosted[top]


__all__ = ["BlendSetting", "Ranking", "blend", "blend_positions", "pick", "quota_slots", "rank_for_blend"]
