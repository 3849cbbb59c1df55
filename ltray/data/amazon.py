"""Amazon Reviews 2014 "Office Products" 5-core, in the ReChorus-processed layout.

Found under ``$LTRAY_DATA_HOME/amazon-office-2014-5core/`` (see ``shared/data/SOURCES.md``); there
is no download: the publisher's raw files are not these. Item text is ``Office.text`` (product title,
leaf category and brand) keyed by ASIN, mapped to the interaction files' integer item ids through
``Office.item2index``. Every review counts as one implicit interaction (weight 1.0), at its review day.

The release's leave-one-out split (``train.csv`` / ``dev.csv`` / ``test.csv``) is merged and ltray
splits again with its own per-user protocol (``temporal_holdout``). Times are whole days, so a user's
last items often tie: the rows stay in file order train -> dev -> test, and ``temporal_holdout``
breaks ties by row order, so each user's dev and test rows are the last ones held out.

Research use only (the publisher asks to cite He & McAuley, WWW 2016 and McAuley et al., SIGIR 2015);
do not redistribute the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ltray.artifacts import file_sha256
from ltray.data.movielens import data_home
from ltray.data.schema import (
    SRC_ROW,
    DataError,
    Dataset,
    strip_source_columns,
    validate_interactions,
    validate_items,
)
from ltray.data.tsv import read_tsv, require_columns, require_files, require_unique

NAME = "amazon-office-2014-5core"
ORIGIN = "ReChorus-processed Amazon 2014 Office 5-core, e.g. ysh-1998/LRD data/Office/"
TEXT_FILE = "Office.text"
ID_MAP_FILE = "Office.item2index"
# In time order: ties in time keep this order (see the module docstring).
INTERACTION_FILES = ("train.csv", "dev.csv", "test.csv")
REQUIRED = (TEXT_FILE, ID_MAP_FILE, *INTERACTION_FILES)
# The copy described in shared/data/SOURCES.md; Dataset.sources records the files actually read.
SHA256 = {
    "Office.text": "34932e3a6cd6b6d9e999608b309cfa5c6811084dc8be77a18ae89de50da7f862",
    "Office.item2index": "4a1d4bb829f89ce23f7f8e6637238a2f9049ca28fed4e73840b36fdba479a046",
    "train.csv": "015236e98589dac0801be8fe16519d95735b2efbd64bec890685297a1bc69fec",
    "dev.csv": "f94b18e4be2f7322905b7fd152bce78e4d554cb7561426fab6855e7df07790a0",
    "test.csv": "5b5fb42bf500ca344d565461706cdb548ebf21b371f3f871d517d8c967e63ed6",
}
ENCODING = "utf-8"
INTERACTION_WEIGHT = 1.0
SPLIT_NOTE = ("the release's leave-one-out train/dev/test files are merged; ltray's per-user temporal "
              "holdout splits them again, with same-day ties kept in file order train -> dev -> test")


def dataset_dir(name: str = NAME) -> Path:
    return data_home() / name


def _items(folder: Path) -> pd.DataFrame:
    text = read_tsv(folder / TEXT_FILE, encoding=ENCODING)
    require_columns(text, ("id", "text"), "Office.text")
    ids = read_tsv(folder / ID_MAP_FILE, encoding=ENCODING, names=("asin", "item_id"))
    ids["asin"] = ids["asin"].str.strip()
    for col in ("asin", "item_id"):
        require_unique(ids, col)
    items = text.rename(columns={"id": "asin"})
    items["asin"] = items["asin"].str.strip()
    item_id = items["asin"].map(ids.set_index("asin")["item_id"])
    unmapped = item_id.isna().to_numpy()
    if unmapped.any():
        raise DataError(f"ASIN '{items.loc[unmapped, 'asin'].iloc[0]}' has no item id in {ID_MAP_FILE}",
                        file=items.attrs["source"], rows=items.loc[unmapped, SRC_ROW].tolist(), column="id")
    no_text = ~ids["asin"].isin(items["asin"])
    if no_text.any():
        raise DataError(f"ASIN '{ids.loc[no_text, 'asin'].iloc[0]}' has no text in {TEXT_FILE}",
                        file=ids.attrs["source"], rows=ids.loc[no_text, SRC_ROW].tolist(), column="asin")
    items["item_id"] = item_id
    items = validate_items(items, names={"item_id": "id"})
    # No separate title in this release (item_meta.csv holds only integer category / brand ids).
    items["title"] = items["text"]
    # In item-id order, which is the order of first appearance in time.
    numeric = pd.to_numeric(items["item_id"], errors="coerce").to_numpy(dtype=float, na_value=np.inf)
    order = np.argsort(numeric, kind="stable")
    return items.iloc[order].reset_index(drop=True)


def load(name: str = NAME) -> Dataset:
    folder = dataset_dir(name)
    require_files(folder, REQUIRED, NAME, ORIGIN)
    items = _items(folder)
    parts = []
    for f in INTERACTION_FILES:
        df = read_tsv(folder / f, encoding=ENCODING)
        require_columns(df, ("user_id", "item_id", "time"), "ReChorus interaction")
        parts.append(df.drop(columns=["neg_items"], errors="ignore"))  # sampled negatives: not used
    inter = pd.concat(parts, ignore_index=True).rename(columns={"time": "ts"})
    inter.attrs["source"] = str(folder)
    inter["weight"] = INTERACTION_WEIGHT
    inter, _ = validate_interactions(inter, items["item_id"])
    sources = {f: {"path": str(folder / f), "sha256": file_sha256(folder / f)} for f in REQUIRED}
    sources["split_note"] = SPLIT_NOTE
    return Dataset(NAME, strip_source_columns(items)[["item_id", "text", "title", "asin"]],
                   strip_source_columns(inter)[["user_id", "item_id", "ts", "weight"]].astype(
                       {"ts": np.int64, "weight": np.float32}), sources)
