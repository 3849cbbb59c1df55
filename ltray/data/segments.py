"""Popularity segments: head, tail and cold, from training interactions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd


class Segment(IntEnum):
    """An item's popularity segment. Per-item arrays hold the int8 values; tables, JSON and HTTP the labels."""

    HEAD = 0
    TAIL = 1
    COLD = 2

    @property
    def label(self) -> str:
        return self.name.lower()


HEAD, TAIL, COLD = (s.label for s in Segment)  # the labels, for tables
LABELS = np.array([s.label for s in Segment], dtype=object)  # a label array is LABELS[codes]


def segment_codes(labels: Iterable[str]) -> np.ndarray:
    """'head' / 'tail' / 'cold' labels -> int8 `Segment` codes."""
    try:
        return np.fromiter((Segment[str(x).upper()] for x in labels), dtype=np.int8)
    except KeyError as e:
        raise ValueError(f"unknown segment label {str(e.args[0]).lower()!r} (expected head, tail or cold)") from None


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
    counts = train["item_id"].value_counts().reindex(ids, fill_value=0).to_numpy()
    by_id = np.argsort(np.argsort(ids.to_numpy(), kind="stable"), kind="stable")  # each id's rank
    codes = segments_from_counts(counts, head_share, tie_rank=by_id)
    table = pd.DataFrame({"item_id": ids, "count": counts, "segment": LABELS[codes]})
    return Segments(table, head_share)


def segments_from_counts(item_pop: np.ndarray, head_share: float = 0.8, tie_rank: np.ndarray | None = None
                         ) -> np.ndarray:
    """int8 `Segment` codes from training counts: the one rule (`compute_segments` applies it to ids).

    Ties in popularity break by `tie_rank` (lower first; default the item row), so the head cut is
    deterministic."""
    pop = np.asarray(item_pop, dtype=np.float64)
    seg = np.full(len(pop), Segment.COLD, dtype=np.int8)
    total = pop.sum()
    if total <= 0:
        return seg
    order = np.lexsort((np.arange(len(pop)) if tie_rank is None else np.asarray(tie_rank), -pop))
    cum = np.cumsum(pop[order]) / total
    n_head = int(np.searchsorted(cum, head_share - 1e-12) + 1)
    seg[pop > 0] = Segment.TAIL
    seg[order[:n_head]] = Segment.HEAD
    return seg


def segment_code_array(item_ids, train: pd.DataFrame, head_share: float = 0.8) -> np.ndarray:
    """compute_segments as an int8 array of `Segment` codes, aligned to item_ids."""
    return segment_codes(compute_segments(item_ids, train, head_share).table["segment"])
