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

from ltray.errors import LtrayError

ITEM_COLUMNS = ("item_id", "text")
INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "weight")
# Bookkeeping columns the readers add so that errors can name the source row.
SRC_FILE = "__file"
SRC_ROW = "__row"
_MAX_ROWS_SHOWN = 5
# Later than this is never a time in seconds (year ~5138): it is milliseconds or finer.
MAX_TS_SECONDS = 100_000_000_000


class DataError(LtrayError, ValueError):
    """Bad input data: the message names the file, the row(s) and the column."""

    def __init__(self, message: str, *, file: str | None = None, rows: list[int] | None = None,
                 column: str | None = None, hint: str | None = None):
        self.message, self.file, self.rows, self.column, self.hint = message, file, rows or [], column, hint
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
        super().__init__(f"{prefix}: {message}" if prefix else message, hint)


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
    """Raise a DataError naming the first offending file and its rows (and the other files, if any)."""
    bad = df.loc[np.asarray(mask)]
    files = list(dict.fromkeys(bad[SRC_FILE])) if SRC_FILE in bad.columns else [df.attrs.get("source")]
    first_file = files[0]
    rows = (bad.loc[bad[SRC_FILE] == first_file, SRC_ROW].astype(int).tolist()
            if SRC_ROW in bad.columns else (np.flatnonzero(np.asarray(mask)) + 1).tolist())
    for other in files[1:4]:
        other_rows = bad.loc[bad[SRC_FILE] == other, SRC_ROW].astype(int).tolist()
        message += f"; also {other} row{'s' if len(other_rows) > 1 else ''} " + ", ".join(
            str(r) for r in other_rows[:_MAX_ROWS_SHOWN])
    raise DataError(message, file=first_file, rows=rows, column=column, hint=hint)


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip() == "")


def _type_name(v: Any) -> str:
    return type(v).__name__


def _check_id_type(df: pd.DataFrame, col: str, name: str) -> None:
    """Ids are strings or integers; floats, booleans, dates and nested values are a mapping mistake."""
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        _fail_rows(df, np.ones(len(s), bool), f"{name} must be a string or an integer, found {s.dtype}", name)
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v != np.round(v))
        if bad.any():
            _fail_rows(df, bad, f"{name} must be a string or an integer, found {s.dtype}", name)
        df[col] = pd.Series(v.astype(np.int64), index=s.index).astype(str)
    elif s.dtype == object:
        bad = s.map(lambda v: not isinstance(v, (str, int, np.integer)) or isinstance(v, bool)).to_numpy(bool)
        if bad.any():
            first = s[bad].iloc[0]
            _fail_rows(df, bad, f"{name} must be a string or an integer, found {_type_name(first)} {first!r}",
                       name)


def _check_text_type(df: pd.DataFrame, name: str) -> None:
    s = df["text"]
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        _fail_rows(df, s.notna().to_numpy(), f"text must be a string, found {s.dtype}", name)
    if s.dtype == object:
        bad = s.map(lambda v: v is not None and not isinstance(v, str) and not _isnan(v)).to_numpy(bool)
        if bad.any():
            _fail_rows(df, bad, f"text must be a string, found {_type_name(s[bad].iloc[0])}", name)


def _first(s: pd.Series, mask: np.ndarray) -> str:
    v = s[np.asarray(mask)].iloc[0]
    return "null" if v is None or _isnan(v) or v is pd.NaT else repr(v.item() if hasattr(v, "item") else v)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _names(names: dict[str, str | None] | None) -> dict[str, str]:
    """Canonical column -> the column's name in the user's file, for error messages."""
    out = {c: c for c in (*ITEM_COLUMNS, *INTERACTION_COLUMNS)}
    out.update({k: v for k, v in (names or {}).items() if v})
    return out


def _empty_error(df: pd.DataFrame, table: str) -> DataError:
    return DataError(f"the {table} table has no data rows (the file is empty or holds only a header)",
                     file=df.attrs.get("source"))


def validate_items(df: pd.DataFrame, *, null_text: str = "error", text_fill: str = "",
                   names: dict[str, str | None] | None = None) -> pd.DataFrame:
    """Check and normalise the items table; ``names`` maps canonical columns to the file's names."""
    col = _names(names)
    if len(df) == 0:
        raise _empty_error(df, "items")
    bad = _blank(df["item_id"])
    if bad.any():
        _fail_rows(df, bad, "item_id is null or empty", col["item_id"])
    _check_id_type(df, "item_id", col["item_id"])
    df["item_id"] = df["item_id"].astype(str).str.strip()
    dup = df["item_id"].duplicated(keep="first")
    if dup.any():
        first = df.loc[dup, "item_id"].iloc[0]
        _fail_rows(df, df["item_id"] == first, f"duplicate item_id '{first}'", col["item_id"])
    _check_text_type(df, col["text"])
    nulls = df["text"].isna()
    if nulls.any():
        if null_text != "fill":
            _fail_rows(df, nulls, "text is null", col["text"],
                       hint="set data.null_text=fill (with data.text_fill) to allow it")
        df["text"] = df["text"].astype(object)
        df.loc[nulls, "text"] = text_fill
    df["text"] = df["text"].astype(str)
    return df


def parse_timestamps(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the epoch as int64, from numbers, datetimes or date strings; returns (ts, bad_mask).

    Naive datetimes and date strings without a zone are taken as UTC. Booleans are not times.
    """
    if pd.api.types.is_bool_dtype(s):
        return np.zeros(len(s), dtype=np.int64), np.ones(len(s), dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(s):
        t = pd.to_datetime(s, utc=True)
        ok = t.notna().to_numpy()
        secs = ((t[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
        out = np.zeros(len(s), dtype=np.int64)
        out[ok] = secs
        return out, ~ok
    if s.dtype == object:
        # Booleans and nested values in an untyped column (JSONL) are not times either.
        s = s.map(lambda v: None if isinstance(v, (bool, list, dict)) else v)
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


def _parse_weights(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_bool_dtype(s):
        return np.zeros(len(s)), np.ones(len(s), dtype=bool)
    if s.dtype == object:
        s = s.map(lambda v: None if isinstance(v, (bool, list, dict)) else v)
    w = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(w) | (w < 0)
    return w, bad


def validate_interactions(df: pd.DataFrame, item_ids: pd.Series | None, *,
                          unknown_items: str = "error", names: dict[str, str | None] | None = None,
                          ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Check and normalise the interactions; ``names`` maps canonical columns to the file's names."""
    col = _names(names)
    stats: dict[str, int] = {}
    if len(df) == 0:
        raise _empty_error(df, "interactions")
    for c in ("user_id", "item_id"):
        bad = _blank(df[c])
        if bad.any():
            _fail_rows(df, bad, f"{c} is null or empty", col[c])
        _check_id_type(df, c, col[c])
        df[c] = df[c].astype(str).str.strip()
    ts, bad = parse_timestamps(df["ts"])
    if bad.any():
        _fail_rows(df, bad, f"timestamp cannot be parsed (found {_first(df['ts'], bad)}; expected Unix "
                   "seconds or an ISO date)", col["ts"])
    too_big = ts > MAX_TS_SECONDS
    if too_big.any():
        _fail_rows(df, too_big, f"timestamp {int(ts[too_big][0])} is past the year 5000: milliseconds or "
                   "microseconds, not seconds?", col["ts"], hint="convert the column to Unix seconds")
    df["ts"] = ts
    w, bad = _parse_weights(df["weight"])
    if bad.any():
        _fail_rows(df, bad, f"weight must be a finite number >= 0 (found {_first(df['weight'], bad)})",
                   col["weight"])
    df["weight"] = w.astype(np.float32)
    if item_ids is not None:
        unknown = ~df["item_id"].isin(item_ids)
        if unknown.any():
            if unknown_items == "error":
                _fail_rows(df, unknown, "interaction on an item that is not in the catalog", col["item_id"],
                           hint="set data.unknown_items=drop to drop and count them")
            stats["dropped_unknown_items"] = int(unknown.sum())
            source = df.attrs.get("source")
            df = df.loc[~unknown].reset_index(drop=True)
            if len(df) == 0:
                raise DataError("no interaction is left after dropping unknown items", file=source,
                                column=col["item_id"])
    if not (df["weight"].to_numpy() > 0).any():
        # Zero weights count as seen but carry no preference: with nothing else, nothing can be learned.
        raise DataError("every weight is 0: nothing can be learned from them (a few zeros are fine: those "
                        "interactions count as seen)", file=df.attrs.get("source"), column=col["weight"],
                        hint="fix the column, or drop --weight-col so that every interaction weighs 1.0")
    return df, stats


def strip_source_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in (SRC_FILE, SRC_ROW) if c in df.columns]).reset_index(drop=True)
