"""The three serving stages as plain classes: no Ray here, so they run (and test) in-process too.

Each stage opens the artifact store at a URI and loads only what it needs:

- `RecallStage` (CFRecall): ALS factors, the item-item model, seen items and user profiles -> user state
  (known, or folded in from session items) + CF candidates (ALS and item-item).
- `RetrievalStage` (TailRetrieval): FAISS tail/full indexes, the text->CF bridge, the text encoder ->
  tail and bridge candidates merged with the CF part; `/similar` and `/search`.
- `RankStage` (CTRRanker): FeatureBuilder + CTR model -> scores -> tail-aware blend + reasons.

Each runs one step of the library's one recommendation path (`Recommender.recommend_many`), so the
chain gives what the in-process `Recommender` gives. What passes between them is small and plain: a
user state, candidate columns and the top k as columns -- no DataFrames, never the item matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ltray.artifacts import ArtifactStore
from ltray.candidates import CandidateGenerator, CandidateModels, CandidateTable, Part
from ltray.config import Config, ServeConfig
from ltray.data.segments import HEAD
from ltray.threads import limit_threads
from ltray.user_state import Ask, UserState


def tail_share_of(segments) -> float:
    seg = np.asarray(segments)
    return float((seg != HEAD).mean()) if len(seg) else 0.0


class Artifacts:
    """One run folder, read lazily: each stage touches only the files it asks for."""

    def __init__(self, uri: str, serve: ServeConfig | None = None):
        self.uri = str(uri)
        self.store = ArtifactStore(self.uri, mode="r")
        manifest = self.store.manifest()
        cfg = Config.model_validate(manifest.get("config", {}))
        # Stage logic follows the config the run was fitted with; only the serve section is ours.
        self.cfg = cfg.model_copy(update={"serve": serve}) if serve is not None else cfg
        self.version = self.store.served_version()
        self._models: dict[bool, CandidateModels] = {}

    @cached_property
    def items(self) -> pd.DataFrame:
        return pq.read_table(self.store.stage_path("data") / "items.parquet").to_pandas()

    @cached_property
    def titles(self) -> np.ndarray | None:
        """The catalog's `title` column by item row (what a client shows), or None where it has none."""
        path = self.store.stage_path("data") / "items.parquet"
        if "title" not in pq.read_schema(path).names:
            return None
        return np.array([None if t is None else str(t) for t in pq.read_table(path, columns=["title"])
                         .column("title").to_pylist()], dtype=object)

    @cached_property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy().astype(str)

    @cached_property
    def vectors(self) -> np.ndarray:
        from ltray.embed.items import load_embeddings

        return load_embeddings(self.store.stage_path("embed"), self.item_ids)

    def models(self, faiss_indexes: bool) -> CandidateModels:
        """Loaded once per kind: the stages of one replica share them."""
        if faiss_indexes not in self._models:
            self._models[faiss_indexes] = CandidateModels.load(
                self.store.stage_path("cf"), self.store.stage_path("index"), self.item_ids, self.vectors,
                faiss_indexes=faiss_indexes)
        return self._models[faiss_indexes]


@dataclass
class Recall:
    """What CFRecall hands on: the user's state (None = unknown) and the CF part of the candidates."""

    state: UserState | None
    parts: list[Part]
    unknown_recent_items: list[str]
    version: str = ""  # the artifacts version it came from: item rows mean something only within one


class RecallStage:
    """CFRecall: user state (known, or folded in from session items), ALS and item-item recall."""

    def __init__(self, art: Artifacts):
        self.version = art.version
        self.generator = CandidateGenerator(art.models(faiss_indexes=False), art.cfg)

    def recall(self, user_id: str, recent_items: list[str] | None = None, exclude_seen: bool = True) -> Recall:
        state = self.generator.state(user_id, recent_items, exclude_seen)
        return Recall(state, self.generator.recall_cf([state])[0], self.generator.unknown_items(recent_items),
                      self.version)


class RetrievalStage:
    """TailRetrieval: FAISS tail search and the bridge for users; item and text queries."""

    def __init__(self, art: Artifacts, encoder=None):
        self.cfg = art.cfg
        self.version = art.version
        self.models = art.models(faiss_indexes=True)
        self.generator = CandidateGenerator(self.models, art.cfg)
        self._encoder = encoder
        self.titles = art.titles

    @property
    def encoder(self):
        if self._encoder is None:
            from ltray.embed.encoder import TextEncoder

            e = self.cfg.embed
            self._encoder = TextEncoder(model=e.model, pooling=e.pooling, max_length=e.max_length,
                                        dtype=e.dtype, device=e.device, threads=self.cfg.serve.encoder_threads)
        return self._encoder

    def candidates_many(self, recalls: list[Recall]) -> list[CandidateTable | None]:
        """The candidates of several requests: one FAISS search per index for all of them. None for a
        recall from another artifacts version (a version switch is rolling through the deployments)."""
        live = [r for r in recalls if r.version == self.version]
        tables = iter(self.generator.retrieve([r.state for r in live], [r.parts for r in live]))
        return [next(tables) if r.version == self.version else None for r in recalls]

    def similar(self, item_id: str, k: int, segment: str | None = None) -> pd.DataFrame:
        """Raises KeyError for an item outside the catalog."""
        return self._shown(self.generator.similar_items(item_id, k, segment))

    def search(self, text: str, k: int, segment: str | None = None) -> pd.DataFrame:
        vec = self.encoder.encode([text])[0]
        return self._shown(self.generator.search_vector(vec, k, segment))

    def _shown(self, hits: pd.DataFrame) -> pd.DataFrame:
        return hits.assign(title=with_titles(self.titles, hits["item_idx"]))[["item_id", "title", "score",
                                                                              "segment"]]


class RankStage:
    """CTRRanker: the Recommender's scoring (CF score + ranker logit, one forward pass for a batch of
    requests) -> tail-aware blend -> reasons, titles."""

    def __init__(self, art: Artifacts, faiss_indexes: bool = False):
        from ltray.recommend import load_recommender

        self.version = art.version
        # The very Recommender offline code builds (blend choice, explainer); the FAISS indexes only
        # where it runs the whole path (the colocated Pipeline).
        self.rec = load_recommender(art.store, art.cfg, models=art.models(faiss_indexes))
        self.titles = art.titles

    def rank_many(self, asks: list[Ask], states: list[UserState | None], tables: list[CandidateTable]
                  ) -> list[Ranked]:
        return [self._ranked(a, st, top) for a, st, top in
                zip(asks, states, self.rec.rank_many(asks, states, tables), strict=True)]

    def recommend_many(self, asks: list[Ask]) -> list[dict[str, Any]]:
        """The whole path in this process (the colocated Pipeline): /recommend bodies."""
        return [recommendation(a.user_id, self._ranked(a, st, top), self.rec.generator.unknown_items(a.recent_items))
                for a, (st, top) in zip(asks, self.rec.recommend_many(asks), strict=True)]

    def _ranked(self, ask: Ask, state: UserState | None, top: CandidateTable) -> Ranked:
        # the tail share this user's list got: the one asked for, else the blend's (per user under
        # blend.quota_by=affinity)
        return Ranked({**top, "title": with_titles(self.titles, top["item_idx"])},
                      float(self.rec.list_shares(state, ask.tail_share)[0]), self.version)


@dataclass
class Ranked:
    """What CTRRanker hands back: the top k as columns (None when the candidates came from another
    artifacts version), the tail share it applied and its own version."""

    top: CandidateTable | None
    tail_share: float
    version: str


def with_titles(titles: np.ndarray | None, item_idx) -> np.ndarray:
    """The titles of these item rows (None each where the catalog has no title column)."""
    rows = np.asarray(item_idx, np.int64)
    return titles[rows] if titles is not None else np.full(len(rows), None, dtype=object)


def recommendation(user_id: str, ranked: Ranked, unknown_recent_items: list[str]) -> dict[str, Any]:
    """The /recommend response body."""
    top = ranked.top
    n = len(top["item_id"])
    reasons = top["reason"] if "reason" in top else [""] * n
    titles = top["title"] if "title" in top else [None] * n
    items = [{"item_id": str(i), "title": t, "score": float(s), "segment": str(g), "source": str(o),
              "reason": str(r)}
             for i, t, s, g, o, r in zip(top["item_id"], titles, top["score"].tolist(), top["segment"],
                                         top["source"], reasons, strict=True)]
    # Only the fallback (a user we know nothing of, or nothing recalled) gives "pop" candidates.
    return {"user_id": user_id, "items": items, "fallback": bool(np.any(top["source"] == "pop")),
            "tail_share": ranked.tail_share, "unknown_recent_items": unknown_recent_items, "version": ranked.version}


def scored_items(table: pd.DataFrame, version: str) -> dict[str, Any]:
    items = [{"item_id": str(r.item_id), "title": getattr(r, "title", None), "score": float(r.score),
              "segment": str(r.segment)} for r in table.itertuples(index=False)]
    return {"items": items, "version": version}


__all__ = ["Artifacts", "RankStage", "Ranked", "Recall", "RecallStage", "RetrievalStage",
           "limit_threads", "recommendation", "scored_items", "tail_share_of", "with_titles"]
