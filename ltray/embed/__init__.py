"""Item text -> L2-normalised vectors: the encoder (plain torch), the stage's input rules and artifact
(``ltray.embed.items``, no Ray) and the Ray Data stage (``ltray.embed.stage``, the only one importing Ray).

``TextEncoder`` is imported on first use: the stage's CPU-less Ray tasks import this package, and torch
would add seconds to each of their workers' start.
"""

from ltray.embed.device import Hardware, choose_device, choose_dtype
from ltray.embed.models import ModelNotFoundError, text_hash


def __getattr__(name: str):
    if name == "TextEncoder":
        from ltray.embed.encoder import TextEncoder

        return TextEncoder
    raise AttributeError(f"module 'ltray.embed' has no attribute {name!r}")


__all__ = ["Hardware", "ModelNotFoundError", "TextEncoder", "choose_device", "choose_dtype", "text_hash"]
