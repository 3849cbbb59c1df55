"""The CTR model: DCN-v2 (hashed id embeddings + dense features -> cross layers -> MLP -> logit)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ltray.config import RankConfig

WEIGHTS_FILE = "model.safetensors"


class CrossLayer(nn.Module):
    """DCN-v2 cross: x_{l+1} = x0 * (W x_l + b) + x_l (explicit feature crosses of growing degree)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class CTRModel(nn.Module):
    def __init__(self, n_dense: int, id_buckets: int, id_dim: int, cross_layers: int, hidden: tuple[int, ...],
                 sparse_embeddings: bool = False):
        super().__init__()
        self.config = {"n_dense": int(n_dense), "id_buckets": int(id_buckets), "id_dim": int(id_dim),
                       "cross_layers": int(cross_layers), "hidden": [int(h) for h in hidden]}
        # Sparse gradients touch (and all-reduce) only the rows in the batch, not the whole table.
        self.user_emb = nn.Embedding(id_buckets, id_dim, sparse=sparse_embeddings)
        self.item_emb = nn.Embedding(id_buckets, id_dim, sparse=sparse_embeddings)
        # Small init: hashed ids start near zero and only move where the data says so.
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        dim = 2 * id_dim + n_dense
        self.cross = nn.ModuleList(CrossLayer(dim) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CTRModel:
        return cls(config["n_dense"], config["id_buckets"], config["id_dim"], config["cross_layers"],
                   tuple(config["hidden"]))

    @classmethod
    def for_features(cls, spec: dict[str, Any], cfg: RankConfig, sparse_embeddings: bool = False) -> CTRModel:
        return cls(spec["n_dense"], spec["id_buckets"], cfg.id_dim, cfg.cross_layers, cfg.hidden, sparse_embeddings)

    def optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """Adam for dense weights; SparseAdam for sparse embedding tables (lazy, rows in the batch only)."""
        emb = [self.user_emb.weight, self.item_emb.weight]
        if not self.user_emb.sparse:
            return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)]
        ids = {id(p) for p in emb}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [torch.optim.Adam(rest, lr=lr, weight_decay=weight_decay), torch.optim.SparseAdam(emb, lr=lr)]

    def forward(self, user_hash: torch.Tensor, item_hash: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([self.user_emb(user_hash), self.item_emb(item_hash), dense], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.deep(x)).squeeze(1)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def save_model(model: CTRModel, out_dir: str | Path, feature_spec: dict[str, Any]) -> Path:
    """Weights as safetensors; the model config and feature spec ride along in its metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model_config": json.dumps(model.config), "feature_spec": json.dumps(feature_spec)}
    path = out / WEIGHTS_FILE
    save_file(state, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    missing = {"model_config", "feature_spec"} - set(meta)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)} in its metadata: not an ltray CTR checkpoint")
    return {k: json.loads(v) for k, v in meta.items()}


def load_model(path: str | Path) -> tuple[CTRModel, dict[str, Any]]:
    """Weights only (safetensors only). Returns the model (eval mode) and its feature spec."""
    meta = read_metadata(path)
    model = CTRModel.from_config(meta["model_config"])
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the model config in its own metadata: {e}") from e
    model.eval()
    return model, meta["feature_spec"]
