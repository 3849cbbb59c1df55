"""Readers for CSV, Parquet and JSONL files or folders, into the canonical tables."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ltray.config import DataConfig
from ltray.data.schema import (
    SRC_FILE,
    SRC_ROW,
    DataError,
    validate_interactions,
    validate_items,
)

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def _files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and not f.name.startswith("."))
        if not files:
            raise DataError(f"folder has no {', '.join(sorted(set(SUFFIXES)))} files", file=str(p))
        return files
    if not p.exists():
        raise DataError("file does not exist", file=str(p))
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"unsupported file type '{p.suffix}' (use .csv, .parquet or .jsonl)", file=str(p))
    return [p]


def _check_utf8(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 byte 0x{raw[e.start]:02x} at line {line}", file=str(path),
                        rows=[line - 1]) from None
    return raw


def _read_csv(path: Path) -> pd.DataFrame:
    _check_utf8(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[], engine="c")
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=str(path)) from None
    except pd.errors.ParserError as e:
        raise DataError(f"malformed CSV: {e}", file=str(path)) from None
    # CSV has no null: an empty field is one.
    return df.replace("", np.nan)


def _read_jsonl(path: Path) -> pd.DataFrame:
    raw = _check_utf8(path)
    if not raw.strip():
        raise DataError("file is empty", file=str(path))
    try:
        return pajson.read_json(path).to_pandas()
    except Exception:
        pass
    rows = []
    for i, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg}", file=str(path), rows=[i]) from None
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", file=str(path), rows=[i])
        rows.append(obj)
    return pd.DataFrame(rows)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except Exception as e:
        raise DataError(f"cannot read Parquet: {e}", file=str(path)) from None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one file or a folder of files; rows carry their source file and 1-based row number."""
    frames = []
    for f in _files(path):
        kind = SUFFIXES[f.suffix.lower()]
        df = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind](f)
        df[SRC_FILE] = str(f)
        df[SRC_ROW] = np.arange(1, len(df) + 1)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df.attrs["source"] = str(path)
    return df


def _require(df: pd.DataFrame, column: str, path: str | Path, role: str) -> None:
    if column not in df.columns:
        have = [c for c in df.columns if c not in (SRC_FILE, SRC_ROW)]
        raise DataError(f"missing {role} column (found: {', '.join(map(str, have))})", file=str(path),
                        column=column, hint=f"map it with --{role.replace('_', '-')}-col")


def render_template(df: pd.DataFrame, template: str, path: str | Path) -> pd.Series:
    """Build text from several columns, e.g. "{title}. Genres: {genres}"; nulls become ''."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    for f in fields:
        if f not in df.columns:
            raise DataError(f"text template uses column '{f}', which the file lacks", file=str(path), column=f)
    cols = {f: df[f].astype("string").fillna("").to_numpy(dtype=object) for f in fields}
    return pd.Series([template.format_map({f: cols[f][i] for f in fields}) for i in range(len(df))],
                     index=df.index, dtype=object)


def read_items(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    df = read_table(path)
    _require(df, cfg.item_id_col, path, "item_id")
    df = df.rename(columns={cfg.item_id_col: "item_id"})
    if cfg.text_template:
        df["text"] = render_template(df, cfg.text_template, path)
    else:
        _require(df, cfg.text_col, path, "text")
        if cfg.text_col != "text":
            df = df.rename(columns={cfg.text_col: "text"})
    return validate_items(df, null_text=cfg.null_text, text_fill=cfg.text_fill)


def read_interactions(path: str | Path, cfg: DataConfig, item_ids: pd.Series | None = None
                      ) -> tuple[pd.DataFrame, dict[str, int]]:
    df = read_table(path)
    item_col = cfg.interaction_item_id_col or cfg.item_id_col
    for col, role in ((cfg.user_id_col, "user_id"), (item_col, "item_id"), (cfg.ts_col, "ts")):
        _require(df, col, path, role)
    mapping = {cfg.user_id_col: "user_id", item_col: "item_id", cfg.ts_col: "ts"}
    if cfg.weight_col and cfg.weight_col in df.columns:
        mapping[cfg.weight_col] = "weight"
    df = df.rename(columns=mapping)
    if "weight" not in df.columns:
        df["weight"] = 1.0
    return validate_interactions(df, item_ids, unknown_items=cfg.unknown_items)
