"""The three serving stages as plain classes: no Ray here, so they run (and test) in-process too.

Each stage opens the artifact store at a URI and loads only what it needs:

- `RecallStage` (CFRecall): ALS factors, the item-item model, seen items and user profiles -> user state +
  CF candidates (ALS and item-item);
  fold-in of unseen users from their session items.
- `RetrievalStage` (TailRetrieval): FAISS tail/full indexes, the text->CF bridge, the text encoder ->
  tail and bridge candidates merged with the CF part; `/similar` and `/search`.
- `RankStage` (CTRRanker): FeatureBuilder + CTR model -> scores -> tail-aware blend + reasons.

They call the library's own pieces (`CandidateGenerator.recall_parts` / `merge_parts`, the
`Recommender`'s scoring, `blend` and `Explainer`), so the composition gives what the in-process
`Recommender` gives. What passes between them is small and plain: a user state (one factor and one
profile vector, a few item rows), candidate columns (numpy arrays of item rows, flags and scores) and
the top k as columns -- no DataFrames, never the item matrices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ltray.artifacts import ArtifactStore
from ltray.candidates import CandidateGenerator, CandidateModels, Columns
from ltray.config import Config, ServeConfig
from ltray.data.segments import HEAD
from ltray.threads import limit_threads
from ltray.user_state import UserState

Part = tuple[str, np.ndarray, np.ndarray]


def artifacts_version(store: ArtifactStore) -> str:
    """The version a run folder answers with (the ranker's stage version, as `load_recommender` names it)."""
    return store.manifest().get("stages", {}).get("rank", {}).get("version", "unversioned")


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
        self.version = artifacts_version(self.store)

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
        return CandidateModels.load(self.store.stage_path("cf"), self.store.stage_path("index"), self.item_ids,
                                    self.vectors, faiss_indexes=faiss_indexes)


@dataclass
class Recall:
    """What CFRecall hands on: the user's state (None = unknown) and the CF part of the candidates."""

    state: UserState | None
    parts: list[Part]
    unknown_recent_items: list[str]
    version: str = ""  # the artifacts version it came from: item rows mean something only within one


@dataclass
class Candidates:
    table: Columns  # item_idx, from_*, *_score, source, segment: one numpy array each
    fallback: bool
    version: str = ""
    # False: the recall came from another artifacts version (a version switch is rolling through the
    # deployments); the table is empty and the caller asks again.
    consistent: bool = True


class RecallStage:
    """CFRecall: user state (known, or folded in from session items), ALS and item-item recall."""

    def __init__(self, art: Artifacts):
        self.cfg = art.cfg
        self.version = art.version
        self.generator = CandidateGenerator(art.models(faiss_indexes=False), art.cfg)

    def recall(self, user_id: str, recent_items: list[str] | None = None, exclude_seen: bool = True) -> Recall:
        recent = list(recent_items or [])
        rows = self.generator.item_rows(recent)
        unknown = [i for i, r in zip(recent, rows, strict=True) if r < 0]
        state = self.generator.state(user_id, recent)
        if state is not None and not exclude_seen:
            state = dataclasses.replace(state, exclude_seen=False)
        b = self.cfg.blend
        parts = [] if state is None else self.generator.recall_parts(state, b.n_cf, 0, 0, n_item=b.n_item)
        return Recall(state, parts, unknown, self.version)


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

    def candidates_many(self, recalls: list[Recall]) -> list[Candidates]:
        """The candidates of several requests: one FAISS search per index for all of them."""
        b = self.cfg.blend
        live = [i for i, r in enumerate(recalls) if r.version == self.version and r.state is not None]
        found = self.generator.recall_parts_many([recalls[i].state for i in live], 0, b.n_tail, b.n_bridge,
                                                 b.n_cold) if live else []
        extra = dict(zip(live, found, strict=True))
        out = []
        for i, recall in enumerate(recalls):
            if recall.version != self.version:
                out.append(Candidates({}, fallback=False, version=self.version, consistent=False))
                continue
            parts = list(recall.parts) + extra.get(i, [])
            table = self.generator.merge_parts(recall.state, parts, b.n_cf + b.n_tail)
            out.append(Candidates(table, fallback=not parts, version=self.version))
        return out

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
    """CTRRanker: the Recommender's own scoring (CF score + ranker logit) -> tail-aware blend -> reasons.

    Serve runs the Recommender's steps split around the CTR model's forward pass (`features` -> `forward`
    over several requests -> `finish`), so it can batch that pass.
    """

    def __init__(self, art: Artifacts):
        from ltray.recommend import load_recommender

        self.cfg = art.cfg
        self.version = art.version
        # The very Recommender offline code builds (blend choice, explainer), minus the FAISS indexes.
        self.rec = load_recommender(art.uri, art.cfg, faiss_indexes=False)
        self._model = self.rec.ranker
        self.titles = art.titles

    def applied_tail_share(self, state: UserState | None, tail_share: float | None = None) -> float:
        """The tail share this user's list gets: the one asked for, else the blend's (per user under
        blend.quota_by=affinity)."""
        return float(self.rec.list_shares(state, tail_share)[0])

    def features(self, user_id: str, state: UserState | None, cands: Columns) -> dict[str, np.ndarray] | None:
        """The CTR model's inputs (None: the model has no say for this request)."""
        return self.rec.ranker_features(user_id, state, cands)

    def finish(self, state: UserState | None, cands: Columns, probs: np.ndarray | None, k: int,
               tail_share: float | None = None) -> Columns:
        """Scores from the model's probabilities, then the blended top k as columns."""
        scored = self.rec.fill_scores(dict(cands), *self.rec.parts_from(state, cands, probs))
        return self._titled(self.rec.top_k_columns(state, scored, k, tail_share))

    def forward(self, batch: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """One forward pass over the concatenated features of several requests."""
        sizes = [len(f["dense"]) for f in batch]
        joined = {key: np.concatenate([f[key] for f in batch]) for key in batch[0]}
        return np.split(self._model.score_features(joined), np.cumsum(sizes)[:-1])

    def _titled(self, top: Columns) -> Columns:
        # here, so both topologies (CTRRanker and the colocated Pipeline) answer with titles
        return {**top, "title": with_titles(self.titles, top["item_idx"])}


@dataclass
class Ranked:
    """What CTRRanker hands back: the top k as columns (None when the candidates came from another
    artifacts version), the tail share it applied and its own version."""

    top: Columns | None
    tail_share: float
    version: str


def with_titles(titles: np.ndarray | None, item_idx) -> np.ndarray:
    """The titles of these item rows (None each where the catalog has no title column)."""
    rows = np.asarray(item_idx, np.int64)
    return titles[rows] if titles is not None else np.full(len(rows), None, dtype=object)


def recommendation(user_id: str, recall: Recall, cands: Candidates, top: Columns, tail_share: float,
                   version: str) -> dict[str, Any]:
    """The /recommend response body from the stages' outputs."""
    n = len(top["item_id"])
    reasons = top["reason"] if "reason" in top else [""] * n
    titles = top["title"] if "title" in top else [None] * n
    items = [{"item_id": str(i), "title": t, "score": float(s), "segment": str(g), "source": str(o),
              "reason": str(r)}
             for i, t, s, g, o, r in zip(top["item_id"], titles, top["score"].tolist(), top["segment"],
                                         top["source"], reasons, strict=True)]
    return {"user_id": user_id, "items": items, "fallback": cands.fallback, "tail_share": float(tail_share),
            "unknown_recent_items": recall.unknown_recent_items, "version": version}


def scored_items(table: pd.DataFrame, version: str) -> dict[str, Any]:
    items = [{"item_id": str(r.item_id), "title": getattr(r, "title", None), "score": float(r.score),
              "segment": str(r.segment)} for r in table.itertuples(index=False)]
    return {"items": items, "version": version}


__all__ = ["Artifacts", "Candidates", "RankStage", "Ranked", "Recall", "RecallStage", "RetrievalStage",
           "artifacts_version", "limit_threads", "recommendation", "scored_items", "tail_share_of", "with_titles"]
