"""The CTR model: DCN-v2 (hashed id embeddings + dense features -> cross layers -> MLP -> logit).

With ``rank.text_tower`` set, a ``TextTower`` (the BERT encoder, partly trainable) encodes the items'
text and its projection joins the cross layers' input beside the other features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ltray.config import RankConfig
from ltray.rank.text_tower import TextTower

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
                 sparse_embeddings: bool = False, text_tower: TextTower | None = None):
        super().__init__()
        self.config = {"n_dense": int(n_dense), "id_buckets": int(id_buckets), "id_dim": int(id_dim),
                       "cross_layers": int(cross_layers), "hidden": [int(h) for h in hidden]}
        # Only a tower model carries the key: a frozen model's config (and checkpoint) is as before.
        self.text_tower = text_tower
        if text_tower is not None:
            self.config["text_tower"] = text_tower.config
        # Sparse gradients touch (and all-reduce) only the rows in the batch, not the whole table.
        self.user_emb = nn.Embedding(id_buckets, id_dim, sparse=sparse_embeddings)
        self.item_emb = nn.Embedding(id_buckets, id_dim, sparse=sparse_embeddings)
        # Small init: hashed ids start near zero and only move where the data says so.
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        dim = 2 * id_dim + n_dense + (text_tower.config["out_dim"] if text_tower is not None else 0)
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
        tower = TextTower.from_config(config["text_tower"]) if "text_tower" in config else None
        return cls(config["n_dense"], config["id_buckets"], config["id_dim"], config["cross_layers"],
                   tuple(config["hidden"]), text_tower=tower)

    @classmethod
    def for_features(cls, spec: dict[str, Any], cfg: RankConfig, sparse_embeddings: bool = False) -> CTRModel:
        """The model for a feature spec; with ``cfg.text_tower`` != frozen it loads ``cfg.text_tower_model``."""
        tower = None
        if cfg.text_tower != "frozen":
            tower = TextTower.from_pretrained(cfg.text_tower_model, cfg.text_tower, cfg.text_dim,
                                              cfg.text_tower_layers, cfg.lora_rank, cfg.lora_alpha)
        return cls(spec["n_dense"], spec["id_buckets"], cfg.id_dim, cfg.cross_layers, cfg.hidden, sparse_embeddings,
                   text_tower=tower)

    def optimizers(self, lr: float, weight_decay: float, tower_lr: float | None = None) -> list[torch.optim.Optimizer]:
        """Adam for dense weights; SparseAdam for sparse embedding tables (lazy, rows in the batch only).

        The trainable encoder weights of a text tower get their own group at ``tower_lr`` (fine-tuning
        a pretrained encoder wants a smaller step than the fresh DCN); frozen weights get no optimizer.
        """
        emb = [self.user_emb.weight, self.item_emb.weight]
        if self.text_tower is None:
            if not self.user_emb.sparse:
                return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)]
            ids = {id(p) for p in emb}
            rest = [p for p in self.parameters() if id(p) not in ids]
            return [torch.optim.Adam(rest, lr=lr, weight_decay=weight_decay), torch.optim.SparseAdam(emb, lr=lr)]
        skip = {id(p) for p in emb} if self.user_emb.sparse else set()
        encoder = self.text_tower.trainable_encoder_parameters() if self.text_tower is not None else []
        skip |= {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]
        groups = [{"params": rest}]
        if encoder:
            groups.append({"params": encoder, "lr": tower_lr if tower_lr is not None else lr})
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)]
        if self.user_emb.sparse:
            opts.append(torch.optim.SparseAdam(emb, lr=lr))
        return opts

    def forward(self, user_hash: torch.Tensor, item_hash: torch.Tensor, dense: torch.Tensor,
                item_input_ids: torch.Tensor | None = None, item_attention_mask: torch.Tensor | None = None,
                item_rows: torch.Tensor | None = None, item_text: torch.Tensor | None = None) -> torch.Tensor:
        """Logits per row. A text-tower model also takes the tokens of the batch's distinct items
        (``ItemTokens.batch``) and ``item_rows``, each row's position among them; or ``item_text``,
        the tower's outputs per row computed beforehand (scoring without gradients)."""
        parts = [self.user_emb(user_hash), self.item_emb(item_hash), dense]
        if self.text_tower is not None and item_text is not None:
            parts.append(item_text)
        elif self.text_tower is not None:
            if item_input_ids is None or item_attention_mask is None or item_rows is None:
                raise ValueError("this CTR model has a text tower (rank.text_tower="
                                 f"{self.config['text_tower']['mode']!r}): it scores only with the items' tokens; "
                                 "export its encoder and score with a frozen-tower ranker")
            parts.append(self.text_tower(item_input_ids, item_attention_mask)[item_rows])
        x0 = torch.cat(parts, dim=1)
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
