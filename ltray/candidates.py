"""Candidate generation: ALS and item-item recall, FAISS tail retrieval and the text->CF bridge, for one
user or many.

`CandidateModels` holds everything fitted on one training set, aligned to the
catalog's item rows. `CandidateGenerator` turns a user (known, or described by
session items) into one de-duplicated candidate table with source flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ltray.cf.als import ALSRecall
from ltray.cf.itemitem import ItemItemRecall
from ltray.cf.scores import CFScorer
from ltray.config import Config
from ltray.data.segments import LABELS, Segment
from ltray.index.bridge import TextToCFBridge
from ltray.index.faiss_index import VectorIndex, build_subset, build_tail_and_full
from ltray.index.profiles import recent_items_of, user_profiles
from ltray.user_state import UserState

SOURCES = ("cf", "item", "tail", "bridge", "pop")
# One row per candidate item: item_idx, from_<source> flags, <source>_score, source, segment (and, once
# scored, cf_z, ranker_logit, score). Plain numpy columns: the per-request form, no DataFrame.
CandidateTable = dict[str, np.ndarray]
Part = tuple[str, np.ndarray, np.ndarray]  # (source, item rows, scores) of one recall source
DAY = 86_400.0


@dataclass
class CandidateModels:
    """Every model that candidate generation needs, fitted on one training set."""

    item_ids: np.ndarray
    item_vectors: np.ndarray     # (n_items, d) L2-normalised text vectors
    item_segment: np.ndarray     # int8 (n_items,): 0 head, 1 tail, 2 cold
    item_pop: np.ndarray         # float32 (n_items,): training interactions
    als: ALSRecall
    bridge: TextToCFBridge
    item_bridge: np.ndarray      # (n_items, f): bridge prediction for every item
    tail_index: VectorIndex
    full_index: VectorIndex
    user_profiles: np.ndarray    # (n_users, d)
    user_recent: list[np.ndarray]
    user_n: np.ndarray
    user_last_ts: np.ndarray
    now_ts: int
    vector_mean: np.ndarray | None = None  # catalog mean removed from text vectors (see center_vectors)
    cold_index: VectorIndex | None = None  # cold items alone (None: no cold items, or FAISS left out)
    item_item: ItemItemRecall | None = None  # None: cf.item.kind=none

    @property
    def user_ids(self) -> np.ndarray:
        return self.als.user_ids

    @cached_property
    def cf(self) -> CFScorer:
        """The CF score: ALS and item-item z-scores mixed by the cf.mix chosen on validation."""
        return CFScorer(self.als, self.item_item, float(self.als.cfg.mix or 0.0))

    @cached_property
    def user_tail_affinity(self) -> np.ndarray:
        """Per user: the share of their distinct training items outside the head (0 without history).
        Derived from the seen matrix and the segments, so every run folder has it."""
        seen = self.als.seen
        off_head = (self.item_segment != Segment.HEAD).astype(np.float64)
        n = np.diff(seen.indptr)
        hits = np.bincount(np.repeat(np.arange(len(n)), n), weights=off_head[seen.indices], minlength=len(n))
        return (hits / np.maximum(n, 1)).astype(np.float32)

    @cached_property
    def mean_tail_affinity(self) -> float:
        """The average user's tail affinity (users with a history): per-user quotas are relative to it."""
        a = self.user_tail_affinity[np.diff(self.als.seen.indptr) > 0]
        return float(a.mean()) if len(a) else 0.0

    def tail_affinity_of(self, rows: np.ndarray) -> float:
        """The tail affinity of a history given as item rows (session users, folded-in items)."""
        rows = np.unique(np.asarray(rows, np.int64))
        return float(np.mean(self.item_segment[rows] != Segment.HEAD)) if len(rows) else 0.0

    @classmethod
    def fit(cls, train: pd.DataFrame, item_ids: np.ndarray, item_vectors: np.ndarray, item_segment: np.ndarray,
            cfg: Config) -> CandidateModels:
        """Fit ALS, the bridge, the indexes and the profiles on `train` (user_id, item_id, ts, weight)."""
        item_vectors, mean = center_vectors(item_vectors)
        item_row = pd.Index(item_ids)
        users, user_rows = np.unique(train["user_id"].to_numpy().astype(str), return_inverse=True)
        item_rows = item_row.get_indexer(train["item_id"].to_numpy())
        if (item_rows < 0).any():
            raise ValueError("training interactions reference items outside the catalog")
        ts = train["ts"].to_numpy(np.int64)
        als = ALSRecall(cfg.cf, user_ids=users, item_ids=item_ids)
        als.fit(user_rows, item_rows, train["weight"].to_numpy(np.float32), n_users=len(users),
                n_items=len(item_ids))
        item_item = ItemItemRecall(cfg.cf.item).fit(als.seen) if cfg.cf.item.kind != "none" else None
        head = item_segment == Segment.HEAD
        bridge = TextToCFBridge(cfg.index.bridge_l2).fit(item_vectors[head], als.item_factors[head])
        tail_index, full_index = build_tail_and_full(item_vectors, item_segment != Segment.HEAD, cfg.index)
        cold_index = cold_index_of(item_vectors, item_segment, cfg)
        profiles = user_profiles(user_rows, item_rows, ts, item_vectors, cfg.index.profile_half_life_days,
                                 cfg.index.profile_recent_items, n_users=len(users))
        recent = recent_items_of(user_rows, item_rows, ts, cfg.index.profile_recent_items, n_users=len(users))
        pop = np.bincount(item_rows, minlength=len(item_ids)).astype(np.float32)
        user_n = np.bincount(user_rows, minlength=len(users)).astype(np.float32)
        last = np.zeros(len(users), np.int64)
        np.maximum.at(last, user_rows, ts)
        return cls(item_ids=np.asarray(item_ids).astype(str), item_vectors=item_vectors,
                   item_segment=item_segment.astype(np.int8), item_pop=pop, als=als, bridge=bridge,
                   item_bridge=bridge.predict(item_vectors).astype(np.float32), tail_index=tail_index,
                   full_index=full_index, user_profiles=profiles, user_recent=recent, user_n=user_n,
                   user_last_ts=last, now_ts=int(ts.max()) if len(ts) else 0, vector_mean=mean,
                   cold_index=cold_index, item_item=item_item)

    # -- persistence: cf/ holds ALS; index/ holds the rest ----------------------
    def save(self, cf_dir: Path, index_dir: Path) -> None:
        self.als.save(cf_dir)
        if self.item_item is not None:
            self.item_item.save(cf_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        self.tail_index.save(index_dir / "tail.faiss")
        self.full_index.save(index_dir / "full.faiss")
        if self.cold_index is not None:
            self.cold_index.save(index_dir / "cold.faiss")
        self.bridge.save(index_dir / "bridge.npz")
        lens = np.array([len(r) for r in self.user_recent], np.int64)
        flat = np.concatenate(self.user_recent) if lens.sum() else np.zeros(0, np.int64)
        np.savez(index_dir / "profiles.npz", profiles=self.user_profiles, recent_flat=flat, recent_len=lens,
                 user_n=self.user_n, user_last_ts=self.user_last_ts)
        np.savez(index_dir / "items.npz", item_segment=self.item_segment, item_pop=self.item_pop,
                 item_bridge=self.item_bridge, vector_mean=self.vector_mean)
        (index_dir / "index.json").write_text(json.dumps({"now_ts": self.now_ts, "n_items": len(self.item_ids),
                                                          "tail_items": self.tail_index.ntotal}))

    @classmethod
    def load(cls, cf_dir: Path, index_dir: Path, item_ids: np.ndarray, item_vectors: np.ndarray,
             faiss_indexes: bool = True) -> CandidateModels:
        """`faiss_indexes=False` leaves the FAISS indexes out (None): Serve stages that never search."""
        als = ALSRecall.load(cf_dir)
        with np.load(index_dir / "profiles.npz", allow_pickle=False) as z:
            profiles, flat, lens = z["profiles"], z["recent_flat"], z["recent_len"]
            user_n, last = z["user_n"], z["user_last_ts"]
        with np.load(index_dir / "items.npz", allow_pickle=False) as z:
            seg, pop, item_bridge = z["item_segment"], z["item_pop"], z["item_bridge"]
            mean = z["vector_mean"]
        item_vectors, _ = center_vectors(item_vectors, mean)
        meta = json.loads((index_dir / "index.json").read_text())
        recent = np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []
        cold_index = None
        if faiss_indexes:  # runs from before the cold index build it from the vectors
            cold_path = index_dir / "cold.faiss"
            cold_index = VectorIndex.load(cold_path) if cold_path.exists() else cold_index_of(
                item_vectors, seg, Config())
        return cls(item_ids=np.asarray(item_ids).astype(str), item_vectors=item_vectors, item_segment=seg,
                   item_pop=pop, als=als, bridge=TextToCFBridge.load(index_dir / "bridge.npz"),
                   item_bridge=item_bridge,
                   tail_index=VectorIndex.load(index_dir / "tail.faiss") if faiss_indexes else None,
                   full_index=VectorIndex.load(index_dir / "full.faiss") if faiss_indexes else None,
                   user_profiles=profiles,
                   user_recent=recent, user_n=user_n, user_last_ts=last, now_ts=int(meta["now_ts"]),
                   vector_mean=mean, cold_index=cold_index, item_item=ItemItemRecall.load(cf_dir))


class CandidateGenerator:
    """One de-duplicated candidate table per user: item_idx, source flags, per-source scores."""

    def __init__(self, models: CandidateModels, cfg: Config):
        self.models = models
        self.cfg = cfg
        self._user_row = {u: i for i, u in enumerate(models.user_ids)}
        self._item_row = {it: i for i, it in enumerate(models.item_ids)}
        self._tail_mask = models.item_segment != Segment.HEAD
        self._tail_rows = np.flatnonzero(self._tail_mask)
        self._pop_order = np.argsort(-models.item_pop, kind="stable")

    # -- users ------------------------------------------------------------------
    def user_row(self, user_id: str) -> int | None:
        return self._user_row.get(str(user_id))

    def known_users(self, user_ids) -> np.ndarray:
        """The distinct ids among `user_ids` that the models were fitted on, sorted: the users a held-out
        split is scored for."""
        return np.array([u for u in np.unique(np.asarray(user_ids).astype(str)) if u in self._user_row])

    def item_rows(self, item_ids) -> np.ndarray:
        rows = [self._item_row.get(str(i), -1) for i in item_ids]
        return np.asarray(rows, np.int64)

    def unknown_items(self, item_ids) -> list:
        """The ids outside the catalog."""
        return [i for i in item_ids or [] if str(i) not in self._item_row]

    def state(self, user_id: str, recent_items=None, exclude_seen: bool = True) -> UserState | None:
        """A known user's state, or one folded in from session items (joining a known user's history);
        None when there is nothing. `exclude_seen=False` lets the history come back in recall."""
        m, row = self.models, self.user_row(user_id)
        extra = self.item_rows(recent_items or [])
        extra = extra[extra >= 0]
        if row is None and not len(extra):
            return None
        if not len(extra):
            return UserState(m.als.user_factors[row], m.user_profiles[row], m.user_recent[row], m.als.seen[row].indices,
                             float(m.user_n[row]), int(m.user_last_ts[row]), float(m.user_tail_affinity[row]),
                             exclude_seen)
        known = row is not None
        hist = np.concatenate([extra, m.user_recent[row]]) if known else extra
        both = np.union1d(m.als.seen[row].indices, extra) if known else np.unique(extra)
        n = (float(m.user_n[row]) if known else 0.0) + len(extra)
        return UserState(m.als.fold_in(both), _profile(m.item_vectors, hist), hist, both, n, m.now_ts,
                         m.tail_affinity_of(both), exclude_seen)

    # -- candidates ---------------------------------------------------------------
    def candidate_columns(self, state: UserState | None, **sizes: int) -> CandidateTable:
        """One user's candidates; `sizes` (n_cf, n_tail, n_bridge, n_cold) replace the configured ones."""
        b = self.cfg.blend.model_copy(update=sizes)
        parts = [] if state is None else self.recall_parts(state, b.n_cf, b.n_tail, b.n_bridge, b.n_cold, b.n_item)
        return self.merge_parts(state, parts, b.n_cf + b.n_tail)

    def candidate_columns_many(self, states: list[UserState | None], chunk: int = 256):
        """`candidate_columns` (the configured sizes) for each state in turn, recalled `chunk` users at a time:
        one ALS top-k and one FAISS search per index per chunk instead of one per user. A generator, so
        only a chunk is held."""
        for lo in range(0, len(states), chunk):
            block = states[lo:lo + chunk]
            yield from self.retrieve(block, self.recall_cf(block))

    # The two recall steps; Serve's chain runs them in two stages (CFRecall, TailRetrieval).
    def recall_cf(self, states: list[UserState | None]) -> list[list[Part]]:
        """ALS and item-item candidates of each user (none for an unknown one)."""
        b = self.cfg.blend
        return self.recall_parts_many(states, b.n_cf, 0, 0, 0, b.n_item)

    def retrieve(self, states: list[UserState | None], parts: list[list[Part]]) -> list[CandidateTable]:
        """Each user's tail, cold and bridge candidates (one FAISS search per index for all) merged with
        their CF `parts`; the fallback where nothing was recalled."""
        b = self.cfg.blend
        found = self.recall_parts_many(states, 0, b.n_tail, b.n_bridge, b.n_cold)
        return [self.merge_parts(st, [*p, *f], b.n_cf + b.n_tail)
                for st, p, f in zip(states, parts, found, strict=True)]

    def recall_parts(self, state: UserState, n_cf: int, n_tail: int, n_bridge: int, n_cold: int = 0,
                     n_item: int = 0) -> list[Part]:
        """(source, item rows, scores) per source that has something; Serve runs them in separate stages.

        The tail part holds the n_tail best tail/cold items and the n_cold best cold items: both come from
        the same text search (profile + recent items), the cold ones from an index of cold items alone."""
        return self.recall_parts_many([state], n_cf, n_tail, n_bridge, n_cold, n_item)[0]

    def recall_parts_many(self, states: list[UserState | None], n_cf: int, n_tail: int, n_bridge: int,
                          n_cold: int = 0, n_item: int = 0) -> list[list[Part]]:
        """`recall_parts` for several users at once (nothing for None): one ALS top-k, one item-item
        product and one FAISS search per index for all of them."""
        parts: list[list] = [[] for _ in states]
        known = [(i, st) for i, st in enumerate(states) if st is not None]
        seen = {i: st.excluded for i, st in known}
        cf = [i for i, st in known if n_cf and np.any(st.factor)]
        if cf:
            ids, sc = self.models.als.recommend_vectors(np.stack([states[i].factor for i in cf]), n_cf,
                                                   [seen[i] for i in cf])
            for j, i in enumerate(cf):
                parts[i].append(("cf", ids[j], sc[j]))
        item = [i for i, st in known if n_item and self.models.item_item is not None and len(st.seen)]
        if item:
            ids, sc = self.models.item_item.recommend([np.asarray(states[i].seen, np.int64) for i in item], n_item,
                                                 [seen[i] for i in item])
            for j, i in enumerate(item):
                parts[i].append(("item", ids[j], sc[j]))
        tail = [i for i, st in known if (n_tail or n_cold) and np.any(st.profile)]
        if tail:
            found = self._tail_search([states[i] for i in tail], n_tail, [seen[i] for i in tail], n_cold)
            for i, (ids, sc) in zip(tail, found, strict=True):
                parts[i].append(("tail", ids, sc))
        for i, st in known:
            if n_bridge and np.any(st.factor):
                sc = self.models.item_bridge[self._tail_rows] @ st.factor
                top = _topk(sc, n_bridge + len(seen[i]))
                ids = self._tail_rows[top]
                keep = ~np.isin(ids, seen[i])
                parts[i].append(("bridge", ids[keep][:n_bridge], sc[top][keep][:n_bridge]))
        return parts

    def merge_parts(self, state: UserState | None, parts: list[Part], n_fallback: int) -> CandidateTable:
        """One candidate table (column arrays) from parts in SOURCES order, or the fallback when there are none."""
        if state is None:
            return self._fallback(n_fallback)
        if not parts:
            return self._fallback(n_fallback, state.excluded)
        return self._merge(parts)

    def _tail_search(self, states: list[UserState], n: int, seen: list[np.ndarray], n_cold: int = 0
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per user: the profile and each of the last few items query the tail index (and the cold index);
        best score per item wins. One search per index for all the users' queries."""
        k_multi = self.cfg.index.multi_interest_items
        queries = [np.asarray([st.profile] + [self.models.item_vectors[i] for i in st.recent[:k_multi]], np.float32)
                   for st in states]
        bounds = np.cumsum([0] + [len(q) for q in queries])
        q = np.concatenate(queries)
        found = [_best_per_item(self.models.tail_index, q, bounds, n, seen)]
        if n_cold and self.models.cold_index is not None:
            found.append(_best_per_item(self.models.cold_index, q, bounds, n_cold, seen))
        out = []
        for u in range(len(states)):
            ids, scores = found[0][u]
            if len(found) > 1:  # cold items the tail search did not already bring
                cids, cscores = found[1][u]
                new = ~np.isin(cids, ids)
                ids, scores = np.concatenate([ids, cids[new]]), np.concatenate([scores, cscores[new]])
            out.append((ids, scores))
        return out

    def _fallback(self, n: int, seen: np.ndarray | None = None) -> CandidateTable:
        """Unknown users: popular head items mixed with tail items spread over the text space."""
        seen = np.zeros(0, np.int64) if seen is None else seen
        pop = self._pop_order[~np.isin(self._pop_order, seen)]
        n_tail = n // 2
        head = pop[self.models.item_segment[pop] == Segment.HEAD][: n - n_tail]
        tail = pop[self.models.item_segment[pop] != Segment.HEAD]
        tail = _diverse(self.models.item_vectors, tail[: 10 * n_tail], n_tail)
        ids = np.concatenate([head, tail])
        score = np.log1p(self.models.item_pop[ids])
        return self._merge([("pop", ids, score)])

    def _merge(self, parts: list[Part]) -> CandidateTable:
        """One row per item (sorted by item row): a flag and the best score per source; `source` is the
        first part that found it. Plain numpy: this runs on every request, where a pandas pivot costs more than the rest."""
        ids_all = np.concatenate([np.asarray(ids, np.int64) for _, ids, _ in parts])
        src_all = np.concatenate([np.full(len(ids), SOURCES.index(src)) for src, ids, _ in parts])
        items, first = np.unique(ids_all, return_index=True)
        out = {"item_idx": items}
        for s in SOURCES:
            flag = np.zeros(len(items), np.float32)
            best = np.full(len(items), np.nan, np.float32)
            for src, ids, sc in parts:
                if src == s and len(ids):
                    pos = np.searchsorted(items, np.asarray(ids, np.int64))
                    flag[pos] = 1.0
                    np.fmax.at(best, pos, np.asarray(sc, np.float32))
            out[f"from_{s}"], out[f"{s}_score"] = flag, best
        out["source"] = np.asarray(SOURCES, dtype=object)[src_all[first]]
        out["segment"] = LABELS[self.models.item_segment[items]]
        return out

    # -- item-side queries ----------------------------------------------------------
    def similar_items(self, item_id: str, k: int, segment: str | None = None) -> pd.DataFrame:
        row = self._item_row.get(str(item_id))
        if row is None:
            raise KeyError(item_id)
        return self._search_vectors(self.models.item_vectors[row][None], k, segment, exclude=row)

    def search_vector(self, vector: np.ndarray, k: int, segment: str | None = None) -> pd.DataFrame:
        """Search with a raw encoder vector (e.g. a free-text query); it is centred like the items."""
        q, _ = center_vectors(np.asarray(vector, np.float32)[None], self.models.vector_mean)
        return self._search_vectors(q, k, segment)

    def _search_vectors(self, q: np.ndarray, k: int, segment: str | None, exclude: int | None = None
                        ) -> pd.DataFrame:
        seg = None if segment is None else Segment[segment.upper()]  # a label from the caller
        index = self.models.tail_index if seg in (Segment.TAIL, Segment.COLD) else self.models.full_index
        want = k + 1 if exclude is not None else k
        if seg is not None:
            want = max(want * 4, want + 50)  # the filter below drops other segments
        scores, ids = index.search(q, want)
        ids, scores = ids[0], scores[0]
        keep = ids != (exclude if exclude is not None else -2)
        if seg is not None:
            keep &= self.models.item_segment[ids] == seg
        ids, scores = ids[keep][:k], scores[keep][:k]
        return pd.DataFrame({"item_idx": ids, "item_id": self.models.item_ids[ids], "score": scores,
                             "segment": LABELS[self.models.item_segment[ids]]})


def cold_index_of(item_vectors: np.ndarray, item_segment: np.ndarray, cfg: Config) -> VectorIndex | None:
    """The index of cold items alone (None when the catalog has none)."""
    cold = np.asarray(item_segment) == Segment.COLD
    return build_subset(item_vectors, cold, cfg.index) if cold.any() else None


def _best_per_item(index: VectorIndex, q: np.ndarray, bounds: np.ndarray, n: int, seen: list[np.ndarray]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user (queries bounds[u]:bounds[u+1]): the n best unseen items over the user's queries, each at
    its best score, best first."""
    if n <= 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in seen]
    # Only seen items in this index can take a place: a heavy user's history is mostly head items.
    seen = [s[index.contains(s)] for s in seen]
    all_scores, all_ids = index.search(q, n + max(len(s) for s in seen))
    out = []
    for u, s in enumerate(seen):
        ids, scores = all_ids[bounds[u]:bounds[u + 1]].ravel(), all_scores[bounds[u]:bounds[u + 1]].ravel()
        keep = ~np.isin(ids, s)
        ids, scores = ids[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        ids, scores = ids[order], scores[order]
        _, first = np.unique(ids, return_index=True)
        first = np.sort(first)[:n]
        out.append((ids[first], scores[first]))
    return out


def center_vectors(vectors: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Remove the catalog's mean vector and re-normalise.

    Sentence embeddings share a large common direction; without removing it, profiles of long
    histories all drift to the same "average item".
    """
    v = np.asarray(vectors, np.float32)
    mean = v.mean(axis=0) if mean is None else np.asarray(mean, np.float32)
    c = v - mean
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.maximum(norms, 1e-12)).astype(np.float32), mean.astype(np.float32)


def _profile(item_vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Session profile: recent items weigh more (rank-based decay; sessions carry no timestamps)."""
    if not len(rows):
        return np.zeros(item_vectors.shape[1], np.float32)
    w = 0.5 ** (np.arange(len(rows)) / 5.0)
    v = (item_vectors[rows] * w[:, None]).sum(0)
    return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _diverse(vectors: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Greedy farthest-point pick: each next item is the least similar to those already picked."""
    if len(rows) <= n:
        return rows
    picked = [0]
    sim = vectors[rows] @ vectors[rows[0]]
    for _ in range(n - 1):
        j = int(np.argmin(sim))
        picked.append(j)
        sim = np.maximum(sim, vectors[rows] @ vectors[rows[j]])
    return rows[picked]
