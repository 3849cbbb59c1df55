"""Per-item keywords from TF-IDF over the item text; they feed the `reason` strings."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

# Words that describe the catalog's format rather than an item.
_FORMAT_WORDS = ["genres", "tags", "category", "fans"]


def item_keywords(texts: list[str], top_n: int = 5, min_df: int = 2, max_df: float = 0.3) -> list[list[str]]:
    """The top_n highest TF-IDF words of each text (ties broken alphabetically)."""
    if not texts:
        return []
    n = len(texts)
    vec = TfidfVectorizer(ngram_range=(1, 1), min_df=min(min_df, n), max_df=max_df if n > 10 else 1.0,
                          stop_words=list(_english_stop_words()) + _FORMAT_WORDS, sublinear_tf=True,
                          token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z\-]+\b")
    try:
        X = vec.fit_transform(texts).tocsr()
    except ValueError:  # every word filtered out
        return [[] for _ in texts]
    vocab = np.asarray(vec.get_feature_names_out())
    out: list[list[str]] = []
    for i in range(n):
        row = X.getrow(i)
        if row.nnz == 0:
            out.append([])
            continue
        order = np.lexsort((vocab[row.indices], -row.data))
        words: list[str] = []
        for j in row.indices[order]:
            w = vocab[j]
            # Skip a unigram already inside a chosen bigram, and the reverse.
            if any(w in c or c in w for c in words):
                continue
            words.append(w)
            if len(words) == top_n:
                break
        out.append(words)
    return out


def _english_stop_words():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


def shared_keywords(a: list[str], b: list[str], limit: int = 2) -> list[str]:
    sb = set(b)
    return [w for w in a if w in sb][:limit]
