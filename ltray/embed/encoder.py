"""A BERT-family text encoder: texts in, L2-normalised float32 vectors out.

One class serves the batch stage (Ray Data actors) and the query path (Serve).
Batches are cut from the texts sorted by token length, so that each batch pads
only to its own longest text; results come back in input order.

Not `sentence_transformers.SentenceTransformer.encode` (installed with the default encoder's package,
not a dependency of ltray): it sorts by character length, not by tokens, and keeps neither the dtype
and device choice per machine (bf16 where the CPU has it) nor the per-call statistics (tokens, padding,
truncations) the embedding stage reports; this class loads any Hugging Face BERT-family folder or name
with `transformers` alone, the same way on Ray Data's actors and in Serve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltray.embed.device import choose_device, choose_dtype, probe_hardware
from ltray.embed.models import ModelNotFoundError, model_id_of, resolve_model

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
def halve_on_oom(forward, input_ids: torch.Tensor, mask: torch.Tensor, on_oom=lambda: None,
                 oom: type[BaseException] = torch.cuda.OutOfMemoryError) -> np.ndarray:
    """``forward(ids, mask)``; a batch that runs out of GPU memory is retried as two halves.

    A single text that still does not fit is a real error and is raised.
    """
    try:
        return forward(input_ids, mask)
    except oom:
        if len(input_ids) == 1:
            raise
        on_oom()
        half = len(input_ids) // 2
        return np.concatenate([halve_on_oom(forward, input_ids[:half], mask[:half], on_oom, oom),
                               halve_on_oom(forward, input_ids[half:], mask[half:], on_oom, oom)])


@dataclass
class Encoded:
    vectors: np.ndarray  # float32 (n, d), unit norm
    truncated: np.ndarray  # bool (n,): text was cut at max_length
    tokens: np.ndarray  # int64 (n,): tokens fed to the model per text (no padding)


class TextEncoder:
    """``encode(texts) -> float32 (n, d)``, L2-normalised; mean (over the mask) or CLS pooling."""

    def __init__(self, model: str | None = None, pooling: str = "mean", max_length: int = 128,
                 dtype: str = "auto", device: str = "auto", threads: int | None = None,
                 batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        if threads is not None and threads >= 1:
            torch.set_num_threads(int(threads))
        hw = probe_hardware()
        self.device = choose_device(device, hw)
        self.dtype = choose_dtype(dtype, self.device, hw)
        self.pooling = pooling
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        path, is_local = resolve_model(model)
        self.model_path = path
        self.model_id = model_id_of(path, is_local)
        if is_local and not (Path(path) / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path!r} has no config.json: not a Hugging Face "
                                     "model folder (embed.model)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=is_local)
            net = AutoModel.from_pretrained(path, local_files_only=is_local, dtype=torch.float32)
        except (OSError, ValueError) as e:
            what = (f"model folder {path!r} could not be loaded" if is_local else
                    f"model {model!r} is not a folder and could not be loaded from the hub")
            raise ModelNotFoundError(f"{what} (embed.model): {e}") from e
        self.model = net.to(device=self.device, dtype=TORCH_DTYPES[self.dtype]).eval()
        self.dim = int(self.model.config.hidden_size)
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # -- tokenisation ---------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text (truncated at max_length) and which texts were cut."""
        texts = list(texts)
        # One token over the limit tells "cut" from "fits exactly"; the few cut texts are redone.
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length + 1, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        truncated = np.fromiter((len(x) > self.max_length for x in ids), dtype=bool, count=len(ids))
        if truncated.any():
            cut = np.flatnonzero(truncated)
            redo = self.tokenizer([texts[i] for i in cut], truncation=True, max_length=self.max_length,
                                  padding=False, return_attention_mask=False,
                                  return_token_type_ids=False)["input_ids"]
            for i, row in zip(cut, redo, strict=True):
                ids[i] = row
        return ids, truncated

    def count_truncated(self, texts: Sequence[str]) -> int:
        return int(self.tokenize(texts)[1].sum())

    # -- encoding -------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        return self.encode_detailed(texts, batch_size).vectors

    def encode_detailed(self, texts: Sequence[str], batch_size: int | None = None,
                        sort_by_length: bool = True) -> Encoded:
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        n = len(texts)
        if n == 0:
            return Encoded(np.zeros((0, self.dim), np.float32), np.zeros(0, bool), np.zeros(0, np.int64))
        ids, truncated = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        bs = int(batch_size or self.batch_size)
        order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(n)
        out = np.empty((n, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                out[idx] = self._encode_padded(*self._pad([ids[i] for i in idx]))
        return Encoded(out, truncated, lengths)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, :len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[j, :len(r)] = 1
        return input_ids, mask

    def _encode_padded(self, input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        if self.device != "cuda":
            return self._forward(input_ids, mask)
        return halve_on_oom(self._forward, input_ids, mask, on_oom=torch.cuda.empty_cache)

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        input_ids = input_ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            # Pool in fp32 whatever the model ran in: bf16 sums over 100 tokens lose digits.
            m = mask.unsqueeze(-1).float()
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {"model": self.model_id, "dim": self.dim, "pooling": self.pooling,
                "max_length": self.max_length, "dtype": self.dtype, "device": self.device,
                "threads": torch.get_num_threads()}

    def __repr__(self) -> str:
        return f"TextEncoder({json.dumps(self.describe())})"
