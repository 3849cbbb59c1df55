"""Tab-separated release files of the built-in datasets (Amazon Office, Last.fm HetRec).

``read_table`` picks its parser from the suffix, and these files are tab-separated whatever their
suffix (``.csv``, ``.dat``, ``.text``), unquoted, and not always UTF-8 (Last.fm's ``tags.dat`` is
Latin-1). Rows carry their source file and 1-based row number, as ``read_table``'s do, so that
validation errors name the file, the row and the column.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ltray.data.readers import _utf8_error
from ltray.data.schema import SRC_FILE, SRC_ROW, DataError


def require_files(folder: Path, files: Iterable[str], name: str, origin: str) -> None:
    """Every release file must be there: the first missing one is named, with where to put it."""
    files = list(files)
    for f in files:
        if not (folder / f).is_file():
            raise DataError(f"{name}: release file is missing", file=str(folder / f),
                            hint=f"put {', '.join(files)} ({origin}) into {folder}, or set LTRAY_DATA_HOME")


def read_tsv(path: Path, *, encoding: str = "utf-8", names: Sequence[str] | None = None) -> pd.DataFrame:
    """One tab-separated file as strings (empty field = null); ``names`` for a file with no header row."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", file=str(path))
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
        err = _utf8_error(path, raw, header=names is None)
        if err is not None:
            raise err
    try:
        df = pd.read_csv(io.BytesIO(raw), sep="\t", encoding=encoding, dtype=str, keep_default_na=False,
                         na_values=[], quoting=csv.QUOTE_NONE, header=None if names else "infer",
                         names=list(names) if names else None, engine="c")
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        # The parser counts the header as line 1; data rows are numbered from 1.
        row = int(m.group(1)) - (0 if names else 1) if m else None
        raise DataError(f"malformed tab-separated file: {str(e).strip()}", file=str(path),
                        rows=[row] if row else None) from None
    df = df.replace("", np.nan)
    df[SRC_FILE] = str(path)
    df[SRC_ROW] = np.arange(1, len(df) + 1)
    df.attrs["source"] = str(path)
    return df


def require_columns(df: pd.DataFrame, columns: Iterable[str], layout: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"not the {layout} layout: missing {missing}", file=df.attrs["source"], column=missing[0])


def require_unique(df: pd.DataFrame, column: str) -> None:
    """A key column (an id mapping's either side) holds each value once."""
    dup = df[column].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, column].iloc[0]
        rows = df.loc[df[column] == first, SRC_ROW].astype(int).tolist()
        raise DataError(f"duplicate {column} '{first}'", file=df.attrs["source"], rows=rows, column=column)
