"""FAISS indexes (tail and full), user text profiles and the text->CF bridge."""

from ltray.index.bridge import TextToCFBridge
from ltray.index.faiss_index import VectorIndex, build_tail_and_full, choose_factory
from ltray.index.profiles import multi_interest_search, recent_items_of, user_profiles

__all__ = ["TextToCFBridge", "VectorIndex", "build_tail_and_full", "choose_factory", "multi_interest_search",
           "recent_items_of", "user_profiles"]
