"""Item text -> L2-normalised vectors: the encoder (plain torch), the stage's input rules and artifact
(``ltray.embed.items``, no Ray) and the Ray Data stage (``ltray.embed.stage``, the only one importing Ray).
"""

from ltray.embed.device import Hardware, choose_device, choose_dtype
from ltray.embed.encoder import ModelNotFoundError, TextEncoder, text_hash

__all__ = ["Hardware", "ModelNotFoundError", "TextEncoder", "choose_device", "choose_dtype", "text_hash"]
