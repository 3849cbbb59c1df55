"""Readers for CSV, Parquet and JSONL files or folders, into the canonical tables."""

from __future__ import annotations

import json
import re
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


def _utf8_error(path: Path, raw: bytes, header: bool) -> DataError | None:
    """None if raw is UTF-8; else an error naming the data row (1-based, header and blank lines excluded)."""
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        bad_byte, start = raw[e.start], e.start
    line = raw[:start].count(b"\n") + 1
    row = sum(1 for ln in raw[:start].split(b"\n")[:-1] if ln.strip()) + 1 - int(header)
    if header and row < 1:
        return DataError(f"invalid UTF-8 byte 0x{bad_byte:02x} in the header (line {line})", file=str(path),
                         hint="save the file as UTF-8")
    return DataError(f"invalid UTF-8 byte 0x{bad_byte:02x} at line {line}", file=str(path), rows=[row],
                     hint="save the file as UTF-8")


def _not_utf8(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("latin-1").decode("utf-8")
        return False
    except UnicodeError:
        return True


def _csv_utf8_error(path: Path, sep: str, fallback: DataError) -> DataError:
    """Find the row(s) and column of non-UTF-8 bytes: latin-1 keeps every byte, so the CSV parses alike."""
    try:
        df = pd.read_csv(path, sep=sep, dtype=object, keep_default_na=False, na_values=[], encoding="latin-1")
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return fallback
    for col in df.columns:
        bad = df[col].map(_not_utf8).to_numpy(bool)
        if bad.any():
            rows = (np.flatnonzero(bad) + 1).tolist()
            return DataError(fallback.message, file=str(path),
                             rows=rows, column=str(col), hint="save the file as UTF-8")
    return fallback


def _read_csv(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", file=str(path))
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    err = _utf8_error(path, raw, header=True)
    if err is not None:
        raise (_csv_utf8_error(path, sep, err) if err.rows else err)
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[], engine="c")
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=str(path)) from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise DataError(f"malformed CSV: {str(e).strip()}", file=str(path),
                        rows=[int(m.group(1)) - 1] if m else None) from None
    # CSV has no null: an empty field is one.
    return df.replace("", np.nan)


def _read_jsonl(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", file=str(path))
    err = _utf8_error(path, raw, header=False)
    if err is not None:
        raise _jsonl_utf8_error(raw, err)
    try:
        return pajson.read_json(path).to_pandas()
    except Exception:  # pyarrow refuses mixed types and bad lines alike; the slow path tells which
        pass
    text = raw.decode("utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    rows = []
    lines = [ln for ln in enumerate(text.splitlines(), start=1) if ln[1].strip()]
    for row, (line_no, line) in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON at line {line_no}: {e.msg}", file=str(path),
                            rows=[row]) from None
        if not isinstance(obj, dict):
            raise DataError(f"line {line_no} is not a JSON object", file=str(path), rows=[row])
        rows.append(obj)
    return pd.DataFrame(rows)


def _read_json_array(path: Path, text: str) -> pd.DataFrame:
    """A .json file may also hold one array of objects; row n is the n-th object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno}: {e.msg}", file=str(path)) from None
    bad = [i for i, obj in enumerate(data, start=1) if not isinstance(obj, dict)]
    if bad:
        raise DataError("each array element must be a JSON object", file=str(path), rows=bad)
    return pd.DataFrame(data)


def _jsonl_utf8_error(raw: bytes, err: DataError) -> DataError:
    """Name the key whose value holds the bad bytes, when the line is otherwise valid JSON."""
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    line = lines[err.rows[0] - 1]
    try:
        obj = json.loads(line.decode("latin-1"))
    except json.JSONDecodeError:
        return err
    if isinstance(obj, dict):
        for key, value in obj.items():
            if _not_utf8(value) or _not_utf8(key):
                return DataError(err.message, file=err.file, rows=err.rows, column=str(key),
                                 hint=err.hint)
    return err


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
            raise DataError(f"text template uses column '{f}', which the file lacks", file=str(path),
                            column=f)
    cols = {f: df[f].astype("string").fillna("").to_numpy(dtype=object) for f in fields}
    return pd.Series([template.format_map({f: cols[f][i] for f in fields}) for i in range(len(df))],
                     index=df.index, dtype=object)


def _rename(df: pd.DataFrame, mapping: dict[str, str], path: str | Path) -> pd.DataFrame:
    """Map the file's columns onto canonical names, refusing to shadow a column the file also has."""
    mapping = {src: dst for src, dst in mapping.items() if src != dst}
    for src, dst in mapping.items():
        if dst in df.columns and dst not in mapping:
            raise DataError(f"column '{src}' is mapped to '{dst}', but the file also has a '{dst}' column",
                            file=str(path), column=dst, hint=f"rename or drop the file's '{dst}' column")
    return df.rename(columns=mapping)


def read_items(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    df = read_table(path)
    _require(df, cfg.item_id_col, path, "item_id")
    if cfg.text_template:
        text = render_template(df, cfg.text_template, path)
        df = _rename(df, {cfg.item_id_col: "item_id"}, path)
        df["text"] = text
        names = {"item_id": cfg.item_id_col, "text": "text"}
    else:
        _require(df, cfg.text_col, path, "text")
        df = _rename(df, {cfg.item_id_col: "item_id", cfg.text_col: "text"}, path)
        names = {"item_id": cfg.item_id_col, "text": cfg.text_col}
    return validate_items(df, null_text=cfg.null_text, text_fill=cfg.text_fill, names=names)


def read_interactions(path: str | Path, cfg: DataConfig, item_ids: pd.Series | None = None
                      ) -> tuple[pd.DataFrame, dict[str, int]]:
    df = read_table(path)
    item_col = cfg.interaction_item_id_col or cfg.item_id_col
    for col, role in ((cfg.user_id_col, "user_id"), (item_col, "item_id"), (cfg.ts_col, "ts")):
        _require(df, col, path, role)
    mapping = {cfg.user_id_col: "user_id", item_col: "item_id", cfg.ts_col: "ts"}
    if cfg.weight_col and cfg.weight_col in df.columns:
        mapping[cfg.weight_col] = "weight"
    elif cfg.weight_col and "weight_col" in cfg.model_fields_set:
        # A weight column asked for by name must be there; only the default may be absent.
        _require(df, cfg.weight_col, path, "weight")
    df = _rename(df, mapping, path)
    if "weight" not in mapping.values():
        df["weight"] = 1.0
    names = {"user_id": cfg.user_id_col, "item_id": item_col, "ts": cfg.ts_col, "weight": cfg.weight_col}
    return validate_interactions(df, item_ids, unknown_items=cfg.unknown_items, names=names)
