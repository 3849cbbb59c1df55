"""The Recommender: candidates -> CTR ranking -> tail-aware blend.

The same composition runs offline (evaluation, `ltray recommend`) and in Ray
Serve, so offline numbers describe the service.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ltray.artifacts import ArtifactStore
from ltray.blend import BlendSetting, Ranking, blend_positions, pick, quota_slots, rank_for_blend
from ltray.candidates import CandidateGenerator, CandidateModels, CandidateTable
from ltray.config import Config
from ltray.data.segments import Segment
from ltray.rank.features import SOURCE_FLAGS, FeatureContext
from ltray.rank.ranker import Ranker
from ltray.text_mining import shared_keywords
from ltray.threads import single_threaded
from ltray.user_state import Ask, UserState

# Cosine above which an item counts as "like" one from the user's history in a reason string.
_REASON_MIN_COSINE = 0.5

# How many of a user's latest items describe their current taste in CF space.
RECENT_FACTOR_ITEMS = 5


def recent_factor(item_factors: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """Mean unit ALS factor of the user's last few items (zeros without history)."""
    rows = np.asarray(recent[:RECENT_FACTOR_ITEMS], np.int64)
    if not len(rows):
        return np.zeros(item_factors.shape[1], np.float32)
    f = item_factors[rows].astype(np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return f.mean(axis=0).astype(np.float32)


def feature_context(m: CandidateModels) -> FeatureContext:
    recent = np.stack([recent_factor(m.als.item_factors, r) for r in m.user_recent]) if len(m.user_recent) else (
        np.zeros((0, m.als.item_factors.shape[1]), np.float32))
    return FeatureContext(
        user_recent_factors=recent,
        item_ids=m.item_ids, item_vectors=m.item_vectors, item_factors=m.als.item_factors,
        item_bridge=m.item_bridge, item_pop=m.item_pop, item_segment=m.item_segment,
        user_ids=m.user_ids, user_factors=m.als.user_factors, user_profiles=m.user_profiles,
        user_n=m.user_n, user_last_ts=m.user_last_ts, now_ts=m.now_ts,
        item_item=m.item_item, user_seen=m.als.seen,
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
        if source == "item":
            return "people who liked what you liked also liked it"
        if source == "bridge":
            return "fits the taste of people like you, though few have found it yet"
        if source == "tail":
            return "close to what you like, and rarely seen"
        return "popular right now" if source == "pop" else "recommended for you"


class Recommender:
    """recommend(user) -> ranked items with score, segment, source and reason."""

    def __init__(self, models: CandidateModels, ranker: Ranker | None, cfg: Config,
                 tail_share: float | None = None, explainer: Explainer | None = None,
                 ranker_weight: float | None = None, cold_share: float | None = None, quota_by: str | None = None,
                 version: str = "unversioned"):
        self.version = version  # the artifacts version it answers with (the rank stage's)
        self.models = models
        self.generator = CandidateGenerator(models, cfg)
        self.ranker = ranker
        self.cfg = cfg
        self.ctx = feature_context(models)
        self.tail_share = cfg.blend.tail_share if cfg.blend.tail_share is not None else (tail_share or 0.0)
        self.cold_share = cfg.blend.cold_share if cfg.blend.cold_share is not None else (cold_share or 0.0)
        w = cfg.blend.ranker_weight if cfg.blend.ranker_weight is not None else ranker_weight
        self.ranker_weight = 1.0 if w is None else float(w)
        self.quota_by = cfg.blend.quota_by or quota_by or "uniform"
        self.explainer = explainer

    def shares_for(self, state: UserState | None, tail_share: float | None = None, cold_share: float | None = None,
                   quota_by: str | None = None) -> tuple[float, float]:
        """(tail share, cold share) of this user's list. `affinity` scales both by the user's tail affinity
        over the average user's, capped so that together they take at most blend.max_user_share."""
        ts = self.tail_share if tail_share is None else float(tail_share)
        cs = self.cold_share if cold_share is None else float(cold_share)
        if (quota_by or self.quota_by) != "affinity" or state is None or not ts + cs:
            return ts, cs
        mean = self.models.mean_tail_affinity
        w = state.tail_affinity / mean if mean > 0 else 1.0
        w = min(w, self.cfg.blend.max_user_share / (ts + cs))
        return ts * w, cs * w

    def list_shares(self, state: UserState | None, tail_share: float | None = None) -> tuple[float, float]:
        """(tail share, cold share) one list is blended with. A share asked for is taken as asked: that
        list's quotas are not scaled by the user's affinity."""
        return self.shares_for(state, tail_share, None, None if tail_share is None else "uniform")

    # -- the one recommendation path ---------------------------------------------------------
    # state + CF recall -> tail retrieval -> features -> one forward pass -> blend. Serve's colocated
    # Pipeline runs `recommend_many` whole; the chain runs the same steps a stage each (CFRecall:
    # generator.state + recall_cf, TailRetrieval: generator.retrieve, CTRRanker: rank_many).
    def recommend_many(self, asks: Sequence[Ask], explain: bool = True
                       ) -> list[tuple[UserState | None, CandidateTable]]:
        """(state, blended top k as columns) per request, recalled and scored together."""
        states = [self.generator.state(a.user_id, a.recent_items, a.exclude_seen) for a in asks]
        tables = list(self.generator.candidate_columns_many(states))
        return list(zip(states, self.rank_many(asks, states, tables, explain), strict=True))

    def rank_many(self, asks: Sequence[Ask], states: Sequence[UserState | None], tables: Sequence[CandidateTable],
                  explain: bool = True) -> list[CandidateTable]:
        """Each request's candidates scored (one forward pass for all) and blended to its top k."""
        scored = self.score_many([a.user_id for a in asks], states, tables)
        return [self.top_k_columns(st, t, a.k, a.tail_share, explain)
                for a, st, t in zip(asks, states, scored, strict=True)]

    def score_many(self, user_ids: Sequence[str], states: Sequence[UserState | None],
                   tables: Sequence[CandidateTable]) -> list[CandidateTable]:
        """Adds cf_z, ranker_logit and the final score to each candidate table (in place)."""
        feats = [self.ranker_features(u, st, t) for u, st, t in zip(user_ids, states, tables, strict=True)]
        live = [f for f in feats if f is not None]
        probs = iter(self.forward(live) if live else [])
        return [self._fill_scores(st, t, None if f is None else next(probs))
                for st, t, f in zip(states, tables, feats, strict=True)]

    def forward(self, batch: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """One forward pass over the concatenated features of several requests."""
        sizes = [len(f["dense"]) for f in batch]
        joined = {key: np.concatenate([f[key] for f in batch]) for key in batch[0]}
        return np.split(self.ranker.score_features(joined), np.cumsum(sizes)[:-1])

    def ranker_features(self, user_id: str, state: UserState | None, cands: CandidateTable
                        ) -> dict[str, np.ndarray] | None:
        """The CTR model's inputs for these candidates; None when the ranker has no say (no ranker, a user we
        know nothing of, no candidates)."""
        if self.ranker is None or state is None or not np.any(state.factor) or not len(cands["item_idx"]):
            return None
        # Plain columns, one user id for every row: the FeatureBuilder's per-request form.
        table = {"user_id": str(user_id), "item_idx": np.asarray(cands["item_idx"], np.int64),
                 **{c: np.asarray(cands[c], np.float32) for c in SOURCE_FLAGS if c in cands}}
        override = None
        if self.generator.user_row(user_id) is None or len(state.recent) != len(
                self.models.user_recent[self.generator.user_row(user_id)]):
            override = {str(user_id): dataclasses.replace(
                state, recent_factor=recent_factor(self.models.als.item_factors, state.recent))}
        return self.ranker.features(self.ctx, table, override, debias_popularity=self.cfg.rank.debias_popularity)

    def _fill_scores(self, state: UserState | None, cands: CandidateTable, probs: np.ndarray | None
                     ) -> CandidateTable:
        """Sets the cf_z, ranker_logit and final score columns (in place) from the model's click
        probabilities (None: the model had no say)."""
        logit = None
        if state is None or not np.any(state.factor):
            cf_z = _source_order(cands)  # a user we know nothing of: the generator's own order
        else:
            cf_z = self.models.cf.z(state.factor, state.seen, np.asarray(cands["item_idx"], np.int64))
            if self.ranker is not None:  # no probabilities: no candidates
                p = np.clip(np.asarray([] if probs is None else probs, np.float64), 1e-7, 1 - 1e-7)
                logit = np.log(p / (1 - p)).astype(np.float32)
        cands["cf_z"] = cf_z
        cands["ranker_logit"] = np.zeros(len(cf_z), np.float32) if logit is None else logit
        cands["score"] = combine(cf_z, logit, self.ranker_weight)
        return cands

    # -- the public calls -------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 20, tail_share: float | None = None, exclude_seen: bool = True,
                  recent_items=None, explain: bool = True) -> pd.DataFrame:
        [(_, top)] = self.recommend_many([Ask(user_id, k, tail_share, exclude_seen, recent_items)], explain)
        return pd.DataFrame(top)

    def rank_candidates(self, user_id: str, recent_items=None, exclude_seen: bool = True
                        ) -> tuple[UserState | None, CandidateTable]:
        """The user's state and scored candidate columns (cf_z, ranker_logit, score)."""
        state = self.generator.state(user_id, recent_items, exclude_seen)
        [cands] = self.generator.candidate_columns_many([state])
        return state, self.score_many([user_id], [state], [cands])[0]

    def top_k(self, state: UserState | None, cands: CandidateTable, k: int, tail_share: float | None = None,
              explain: bool = True) -> pd.DataFrame:
        """Scored candidates -> the blended top k with item_id (and reason), as a DataFrame."""
        return pd.DataFrame(self.top_k_columns(state, cands, k, tail_share, explain))

    def top_k_columns(self, state: UserState | None, cands: CandidateTable, k: int, tail_share: float | None = None,
                      explain: bool = True) -> CandidateTable:
        """`top_k` as plain columns (item_id, item_idx, score, segment, source[, reason]); Serve's ranker."""
        share, cold = self.list_shares(state, tail_share)
        score = np.asarray(cands["score"])
        pos, boosted = blend_positions(score, np.asarray(cands["segment"]), k, share, self.cfg.blend.method,
                                       cold, self.cold_score(state, cands))
        item_idx = np.asarray(cands["item_idx"], np.int64)[pos]
        out = {"item_id": self.models.item_ids[item_idx], "item_idx": item_idx,
               "score": score[pos] if boosted is None else boosted,
               "segment": np.asarray(cands["segment"])[pos], "source": np.asarray(cands["source"])[pos]}
        if explain and self.explainer is not None:
            out["reason"] = np.array([self.explainer.reason(int(i), s, state, self.models.item_vectors)
                                      for i, s in zip(item_idx, out["source"], strict=True)], dtype=object)
        return out

    def cold_score(self, state: UserState | None, cands: CandidateTable) -> np.ndarray | None:
        """What fills the cold quota (blend.cold_order), scored on cold rows (NaN elsewhere) or None for the
        final score. One view orders by its own score; several (content_bridge, content_profile_bridge) add
        each view as a z-score over the user's cold candidates, so no view's scale dominates. The views of a
        cold item: content (the text search's score: the best match of the profile and the recent items),
        profile (the cosine to the user's profile alone) and bridge (the user's ALS factor against the
        factors predicted from the item's text)."""
        order = self.cfg.blend.cold_order
        if order == "content":
            return np.asarray(cands["tail_score"])
        if order == "score":
            return None
        idx = np.asarray(cands["item_idx"], np.int64)
        cold = self.models.item_segment[idx] == Segment.COLD
        score = np.full(len(idx), np.nan, np.float32)
        if state is None or not cold.any():
            return score
        if order == "profile":
            if np.any(state.profile):
                score[cold] = self._cold_view("profile", state, cands, idx[cold], cold)
            return score
        score[cold] = sum(_zscore(self._cold_view(v, state, cands, idx[cold], cold)) for v in order.split("_"))
        return score

    def _cold_view(self, view: str, state: UserState, cands: CandidateTable, items: np.ndarray, cold: np.ndarray
                   ) -> np.ndarray:
        """One view's score of the user's cold candidates `items` (rows `cold` of `cands`)."""
        if view == "profile":
            return self.models.item_vectors[items].astype(np.float64) @ np.asarray(state.profile, np.float64)
        if view == "bridge":
            return self.models.item_bridge[items].astype(np.float64) @ np.asarray(state.factor, np.float64)
        if view != "content":
            raise ValueError(f"unknown cold view {view!r} (blend.cold_order names content, profile and bridge)")
        content = np.asarray(cands["tail_score"], np.float64)[cold]
        found = np.isfinite(content)  # a cold item another source brought ranks last in the text search
        return np.where(found, content, content[found].min() if found.any() else 0.0)

    def recommend_rows(self, user_ids, k: int, settings: Sequence[BlendSetting] = (BlendSetting(),)
                       ) -> dict[BlendSetting, np.ndarray]:
        """Batch form for evaluation: one (n_users, k) item-row array per blend setting. Candidates are
        generated and scored once per user."""
        out = {st: np.full((len(user_ids), k), -1, np.int64) for st in settings}
        with single_threaded():
            self._fill_rows(out, user_ids, k, settings)
        return out

    def _fill_rows(self, out: dict[BlendSetting, np.ndarray], user_ids, k: int,
                   settings: Sequence[BlendSetting]) -> None:
        states = [self.generator.state(u) for u in user_ids]
        for r, cands in enumerate(self.generator.candidate_columns_many(states)):
            # Recalled in chunks, scored a user at a time: as `rank_candidates` scores them.
            state, cands = states[r], self.score_many([user_ids[r]], [states[r]], [cands])[0]
            # Settings that give this user the same weight and slot counts give the same list.
            rankings: dict[float, Ranking] = {}
            lists: dict[tuple, np.ndarray] = {}
            cold_score = self.cold_score(state, cands)
            for st in settings:
                weight = self.ranker_weight if st.ranker_weight is None else st.ranker_weight
                slots = quota_slots(k, *self.shares_for(state, st.tail_share, st.cold_share, st.quota_by))
                if (weight, slots) not in lists:
                    if weight not in rankings:
                        rankings[weight] = rank_for_blend(combine(cands["cf_z"], cands["ranker_logit"], weight),
                                                          cands["segment"], cold_score)
                    pos, _ = pick(rankings[weight], k, *slots, self.cfg.blend.method)
                    lists[(weight, slots)] = cands["item_idx"][pos]
                rows = lists[(weight, slots)]
                out[st][r, : len(rows)] = rows


def load_recommender(artifacts: str | Path | ArtifactStore, cfg: Config | None = None, faiss_indexes: bool = True,
                     models: CandidateModels | None = None) -> Recommender:
    """The Recommender a run folder describes (what Serve, `ltray recommend` and evaluation read back).

    `faiss_indexes=False` skips the FAISS indexes: Serve's ranker scores candidates and never searches.
    `models`: the run's CandidateModels, already loaded (a colocated Serve replica shares one set)."""
    from ltray.embed.items import load_embeddings
    from ltray.rank.ranker import Ranker
    from ltray.text_mining import item_keywords

    # A reader: never creates or recovers the store; a missing run is one ArtifactError naming it.
    store = artifacts if isinstance(artifacts, ArtifactStore) else ArtifactStore(str(artifacts), mode="r")
    cfg = cfg or Config.model_validate(store.manifest().get("config", {}))
    items = pq.read_table(store.stage_path("data") / "items.parquet").to_pandas()
    item_ids = items["item_id"].to_numpy().astype(str)
    if models is None:
        models = CandidateModels.load(store.stage_path("cf"), store.stage_path("index"), item_ids,
                                      load_embeddings(store.stage_path("embed"), item_ids), faiss_indexes=faiss_indexes)
    ranker = Ranker.load(store.stage_path("rank")) if store.has("rank") else None
    blend = json.loads((store.stage_path("rank") / "blend.json").read_text()) if store.has("rank") else {}
    titles = (items["title"] if "title" in items.columns else items["item_id"]).astype(str).to_numpy()
    return Recommender(models, ranker, cfg, tail_share=blend.get("tail_share"),
                       explainer=Explainer(titles, item_keywords(items["text"].tolist())),
                       ranker_weight=blend.get("ranker_weight"), cold_share=blend.get("cold_share"),
                       quota_by=blend.get("quota_by"),
                       version=store.served_version())


def combine(cf_z: np.ndarray, logit: np.ndarray | None, ranker_weight: float) -> np.ndarray:
    """cf_z + w * logit; w = 0 keeps ALS's order, a large w is the ranker alone."""
    if logit is None:
        return np.asarray(cf_z, np.float32)
    return (np.asarray(cf_z, np.float64) + ranker_weight * np.asarray(logit, np.float64)).astype(np.float32)


def _source_order(cands: CandidateTable) -> np.ndarray:
    """Without a ranker: CF score order first, then the other sources by their own scores."""
    cf = np.asarray(cands["cf_score"], np.float64)
    other = np.nanmax(np.stack([np.asarray(cands[c], np.float64) for c in ("item_score", "tail_score", "bridge_score", "pop_score")],
                               axis=1), axis=1, initial=-np.inf) if len(cf) else np.zeros(0)
    return np.where(np.isfinite(cf), 10.0 + cf, np.nan_to_num(other, nan=-1.0)).astype(np.float32)


def _zscore(x: np.ndarray) -> np.ndarray:
    """x on a common scale (mean 0, sd 1); all zeros when x is constant: that view then decides nothing."""
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


__all__ = ["Explainer", "Recommender", "feature_context", "load_recommender"]
