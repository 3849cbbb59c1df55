"""Last.fm HetRec 2011 (hetrec2011-lastfm-2k), read from the release's tab-separated files.

Found under ``$LTRAY_DATA_HOME/lastfm-hetrec-2k/`` (see ``shared/data/SOURCES.md``); there is no
download. Items are the artists of ``artists.dat``; item text is the artist's name and its most
frequent user tags (``user_taggedartists.dat`` joined with ``tags.dat``, which is Latin-1, not UTF-8),
e.g. "Lady Gaga. Tags: pop, dance, female vocalists, ...". Tag assignments on artists that are not in
``artists.dat`` are dropped. Interactions are ``user_artists.dat``: weight = the user's play count of
the artist (the CF stage chooses how to weight it).

There are **no listening timestamps**. Each user's artists get a seeded random order instead: ``ts`` is
a fixed origin plus the artist's position in a per-user permutation drawn from ``ORDER_SEED`` and the
user id, one second apart. ltray's per-user temporal holdout therefore becomes a seeded random per-user
holdout, and recency carries no signal here. ``Dataset.sources["split_note"]`` says so for the report.

Non-commercial (research) use only (release readme, "License"); cite the Last.fm website and the
HetRec 2011 workshop.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ltray.artifacts import file_sha256
from ltray.data.movielens import data_home
from ltray.data.schema import Dataset, strip_source_columns, validate_interactions, validate_items
from ltray.data.tsv import read_tsv, require_columns, require_files, require_unique

NAME = "lastfm-hetrec-2k"
ORIGIN = "hetrec2011-lastfm-2k.zip from GroupLens"
ARTISTS_FILE = "artists.dat"
TAGS_FILE = "tags.dat"
TAGGED_FILE = "user_taggedartists.dat"
PLAYS_FILE = "user_artists.dat"
REQUIRED = (ARTISTS_FILE, TAGS_FILE, TAGGED_FILE, PLAYS_FILE)
# The copy described in shared/data/SOURCES.md; Dataset.sources records the files actually read.
SHA256 = {
    "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
    "tags.dat": "c815d7216101fd0ba9b9c59fa2a011998d2fd076e0064d281ec4153d95ae8095",
    "user_taggedartists.dat": "c4a9ffae9ab47a9f9b2f0678ab1f7e5c1db4ca818837d8cddd1f5699c5bbf048",
    "user_artists.dat": "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
}
# tags.dat (and the readme) are ISO-8859-1; every other file is UTF-8.
ENCODING = {TAGS_FILE: "latin-1"}
DEFAULT_ENCODING = "utf-8"
TAGS_PER_ARTIST = 5
ORDER_SEED = 0
# 2011-05-01 00:00 UTC, the release month: the synthetic order's first second (a positive time, as a
# real one would be; the order, not the date, is what the split reads).
ORDER_ORIGIN_TS = 1_304_208_000
SPLIT_NOTE = (f"no listening timestamps in the release: each user's artists are ordered by a seeded random "
              f"permutation (seed {ORDER_SEED}), so the per-user temporal holdout is a seeded random "
              "per-user holdout")


def dataset_dir(name: str = NAME) -> Path:
    return data_home() / name


def _read(folder: Path, name: str) -> pd.DataFrame:
    return read_tsv(folder / name, encoding=ENCODING.get(name, DEFAULT_ENCODING))


def _top_tags(tagged: pd.DataFrame, tags: pd.DataFrame) -> pd.Series:
    """artistID -> its TAGS_PER_ARTIST most assigned tags, lower-cased, ties alphabetical."""
    vocab = tags.set_index("tagID")["tagValue"].astype(str).str.strip().str.lower()
    t = pd.DataFrame({"artistID": tagged["artistID"].str.strip(),
                      "tag": tagged["tagID"].str.strip().map(vocab)})
    t = t[t["tag"].notna() & (t["tag"] != "")]  # a tag id missing from tags.dat names no tag
    counts = t.groupby(["artistID", "tag"], sort=False).size().reset_index(name="n")
    counts = counts.sort_values(["artistID", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("artistID", sort=False).head(TAGS_PER_ARTIST)
    # A plain loop: a groupby string join runs per group in Python anyway, and 12k groups make it slow.
    joined: dict[str, list[str]] = {}
    for artist, tag in zip(top["artistID"].to_numpy(object), top["tag"].to_numpy(object), strict=True):
        joined.setdefault(artist, []).append(tag)
    return pd.Series({a: ", ".join(t) for a, t in joined.items()}, dtype=object)


def artist_text(name: str, tags: str) -> str:
    return f"{name}. Tags: {tags}" if tags else name


def random_order_ts(user_ids: pd.Series, seed: int = ORDER_SEED) -> np.ndarray:
    """Per-user seeded permutation positions as seconds after ORDER_ORIGIN_TS.

    Each user's generator is seeded by (seed, crc32 of the user id), so a user's order does not
    depend on the other users' rows; within a user it follows the rows' order.
    """
    ts = np.empty(len(user_ids), dtype=np.int64)
    for uid, rows in user_ids.groupby(user_ids, sort=False).indices.items():
        rng = np.random.default_rng([seed, zlib.crc32(str(uid).encode("utf-8"))])
        ts[rows] = ORDER_ORIGIN_TS + rng.permutation(len(rows))
    return ts


def load(name: str = NAME) -> Dataset:
    folder = dataset_dir(name)
    require_files(folder, REQUIRED, NAME, ORIGIN)
    artists, tags = _read(folder, ARTISTS_FILE), _read(folder, TAGS_FILE)
    tagged, plays = _read(folder, TAGGED_FILE), _read(folder, PLAYS_FILE)
    for df, cols in ((artists, ("id", "name")), (tags, ("tagID", "tagValue")),
                     (tagged, ("userID", "artistID", "tagID")), (plays, ("userID", "artistID", "weight"))):
        require_columns(df, cols, "HetRec Last.fm")
    tags["tagID"] = tags["tagID"].str.strip()
    require_unique(tags, "tagID")
    items = artists.rename(columns={"id": "item_id", "name": "title"})
    items = validate_items(items.assign(text=items["title"]), names={"item_id": "id", "text": "name"})
    items["title"] = items["title"].fillna("").astype(str).str.strip()
    # Tags on artists outside artists.dat describe no item of the catalog.
    # (An index lookup: Series.isin on pyarrow strings converts every catalog id to a scalar.)
    on_catalog = pd.Index(items["item_id"]).get_indexer(tagged["artistID"].str.strip()) >= 0
    tag_text = _top_tags(tagged[on_catalog], tags)
    items["tags"] = items["item_id"].map(tag_text).fillna("")
    items["text"] = [artist_text(n, t) for n, t in zip(items["title"], items["tags"], strict=True)]
    inter = plays.rename(columns={"userID": "user_id", "artistID": "item_id"})
    inter["ts"] = 0  # replaced below, once the ids are validated
    inter, _ = validate_interactions(inter, items["item_id"])
    inter["ts"] = random_order_ts(inter["user_id"])
    sources = {f: {"path": str(folder / f), "sha256": file_sha256(folder / f)} for f in REQUIRED}
    sources["dropped_tag_assignments_off_catalog"] = int((~on_catalog).sum())
    sources["split_note"] = SPLIT_NOTE
    keep = ["item_id", "text", "title", "tags", *(["url"] if "url" in items.columns else [])]
    return Dataset(NAME, strip_source_columns(items)[keep],
                   strip_source_columns(inter)[["user_id", "item_id", "ts", "weight"]].astype(
                       {"ts": np.int64, "weight": np.float32}), sources)
