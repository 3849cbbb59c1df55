"""MovieLens latest-small, read from the official release layout.

Found under ``$LTRAY_DATA_HOME/<name>/`` (default ``~/.cache/ltray/datasets``);
downloaded from GroupLens and verified by sha256 where it is missing and a
network is there. Item text: title, genres and the movie's most frequent tags.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ltray.data.readers import read_table
from ltray.data.schema import DataError, Dataset, strip_source_columns, validate_interactions, validate_items

NAME = "movielens-latest-small"
URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
SHA256 = {
    "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
}
REQUIRED = ("ratings.csv", "movies.csv", "tags.csv")
TAGS_PER_MOVIE = 5


def data_home() -> Path:
    return Path(os.environ.get("LTRAY_DATA_HOME", "~/.cache/ltray/datasets")).expanduser()


def dataset_dir(name: str = NAME) -> Path:
    return data_home() / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(dest: Path, url: str = URL, timeout_s: float = 30.0) -> None:
    """Fetch the release zip, unpack the CSVs into dest and verify their sha256."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            blob = r.read()
    except OSError as e:
        raise DataError(
            f"{NAME} is not under {dest} and could not be downloaded from {url} ({e})",
            hint=f"put {', '.join(REQUIRED)} from ml-latest-small.zip into {dest}, or set LTRAY_DATA_HOME",
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for member in z.namelist():
            base = Path(member).name
            if base in SHA256 or base == "README.txt":
                (dest / base).write_bytes(z.read(member))
    for name, digest in SHA256.items():
        if (dest / name).exists() and _sha256(dest / name) != digest:
            raise DataError(f"sha256 mismatch after download ({url})", file=str(dest / name))


def _top_tags(tags: pd.DataFrame) -> pd.Series:
    t = tags.assign(tag=tags["tag"].astype(str).str.strip().str.lower())
    t = t[t["tag"] != ""]
    counts = t.groupby(["movieId", "tag"], sort=False).size().reset_index(name="n")
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("movieId", sort=False).head(TAGS_PER_MOVIE)
    return top.groupby("movieId", sort=False)["tag"].agg(", ".join)


def movie_text(title: str, genres: str, tags: str) -> str:
    parts = [title.strip()]
    if genres:
        parts.append(f"Genres: {genres}")
    if tags:
        parts.append(f"Tags: {tags}")
    return ". ".join(parts)


def load(name: str = NAME) -> Dataset:
    folder = dataset_dir(name)
    if not all((folder / f).exists() for f in REQUIRED):
        download(folder)
    movies = read_table(folder / "movies.csv")
    ratings = read_table(folder / "ratings.csv")
    tags = read_table(folder / "tags.csv")
    for df, cols in ((movies, ("movieId", "title", "genres")),
                     (ratings, ("userId", "movieId", "rating", "timestamp")),
                     (tags, ("userId", "movieId", "tag", "timestamp"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"not the MovieLens layout: missing {missing}", file=df.attrs["source"],
                            column=missing[0])
    tag_text = _top_tags(tags)
    genres = movies["genres"].fillna("").str.replace("(no genres listed)", "", regex=False).str.replace("|", ", ")
    items = movies.rename(columns={"movieId": "item_id"})
    items["genres"] = genres
    items["tags"] = items["item_id"].map(tag_text).fillna("")
    items["text"] = [movie_text(t, g, tg) for t, g, tg in
                     zip(items["title"].fillna(""), items["genres"], items["tags"], strict=True)]
    items = validate_items(items)
    inter = ratings.rename(columns={"userId": "user_id", "movieId": "item_id", "timestamp": "ts",
                                    "rating": "weight"})
    inter, _ = validate_interactions(inter, items["item_id"])
    sources = {f: {"path": str(folder / f), "sha256": SHA256[f]} for f in REQUIRED}
    return Dataset(NAME, strip_source_columns(items)[["item_id", "text", "title", "genres", "tags"]],
                   strip_source_columns(inter)[["user_id", "item_id", "ts", "weight"]].astype(
                       {"ts": np.int64, "weight": np.float32}), sources)
