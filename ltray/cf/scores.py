"""The CF score: ALS and item-item z-scores mixed by one weight, for candidates or the whole catalog.

Each source is standardised per user over the whole catalog, so the two are on one scale and the mix
weight (chosen on validation) means the same on every catalog. `cf.mix` = 0 is ALS alone, 1 the
item-item model alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ltray.cf.als import ALSRecall
from ltray.cf.itemitem import ItemItemRecall
from ltray.topk import top_k

# Users scored per block in full-catalog scoring: a (block x n_items) float64 block stays near 200 MB.
_BLOCK_CELLS = 25_000_000


@dataclass
class CFScorer:
    als: ALSRecall
    item_item: ItemItemRecall | None = None
    mix: float = 0.0

    @property
    def item_weight(self) -> float:
        return self.mix if self.item_item is not None else 0.0

    @cached_property
    def factor_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance (over items) of the item factors: a user's ALS scores' mean and variance."""
        f = self.als.item_factors.astype(np.float64)
        mu = f.mean(axis=0)
        c = f - mu
        return mu, (c.T @ c) / max(len(f), 1)

    def als_z(self, factors: np.ndarray, item_idx: np.ndarray | None = None) -> np.ndarray:
        """(m, k) ALS scores of item_idx (None = every item) standardised over the catalog per user."""
        u = np.atleast_2d(np.asarray(factors, np.float64))
        mu, cov = self.factor_stats
        items = self.als.item_factors if item_idx is None else self.als.item_factors[np.asarray(item_idx, np.int64)]
        raw = u @ items.astype(np.float64).T
        std = np.sqrt(np.maximum(np.einsum("uf,fg,ug->u", u, cov, u), 0.0)) + 1e-12
        return (raw - (u @ mu)[:, None]) / std[:, None]

    def z(self, factor: np.ndarray, history: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """One user's CF score of each item in item_idx."""
        items = np.asarray(item_idx, np.int64)
        out = np.zeros(len(items), np.float64)
        if self.item_weight < 1:
            out += (1.0 - self.item_weight) * self.als_z(factor, items)[0]
        if self.item_weight > 0:
            out += self.item_weight * self.item_item.z_scores([history], items)
        return out.astype(np.float32)

    def catalog_z(self, factors: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(m, n_items) CF scores of every item for m users."""
        out = np.zeros((len(histories), self.als.n_items), np.float64)
        if self.item_weight < 1:
            out += (1.0 - self.item_weight) * self.als_z(factors)
        if self.item_weight > 0:
            s = self.item_item.scores(histories)
            mean, std = self.item_item.score_stats(s)
            dense = s.toarray().astype(np.float64)
            z = (dense - mean[:, None]) / (std[:, None] + 1e-12)
            out += self.item_weight * np.where(std[:, None] > 0, z, 0.0)
        return out

    def recommend(self, factors: np.ndarray, histories: list[np.ndarray], k: int,
              exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """(m, k) item rows by CF score over the whole catalog, best first, `exclude` left out (-1 pads)."""
        factors = np.atleast_2d(factors)
        out = np.full((len(histories), k), -1, np.int64)
        step = max(1, _BLOCK_CELLS // max(self.als.n_items, 1))
        for lo in range(0, len(histories), step):
            block = self.catalog_z(factors[lo:lo + step], histories[lo:lo + step])
            ex = None if exclude is None else exclude[lo:lo + step]
            out[lo:lo + len(block)] = top_k(block, k, ex)
        return out


__all__ = ["CFScorer"]
