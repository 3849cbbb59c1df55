"""Minimum sizes, checked right after the input is read and before any stage (or Ray) starts.

Data too small to fit used to commit data, embed, cf and index and then die minutes later in the
rank stage (``No objects to concatenate``). The rank stage needs, in this order:

1. the time split of `ltray run` (`data.test_fraction` of each user's last items to test, for users
   with >= `data.min_user_interactions` distinct items; `ltray fit` skips it);
2. the same split again on what is left: its last items validate (choose the operating point),
   the rest fit the candidate models. Users left with a validation item and a fit item are the
   validation users; they are shuffled with `rank.seed` and halved: a ranker trained on one half lists
   the other to choose the operating point, so both halves need a user (>= 2 validation users). The
   second half's own ranker (cross-fitting) is left out where that half cannot train one;
3. the ranker's own validation split of its half's samples (`rank.validation_fraction`, per user by
   time): a user whose validation items all share one time stays in training, so the ranker's half
   needs a user with two validation items at different times, and an item they have not seen (a
   negative) in the catalog.

Everything here is plain pandas on the validated tables: no Ray, nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ltray.config import Config
from ltray.data.schema import DataError, Dataset
from ltray.data.split import temporal_holdout


def n_held_out(n: int, test_fraction: float, min_user_interactions: int) -> int:
    """Items `temporal_holdout` takes from a user with n distinct items (its rule, for one user)."""
    if n < min_user_interactions:
        return 0
    return int(min(n, max(1, np.floor(test_fraction * n + 0.5))))


def items_needed(n_validation: int, cfg: Config, holdout: bool) -> int:
    """The fewest distinct items a user needs to keep >= n_validation validation items and a fit item."""
    f, m = cfg.data.test_fraction, cfg.data.min_user_interactions
    for n in range(1, 100_000):
        train = n - n_held_out(n, f, m) if holdout else n
        valid = n_held_out(train, f, m)
        if valid >= n_validation and train - valid >= 1:
            return n
    raise ValueError(f"no user size gives {n_validation} validation items with {cfg.data}")  # pragma: no cover


@dataclass(frozen=True)
class SizeReport:
    """What the rank stage will find, counted before it runs."""

    users: int
    items: int
    interactions: int
    validation_users: int  # users with a validation item and a fit item (the ranker + tuning pool)
    splittable_users: int  # of those, users with validation items at two times and an unseen item
    whole_catalog: int  # users with validation items at two times who have seen every item (no negatives)
    ranker_half_splittable: int  # of those, in the half the ranker learns from
    ranker_half: int  # users in the half the ranker learns from

    @property
    def ok(self) -> bool:
        return self.validation_users >= 2 and self.ranker_half_splittable >= 1


def size_report(interactions: pd.DataFrame, n_items: int, cfg: Config, holdout: bool) -> SizeReport:
    f, m = cfg.data.test_fraction, cfg.data.min_user_interactions
    train = temporal_holdout(interactions, f, m)[0] if holdout else interactions
    fit_part, valid = temporal_holdout(train, f, m)
    pool = np.intersect1d(valid["user_id"].astype(str).unique(), fit_part["user_id"].astype(str).unique())
    v = valid[valid["user_id"].astype(str).isin(pool)]
    from ltray.validation import ranker_halves

    half, _ = ranker_halves(pool, np.random.default_rng(cfg.rank.seed))  # the rank stage's own draw
    # Validation items at two times: the ranker's per-user split can put one on each side.
    two_times = v.groupby("user_id")["ts"].nunique()
    two_times = set(two_times.index[two_times >= 2].astype(str))
    if not cfg.rank.validation_per_user:  # one global cut: two times anywhere in the half's validation
        two_times = set(pool) if v.loc[v["user_id"].astype(str).isin(half), "ts"].nunique() >= 2 else set()
    # A negative needs an item the user has not seen (their distinct items in train).
    seen = train.groupby("user_id")["item_id"].nunique()
    has_negative = set(seen.index[seen < n_items].astype(str))
    splittable = two_times & has_negative
    return SizeReport(
        users=int(interactions["user_id"].nunique()), items=int(n_items), interactions=len(interactions),
        validation_users=len(pool), splittable_users=len(splittable), whole_catalog=len(two_times - has_negative),
        ranker_half_splittable=sum(u in splittable for u in half), ranker_half=len(half))


def check_fit_sizes(ds: Dataset, cfg: Config, holdout: bool, source: str | None = None) -> SizeReport:
    """Raise one DataError naming the minimum sizes and what was found when the rank stage cannot fit."""
    report = size_report(ds.interactions, ds.n_items, cfg, holdout)
    if report.ok:
        return report
    one, two = items_needed(1, cfg, holdout), items_needed(2, cfg, holdout)
    s = lambda n: "" if n == 1 else "s"  # noqa: E731
    found = (f"found {report.users:,} user{s(report.users)}, {report.items:,} item{s(report.items)}, "
             f"{report.interactions:,} interaction{s(report.interactions)}: {report.validation_users} "
             f"user{s(report.validation_users)} with >= {one} distinct items, {report.splittable_users} with "
             f">= {two} whose last ones are at different times")
    if report.whole_catalog:
        found += (f" and at least one item they have not seen ({report.whole_catalog} more have seen every "
                  f"item: the ranker draws no negative for them)")
    test = f"holds out each user's last {cfg.data.test_fraction:.0%} for test, then " if holdout else ""
    why = (f"`ltray {'run' if holdout else 'fit'}` {test}splits each user's items by time again to train "
           f"the ranker on half of the users and choose the operating point on the other half")
    need = (f"ltray needs at least 2 users with >= {one} distinct items and, among the half the ranker "
            f"learns from, one with >= {two} whose last ones are at different times")
    hint = "add users and interactions (examples/shop holds a small data set that fits)"
    if report.validation_users >= 2 and report.splittable_users >= 1:
        need = (f"the half of the {report.validation_users} validation users that the ranker learns from "
                f"(drawn with rank.seed={cfg.rank.seed}) holds none of the {report.splittable_users} with >= "
                f"{two} distinct items at different times, so the ranker's own validation split is empty")
        hint = "add users with more interactions, or try another --set rank.seed=N"
    where = source or f"dataset '{ds.name}'"
    raise DataError(f"too little data to fit: {need} ({why}); {found}", file=where, hint=hint)


def load_checked(cfg: Config, holdout: bool, check_sizes: bool = True) -> Dataset:
    """Read and validate the input, then check its sizes: what every fitting command does first,
    before Ray starts and before anything is written."""
    from ltray.data import load_dataset

    ds = load_dataset(cfg.data)
    if check_sizes:
        check_fit_sizes(ds, cfg, holdout, source=cfg.data.interactions)
    return ds
