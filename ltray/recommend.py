"""The Recommender: candidates -> CTR ranking -> tail-aware blend.

The same composition runs offline (evaluation, `ltray recommend`) and in Ray
Serve, so offline numbers describe the service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ltray.candidates import SEGMENT_CODES, CandidateGenerator, CandidateModels, UserState
from ltray.config import Config
from ltray.data.segments import HEAD
from ltray.rank.features import FeatureContext
from ltray.rank.features import UserState as RankUserState
from ltray.rank.ranker import Ranker
from ltray.text_mining import shared_keywords

# Cosine above which an item counts as "like" one from the user's history in a reason string.
_REASON_MIN_COSINE = 0.5


def feature_context(m: CandidateModels) -> FeatureContext:
    return FeatureContext(
        item_ids=m.item_ids, item_vectors=m.item_vectors, item_factors=m.als.item_factors,
        item_bridge=m.item_bridge, item_pop=m.item_pop, item_segment=m.item_segment,
        user_ids=m.user_ids, user_factors=m.als.user_factors, user_profiles=m.user_profiles,
        user_n=m.user_n, user_last_ts=m.user_last_ts, now_ts=m.now_ts,
    )


@dataclass
class Explainer:
    """Short `reason` strings from the user's history, item keywords and the candidate's source."""

    titles: np.ndarray
    keywords: list[list[str]]

    def reason(self, item: int, source: str, state: UserState | None, item_vectors: np.ndarray) -> str:
        if state is not None and len(state.recent):
            hist = np.asarray(state.recent[:20])
            sims = item_vectors[hist] @ item_vectors[item]
            j = int(np.argmax(sims))
            if sims[j] >= _REASON_MIN_COSINE:
                liked = self.titles[hist[j]]
                common = shared_keywords(self.keywords[item], self.keywords[hist[j]])
                if common:
                    return f"shares '{', '.join(common)}' with {liked}, which you liked"
                return f"similar to {liked}, which you liked"
        if source == "cf":
            return "people with tastes like yours liked it"
        if source == "bridge":
            return "fits the taste of people like you, though few have found it yet"
        if source == "tail":
            return "close to what you like, and rarely seen"
        return "popular right now" if source == "pop" else "recommended for you"


class Recommender:
    """recommend(user) -> ranked items with score, segment, source and reason."""

    def __init__(self, models: CandidateModels, ranker: Ranker | None, cfg: Config,
                 tail_share: float | None = None, explainer: Explainer | None = None):
        self.models = models
        self.generator = CandidateGenerator(models, cfg)
        self.ranker = ranker
        self.cfg = cfg
        self.ctx = feature_context(models)
        self.tail_share = cfg.blend.tail_share if cfg.blend.tail_share is not None else (tail_share or 0.0)
        self.explainer = explainer

    # -- scoring --------------------------------------------------------------------
    def score(self, user_id: str, state: UserState | None, cands: pd.DataFrame) -> np.ndarray:
        if self.ranker is None or state is None:
            # No ranker, or a user we know nothing of: keep the generator's own order.
            return _source_order(cands)
        table = cands.assign(user_id=str(user_id))
        override = None
        if self.generator.user_row(user_id) is None or len(state.recent) != len(
                self.models.user_recent[self.generator.user_row(user_id)]):
            override = {str(user_id): RankUserState(state.factor, state.profile, state.n, state.last_ts)}
        return self.ranker.score(self.ctx, table, users_override=override,
                                 debias_popularity=self.cfg.rank.debias_popularity)

    def rank_candidates(self, user_id: str, recent_items=None, exclude_seen: bool = True
                        ) -> tuple[UserState | None, pd.DataFrame]:
        state = self.generator.state(user_id, recent_items)
        if state is not None and not exclude_seen:
            state = UserState(state.factor, state.profile, state.recent, np.zeros(0, np.int64), state.n,
                              state.last_ts)
        cands = self.generator.candidates(state)
        cands["score"] = self.score(user_id, state, cands)
        return state, cands

    # -- the public call --------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 20, tail_share: float | None = None, exclude_seen: bool = True,
                  recent_items=None, explain: bool = True) -> pd.DataFrame:
        state, cands = self.rank_candidates(user_id, recent_items, exclude_seen)
        return self.top_k(state, cands, k, tail_share, explain)

    def top_k(self, state: UserState | None, cands: pd.DataFrame, k: int, tail_share: float | None = None,
              explain: bool = True) -> pd.DataFrame:
        """Scored candidates -> the blended top k with item_id (and reason); Serve's ranker calls this too."""
        share = self.tail_share if tail_share is None else tail_share
        picked = blend(cands, k, share, self.cfg.blend.method)
        out = picked[["item_idx", "score", "segment", "source"]].reset_index(drop=True)
        out.insert(0, "item_id", self.models.item_ids[out["item_idx"].to_numpy()])
        if explain and self.explainer is not None:
            out["reason"] = [self.explainer.reason(int(i), s, state, self.models.item_vectors)
                             for i, s in zip(out["item_idx"], out["source"], strict=True)]
        return out

    def recommend_rows(self, user_ids, k: int, tail_shares=(None,)) -> dict[float | None, np.ndarray]:
        """Batch form for evaluation: one (n_users, k) item-row array per tail_share, ranked once."""
        out = {s: np.full((len(user_ids), k), -1, np.int64) for s in tail_shares}
        for r, u in enumerate(user_ids):
            _, cands = self.rank_candidates(u)
            for s in tail_shares:
                share = self.tail_share if s is None else s
                rows = blend(cands, k, share, self.cfg.blend.method)["item_idx"].to_numpy()
                out[s][r, : len(rows)] = rows
        return out


def _source_order(cands: pd.DataFrame) -> np.ndarray:
    """Without a ranker: CF score order first, then the other sources by their own scores."""
    cf = cands["cf_score"].to_numpy(np.float64)
    other = np.nanmax(cands[["tail_score", "bridge_score", "pop_score"]].to_numpy(np.float64), axis=1,
                      initial=-np.inf) if len(cands) else np.zeros(0)
    return np.where(np.isfinite(cf), 10.0 + cf, np.nan_to_num(other, nan=-1.0)).astype(np.float32)


def blend(cands: pd.DataFrame, k: int, tail_share: float, method: str = "quota") -> pd.DataFrame:
    """Top-k by score with at least round(tail_share * k) tail/cold items (a quota), best first."""
    if len(cands) == 0:
        return cands
    ranked = cands.sort_values("score", ascending=False, kind="stable")
    is_tail = (ranked["segment"] != HEAD).to_numpy()
    q = int(round(tail_share * k))
    if method == "boost" and q:
        # A calibrated boost: raise tail scores by the gap that lets the quota in, no more.
        return ranked.head(k) if is_tail[:k].sum() >= q else _boost(ranked, is_tail, k, q)
    tail_pick = ranked.loc[is_tail].head(q)
    rest = ranked.drop(index=tail_pick.index).head(k - len(tail_pick))
    return pd.concat([rest, tail_pick]).sort_values("score", ascending=False, kind="stable")


def _boost(ranked: pd.DataFrame, is_tail: np.ndarray, k: int, q: int) -> pd.DataFrame:
    scores = ranked["score"].to_numpy(np.float64)
    tail_scores = np.sort(scores[is_tail])[::-1]
    if len(tail_scores) == 0:
        return ranked.head(k)
    kth_head = np.sort(scores[~is_tail])[::-1][min(k - q, (~is_tail).sum() - 1)]
    gap = max(0.0, kth_head - tail_scores[min(q, len(tail_scores)) - 1]) + 1e-6
    boosted = ranked.assign(score=np.where(is_tail, scores + gap, scores))
    return boosted.sort_values("score", ascending=False, kind="stable").head(k)


__all__ = ["Explainer", "Recommender", "blend", "feature_context", "SEGMENT_CODES"]
