"""Canonical tables and their validation.

Items: ``item_id`` (str), ``text`` (str), extra columns kept.
Interactions: ``user_id`` (str), ``item_id`` (str), ``ts`` (int64 s), ``weight`` (float).
Every error names the file, the row(s) and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ITEM_COLUMNS = ("item_id", "text")
INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "weight")
# Bookkeeping columns the readers add so that errors can name the source row.
SRC_FILE = "__file"
SRC_ROW = "__row"
_MAX_ROWS_SHOWN = 5


class DataError(ValueError):
    """Bad input data: the message names the file, the row(s) and the column."""

    def __init__(self, message: str, *, file: str | None = None, rows: list[int] | None = None,
                 column: str | None = None, hint: str | None = None):
        self.file, self.rows, self.column, self.hint = file, rows or [], column, hint
        where = []
        if file:
            where.append(str(file))
        if rows:
            shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_SHOWN])
            more = f" (+{len(rows) - _MAX_ROWS_SHOWN} more)" if len(rows) > _MAX_ROWS_SHOWN else ""
            where.append(f"row{'s' if len(rows) > 1 else ''} {shown}{more}")
        if column:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclass
class Dataset:
    """A catalog and its interaction log, in canonical form."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return len(self.items)


def _fail_rows(df: pd.DataFrame, mask: np.ndarray | pd.Series, message: str, column: str,
               hint: str | None = None) -> None:
    """Raise a DataError naming the first offending file and its rows."""
    bad = df.loc[np.asarray(mask)]
    first_file = bad[SRC_FILE].iloc[0]
    rows = bad.loc[bad[SRC_FILE] == first_file, SRC_ROW].astype(int).tolist()
    raise DataError(message, file=first_file, rows=rows, column=column, hint=hint)


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip() == "")


def validate_items(df: pd.DataFrame, *, null_text: str = "error", text_fill: str = "") -> pd.DataFrame:
    if len(df) == 0:
        raise DataError("the items table is empty", file=df.attrs.get("source"))
    bad = _blank(df["item_id"])
    if bad.any():
        _fail_rows(df, bad, "item_id is null or empty", "item_id")
    df["item_id"] = df["item_id"].astype(str).str.strip()
    dup = df["item_id"].duplicated(keep="first")
    if dup.any():
        first = df.loc[dup, "item_id"].iloc[0]
        _fail_rows(df, df["item_id"] == first, f"duplicate item_id '{first}'", "item_id")
    nulls = df["text"].isna()
    if nulls.any():
        if null_text != "fill":
            _fail_rows(df, nulls, "text is null", "text",
                       hint="set data.null_text=fill (with data.text_fill) to allow it")
        df.loc[nulls, "text"] = text_fill
    df["text"] = df["text"].astype(str)
    return df


def parse_timestamps(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the epoch as int64, from numbers or date strings; returns (ts, bad_mask)."""
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    ok = np.isfinite(num)
    out = np.zeros(len(s), dtype=np.int64)
    out[ok] = np.round(num[ok]).astype(np.int64)
    texts = s.astype("string").str.strip().fillna("").to_numpy(dtype=object)
    as_text = ~ok & (texts != "")
    if as_text.any():
        parsed = pd.to_datetime(pd.Series(texts[as_text]), errors="coerce", utc=True, format="mixed")
        good = parsed.notna().to_numpy()
        secs = parsed[good].astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 10**9
        idx = np.flatnonzero(as_text)[good]
        out[idx] = secs
        ok[idx] = True
    return out, ~ok


def validate_interactions(df: pd.DataFrame, item_ids: pd.Series | None, *,
                          unknown_items: str = "error") -> tuple[pd.DataFrame, dict[str, int]]:
    stats: dict[str, int] = {}
    if len(df) == 0:
        raise DataError("the interactions table is empty", file=df.attrs.get("source"))
    for col in ("user_id", "item_id"):
        bad = _blank(df[col])
        if bad.any():
            _fail_rows(df, bad, f"{col} is null or empty", col)
        df[col] = df[col].astype(str).str.strip()
    ts, bad = parse_timestamps(df["ts"])
    if bad.any():
        _fail_rows(df, bad, "timestamp cannot be parsed (expected Unix seconds or an ISO date)", "ts")
    df["ts"] = ts
    w = pd.to_numeric(df["weight"], errors="coerce")
    bad = w.isna() | ~np.isfinite(w.astype(float)) | (w < 0)
    if bad.any():
        _fail_rows(df, bad, "weight must be a finite number >= 0", "weight")
    df["weight"] = w.astype(np.float32)
    if item_ids is not None:
        unknown = ~df["item_id"].isin(item_ids)
        if unknown.any():
            if unknown_items == "error":
                _fail_rows(df, unknown, "interaction on an item that is not in the catalog", "item_id",
                           hint="set data.unknown_items=drop to drop and count them")
            stats["dropped_unknown_items"] = int(unknown.sum())
            df = df.loc[~unknown].reset_index(drop=True)
            if len(df) == 0:
                raise DataError("no interaction is left after dropping unknown items")
    return df, stats


def strip_source_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in (SRC_FILE, SRC_ROW) if c in df.columns]).reset_index(drop=True)
