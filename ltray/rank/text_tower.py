"""The text tower: the BERT encoder inside the CTR model, partly trainable (top layers or LoRA).

The item text is tokenised once per item (``ItemTokens``); a batch gathers its items' rows.
The tower encodes them as ``TextEncoder`` does (mean pooling over the mask, L2 norm) and a
linear projection feeds the result to the DCN-v2 beside the other features. ``export`` writes
the fine-tuned encoder (LoRA merged into the weights) as a Hugging Face model folder that
``TextEncoder`` and the Ray Data embedding stage load as ``embed.model``.

The LoRA adapter is a small hand-written module (``peft`` is not installed and pulls in more
than a two-matrix adapter needs); its state dict is plain tensors, so checkpoints stay safetensors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltray.errors import LtrayError

# Attention query/value projections across BERT-family naming (BERT/RoBERTa, DistilBERT, others).
LORA_TARGETS = ("query", "value", "q_lin", "v_lin", "q_proj", "v_proj")
TOWER_MODES = ("top_layers", "lora")


class TextTowerError(LtrayError, ValueError):
    """A text-tower setting the encoder cannot take."""


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` with the base frozen; B starts at zero, so training starts
    from the unchanged encoder."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scaling = int(rank), float(alpha) / int(rank)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in the LoRA paper's reference code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight holds the adapter: same outputs, no extra cost."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def add_lora(encoder: nn.Module, rank: int, alpha: float) -> int:
    """Wrap every attention query/value Linear in a ``LoRALinear``; returns how many were wrapped."""
    names = [n for n, m in encoder.named_modules()
             if isinstance(m, nn.Linear) and n.rpartition(".")[2] in LORA_TARGETS]
    if not names:
        raise TextTowerError(f"no attention projections named {LORA_TARGETS} in {type(encoder).__name__}")
    for n in names:
        _replace(encoder, n, LoRALinear(encoder.get_submodule(n), rank, alpha))
    return len(names)


def merge_lora(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` with every adapter folded into its Linear (the original is untouched)."""
    out = copy.deepcopy(encoder)
    for n, m in list(out.named_modules()):
        if isinstance(m, LoRALinear):
            _replace(out, n, m.merged())
    return out


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (``encoder.layer`` in BERT/RoBERTa, ``transformer.layer`` in DistilBERT)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        try:
            layers = encoder.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TextTowerError(f"cannot find the transformer layers of {type(encoder).__name__}")


@dataclass
class ItemTokens:
    """Token ids of every catalog item, padded to ``max_length``; rows follow catalog order."""

    input_ids: np.ndarray  # int32 (n_items, max_length)
    lengths: np.ndarray  # int32 (n_items,): real tokens per item (the rest is padding)

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, max_length: int) -> ItemTokens:
        enc = tokenizer([t if isinstance(t, str) else str(t) for t in texts], truncation=True,
                        max_length=max_length, padding="max_length", return_attention_mask=True,
                        return_token_type_ids=False, return_tensors="np")
        mask = enc["attention_mask"].astype(np.int32)
        return cls(enc["input_ids"].astype(np.int32), mask.sum(1).astype(np.int32))

    def batch(self, item_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of the distinct items in ``item_idx`` (padded only to the longest
        of them) and each row's position among those items: every item is encoded once per batch."""
        uniq, inverse = np.unique(np.asarray(item_idx, np.int64), return_inverse=True)
        width = max(1, int(self.lengths[uniq].max())) if len(uniq) else 1
        ids = torch.from_numpy(self.input_ids[uniq, :width].astype(np.int64))
        mask = (torch.arange(width)[None, :] < torch.from_numpy(self.lengths[uniq].astype(np.int64))[:, None])
        return ids, mask.long(), torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def load_tokenizer(model: str | None):
    """The tokenizer of ``model`` (HF name or folder; None = the packaged MiniLM), as ``TextEncoder`` finds it."""
    from transformers import AutoTokenizer

    from ltray.embed.models import ModelNotFoundError, resolve_model

    path, is_local = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=is_local)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"text tower: tokenizer of {path!r} could not be loaded: {e}") from e


def load_encoder(model: str | None) -> tuple[nn.Module, str]:
    """(encoder in fp32, resolved path), loaded the way ``TextEncoder`` loads it."""
    from transformers import AutoModel

    from ltray.embed.models import ModelNotFoundError, resolve_model

    path, is_local = resolve_model(model)
    try:
        net = AutoModel.from_pretrained(path, local_files_only=is_local, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"text tower: model {path!r} could not be loaded: {e}") from e
    return net, path


def encoder_from_config(config: dict[str, Any]) -> nn.Module:
    """The encoder's architecture from its saved HF config (weights come from the checkpoint)."""
    from transformers import AutoConfig, AutoModel

    conf = AutoConfig.for_model(**config)
    return AutoModel.from_config(conf, dtype=torch.float32)


class TextTower(nn.Module):
    """Item tokens -> mean-pooled, L2-normalised encoder vector -> linear projection to ``out_dim``."""

    def __init__(self, encoder: nn.Module, mode: str, out_dim: int, layers: int = 1, lora_rank: int = 8,
                 lora_alpha: float = 16.0):
        super().__init__()
        if mode not in TOWER_MODES:
            raise TextTowerError(f"text tower mode must be one of {TOWER_MODES}, not {mode!r}")
        self.encoder = encoder
        self.hidden = int(encoder.config.hidden_size)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        if mode == "top_layers":
            blocks = transformer_layers(encoder)
            if not 1 <= layers <= len(blocks):
                raise TextTowerError(f"rank.text_tower_layers={layers}, the encoder has {len(blocks)} layers")
            for block in blocks[len(blocks) - layers:]:
                for p in block.parameters():
                    p.requires_grad_(True)
        else:
            add_lora(encoder, lora_rank, lora_alpha)
        self.proj = nn.Linear(self.hidden, out_dim)
        self.config = {"mode": mode, "out_dim": int(out_dim), "layers": int(layers), "lora_rank": int(lora_rank),
                       "lora_alpha": float(lora_alpha), "encoder_config": encoder.config.to_dict()}

    @classmethod
    def from_pretrained(cls, model: str | None, mode: str, out_dim: int, layers: int = 1, lora_rank: int = 8,
                        lora_alpha: float = 16.0) -> TextTower:
        net, path = load_encoder(model)
        tower = cls(net, mode, out_dim, layers, lora_rank, lora_alpha)
        tower.config["base_model"] = path
        return tower

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextTower:
        """Same architecture, weights uninitialised-from-checkpoint (load a state dict next)."""
        tower = cls(encoder_from_config(config["encoder_config"]), config["mode"], config["out_dim"],
                    config["layers"], config["lora_rank"], config["lora_alpha"])
        tower.config = dict(config)
        return tower

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What ``TextEncoder`` (mean pooling) returns for these tokens: unit vectors (n, hidden)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, p=2, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(input_ids, attention_mask))

    def trainable_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def export(self, out_dir: str | Path, tokenizer_source: str | None = None) -> Path:
        """The fine-tuned encoder as a Hugging Face folder (safetensors + config + tokenizer files)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        net = merge_lora(self.encoder).eval()
        # A fingerprint of the weights in config.json: the embedding stage's model id hashes config.json,
        # so each fine-tune gets its own id even when its weight files have the base model's sizes.
        h = hashlib.sha1()
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        net.config.ltray_text_tower = {"mode": self.config["mode"], "weights_sha1": h.hexdigest()[:16],
                                       "base_model": self.config.get("base_model")}
        net.save_pretrained(str(out))
        source = tokenizer_source or self.config.get("base_model")
        if source is None:
            raise TextTowerError("text tower export needs the base model's folder for the tokenizer files")
        load_tokenizer(source).save_pretrained(str(out))
        (out / "ltray_text_tower.json").write_text(json.dumps(
            {k: v for k, v in self.config.items() if k != "encoder_config"}, indent=2))
        return out
