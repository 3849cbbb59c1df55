"""Item text -> L2-normalised vectors: the encoder (plain torch) and the Ray Data stage.

``ltray.embed.stage`` imports Ray; import it from there (``embed_items``, ``run_embed``,
``load_embeddings``) so that the encoder stays usable without a cluster.
"""

from ltray.embed.device import Hardware, choose_device, choose_dtype
from ltray.embed.encoder import ModelNotFoundError, TextEncoder, text_hash

__all__ = ["Hardware", "ModelNotFoundError", "TextEncoder", "choose_device", "choose_dtype", "text_hash"]
