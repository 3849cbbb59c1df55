"""Scoring with a trained CTR model: load weights only, score a candidate table in one forward pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltray.rank.features import (
    SPEC_FILE,
    FeatureBuilder,
    FeatureContext,
    FeatureSpecError,
    UserState,
    spec_difference,
)
from ltray.rank.model import WEIGHTS_FILE, CTRModel, load_model

if TYPE_CHECKING:
    from ltray.candidates import CandidateTable

RANK_CONFIG_FILE = "rank_config.json"
TOWER_ITEMS_FILE = "text_tower_items.npy"  # the tower's output per catalog item: scoring needs no tokens


class Ranker:
    """A CTR model and the FeatureBuilder it was trained with."""

    def __init__(self, model: CTRModel, builder: FeatureBuilder, debias_popularity: bool = False,
                 info: dict[str, Any] | None = None, item_text: np.ndarray | None = None):
        expected = builder.spec()
        if model.config["n_dense"] != expected["n_dense"] or model.config["id_buckets"] != expected["id_buckets"]:
            raise FeatureSpecError(
                f"model expects {model.config['n_dense']} dense features and {model.config['id_buckets']} id "
                f"buckets; the feature builder gives {expected['n_dense']} and {expected['id_buckets']}")
        self.model = model.eval()
        self.builder = builder
        self.debias_popularity = debias_popularity
        self.info = info or {}
        # A text-tower model scores with the tower's output per catalog item, computed after training.
        self.item_text = item_text
        if model.text_tower is not None and item_text is None:
            raise FeatureSpecError("this CTR model has a text tower but no per-item tower outputs "
                                   f"({TOWER_ITEMS_FILE}) were given")

    @classmethod
    def load(cls, in_dir: str | Path) -> Ranker:
        """``model.safetensors`` + ``feature_spec.json`` + ``features.npz`` (+ optional ``rank_config.json``)."""
        d = Path(in_dir)
        if not (d / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{d / WEIGHTS_FILE} does not exist: no trained ranker there")
        model, trained_spec = load_model(d / WEIGHTS_FILE)
        builder = FeatureBuilder.load(d)
        if builder.spec() != trained_spec:
            raise FeatureSpecError(
                f"{d / SPEC_FILE} does not match the features {d / WEIGHTS_FILE} was trained on "
                f"({spec_difference(trained_spec, builder.spec())}); retrain the ranker or restore its "
                f"feature files")
        info: dict[str, Any] = {}
        if (d / RANK_CONFIG_FILE).exists():
            info = json.loads((d / RANK_CONFIG_FILE).read_text())
        item_text = None
        if model.text_tower is not None:
            if not (d / TOWER_ITEMS_FILE).exists():
                raise FileNotFoundError(f"{d / TOWER_ITEMS_FILE} does not exist: a text-tower ranker scores with it")
            item_text = np.load(d / TOWER_ITEMS_FILE, allow_pickle=False)
        return cls(model, builder, bool(info.get("debias_popularity", False)), info, item_text)

    def score(self, ctx: FeatureContext, table: CandidateTable, users_override: dict[str, UserState] | None = None,
              debias_popularity: bool | None = None) -> np.ndarray:
        """Click probability per row of ``table`` (user_id, item_idx, from_* flags: a DataFrame or a mapping
        of column arrays), float32."""
        if len(np.asarray(table["item_idx"])) == 0:
            return np.zeros(0, np.float32)
        debias = self.debias_popularity if debias_popularity is None else debias_popularity
        return self.score_features(self.features(ctx, table, users_override, debias))

    def features(self, ctx: FeatureContext, table: CandidateTable, users_override: dict[str, UserState] | None = None,
                 debias_popularity: bool = False) -> dict[str, np.ndarray]:
        """The model's inputs for ``table``: the FeatureBuilder's, plus the tower's item outputs if it has one."""
        feats = self.builder.build(ctx, table, users_override, debias_popularity=debias_popularity)
        if self.item_text is not None:
            feats["item_text"] = self.item_text[np.asarray(table["item_idx"], np.int64)]
        return feats

    def score_features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        item_text = feats.get("item_text")
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.asarray(feats["user_hash"], np.int64)),
                                torch.from_numpy(np.asarray(feats["item_hash"], np.int64)),
                                torch.from_numpy(np.ascontiguousarray(feats["dense"], np.float32)),
                                item_text=None if item_text is None else torch.from_numpy(
                                    np.ascontiguousarray(item_text, np.float32)))
            return torch.sigmoid(logits).numpy().astype(np.float32)
