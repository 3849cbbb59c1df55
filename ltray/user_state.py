"""What recall, the ranker and the blend know of one user: one record for offline and Serve alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


def _no_rows() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass
class UserState:
    """A known user's training state, or one folded in from session items (Serve, `recent_items`)."""

    factor: np.ndarray                                   # ALS factor (f,), zeros when unknown
    profile: np.ndarray                                  # text profile (d,), zeros when unknown
    recent: np.ndarray = field(default_factory=_no_rows)  # recent item rows, most recent first
    seen: np.ndarray = field(default_factory=_no_rows)    # every item row of the history (item-item scores)
    n: float = 0.0                                       # training interactions
    last_ts: int | None = None                           # last interaction time; None = now
    tail_affinity: float = 0.0                           # share of the history outside the head (quotas)
    exclude_seen: bool = True                            # False: items of the history may come back
    recent_factor: np.ndarray | None = None              # (f,) mean unit ALS factor of the last items; None = 0

    @property
    def excluded(self) -> np.ndarray:
        """Item rows that recall leaves out."""
        return np.asarray(self.seen, np.int64) if self.exclude_seen else _no_rows()


class Ask(NamedTuple):
    """One request for a user's list (the in-process call and Serve's /recommend alike)."""

    user_id: str
    k: int = 20
    tail_share: float | None = None  # None: the blend's
    exclude_seen: bool = True
    recent_items: list[str] | None = None  # session items (folded in)


__all__ = ["Ask", "UserState"]
