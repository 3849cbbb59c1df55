"""The tail-aware blend: a user's scored candidates -> the final top k.

Quotas (or a calibrated boost) for tail and cold items, filled by the best-scored
items of each kind. Pure pandas/numpy, shared by offline evaluation and Serve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ltray.data.segments import COLD, HEAD


def blend(cands: pd.DataFrame, k: int, tail_share: float, method: str = "quota", cold_share: float = 0.0
          ) -> pd.DataFrame:
    """Top-k by score with at least round(tail_share * k) tail/cold items and, on top of them, at
    least round(cold_share * k) cold (never interacted) items: quotas filled by the best-scored
    items of each kind; best first."""
    if len(cands) == 0:
        return cands
    ranked = cands.sort_values("score", ascending=False, kind="stable")
    seg = ranked["segment"].to_numpy()
    is_tail = seg != HEAD
    q, qc = int(round(tail_share * k)), min(k, int(round(cold_share * k)))
    if method == "boost" and q and not qc:
        # A calibrated boost: raise tail scores by the gap that lets the quota in, no more.
        return ranked.head(k) if is_tail[:k].sum() >= q else _boost(ranked, is_tail, k, q)
    cold_pick = ranked.loc[seg == COLD].head(qc)
    tail_pick = ranked.loc[is_tail].drop(index=cold_pick.index).head(min(q, k - len(cold_pick)))
    picked = pd.concat([cold_pick, tail_pick])
    rest = ranked.drop(index=picked.index).head(k - len(picked))
    return pd.concat([rest, picked]).sort_values("score", ascending=False, kind="stable")


def _boost(ranked: pd.DataFrame, is_tail: np.ndarray, k: int, q: int) -> pd.DataFrame:
    scores = ranked["score"].to_numpy(np.float64)
    tail_scores = np.sort(scores[is_tail])[::-1]
    if len(tail_scores) == 0:
        return ranked.head(k)
    kth_head = np.sort(scores[~is_tail])[::-1][min(k - q, (~is_tail).sum() - 1)]
    gap = max(0.0, kth_head - tail_scores[min(q, len(tail_scores)) - 1]) + 1e-6
    boosted = ranked.assign(score=np.where(is_tail, scores + gap, scores))
    return boosted.sort_values("score", ascending=False, kind="stable").head(k)


__all__ = ["blend"]
