"""Popularity segments: head, tail and cold, from training interactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

HEAD, TAIL, COLD = "head", "tail", "cold"
# Integer codes used in every per-item segment array (int8).
SEGMENT_CODES = {HEAD: 0, TAIL: 1, COLD: 2}


@dataclass
class Segments:
    """Per-item interaction counts in training and the segment of every catalog item."""

    table: pd.DataFrame  # item_id, count, segment (ordered like the catalog)
    head_share: float

    def of(self, item_ids) -> np.ndarray:
        return self.table.set_index("item_id").loc[list(item_ids), "segment"].to_numpy()

    def ids(self, *segments: str) -> np.ndarray:
        return self.table.loc[self.table["segment"].isin(segments), "item_id"].to_numpy()

    def counts(self) -> dict[str, int]:
        vc = self.table["segment"].value_counts()
        return {s: int(vc.get(s, 0)) for s in (HEAD, TAIL, COLD)}


def compute_segments(item_ids, train: pd.DataFrame, head_share: float = 0.8) -> Segments:
    """Head = the most popular items that together cover head_share of training interactions.

    Tail = the other items seen in training. Cold = items with no training interaction.
    Ties in popularity are broken by item_id, so the cut is deterministic.
    """
    # Named, so the table keeps an item_id column whatever item_ids was (list, array, Series).
    ids = pd.Index(pd.Series(item_ids, dtype=object).astype(str).to_numpy(), name="item_id")
    counts = train["item_id"].value_counts().reindex(ids, fill_value=0)
    order = pd.DataFrame({"item_id": ids, "count": counts.to_numpy()})
    order = order.sort_values(["count", "item_id"], ascending=[False, True], kind="stable")
    total = order["count"].sum()
    seg = np.full(len(order), COLD, dtype=object)
    if total > 0:
        cum = np.cumsum(order["count"].to_numpy()) / total
        n_head = int(np.searchsorted(cum, head_share - 1e-12) + 1)
        seen = order["count"].to_numpy() > 0
        seg[seen] = TAIL
        seg[:n_head] = HEAD
    order["segment"] = seg
    table = order.set_index("item_id").reindex(ids).reset_index()
    return Segments(table, head_share)


def segment_code_array(item_ids, train: pd.DataFrame, head_share: float = 0.8) -> np.ndarray:
    """compute_segments as an int8 array of SEGMENT_CODES, aligned to item_ids."""
    seg = compute_segments(item_ids, train, head_share).table["segment"].map(SEGMENT_CODES)
    return seg.to_numpy(np.int8)
