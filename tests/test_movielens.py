"""MovieLens latest-small, read from the real release files under $LTRAY_DATA_HOME."""

from __future__ import annotations

import collections
import csv
import hashlib
import zipfile

import numpy as np
import pytest

from ltray.data import DataError, load_dataset
from ltray.data import movielens as ml


def _release_dir():
    return ml.dataset_dir()


def test_counts_match_the_release(movielens):
    assert movielens.name == "movielens-latest-small"
    assert movielens.n_users == 610
    assert movielens.n_items == 9742
    assert len(movielens.interactions) == 100_836


def test_canonical_columns_and_types(movielens):
    items, inter = movielens.items, movielens.interactions
    assert list(inter.columns) == ["user_id", "item_id", "ts", "weight"]
    assert inter["ts"].dtype == np.int64
    assert np.issubdtype(inter["weight"].dtype, np.floating)
    assert set(items.columns) >= {"item_id", "text", "title", "genres", "tags"}
    assert items["item_id"].is_unique
    assert all(isinstance(x, str) for x in items["item_id"].head(50))
    assert all(isinstance(x, str) for x in inter["user_id"].head(50))
    # Every rating is on a movie in the catalog, ratings are the 0.5..5 stars, times are 1996..2018.
    assert inter["item_id"].isin(items["item_id"]).all()
    assert set(np.unique(inter["weight"])) <= {x / 2 for x in range(1, 11)}
    assert inter["ts"].min() >= 820_454_400 and inter["ts"].max() < 1_546_300_800


def _expected_top_tags(movie_id: str) -> list[str]:
    """The movie's most frequent tags, lower-cased, ties alphabetical: computed straight from tags.csv."""
    counts: collections.Counter[str] = collections.Counter()
    with open(_release_dir() / "tags.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["movieId"] == movie_id and row["tag"].strip():
                counts[row["tag"].strip().lower()] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in ranked[: ml.TAGS_PER_MOVIE]]


def _movie_row(movie_id: str) -> dict[str, str]:
    with open(_release_dir() / "movies.csv", encoding="utf-8", newline="") as f:
        return next(r for r in csv.DictReader(f) if r["movieId"] == movie_id)


@pytest.mark.parametrize("movie_id", ["1", "296", "2571"])  # Toy Story, Pulp Fiction, The Matrix
def test_item_text_has_title_genres_and_top_tags(movielens, movie_id):
    row = movielens.items.set_index("item_id").loc[movie_id]
    movie = _movie_row(movie_id)
    tags = _expected_top_tags(movie_id)
    assert tags, "these movies all carry user tags"
    text = row["text"]
    assert text.startswith(movie["title"])
    for genre in movie["genres"].split("|"):
        assert genre in text
    assert "Tags: " + ", ".join(tags) in text
    assert row["tags"] == ", ".join(tags)


def test_toy_story_text_exactly(movielens):
    text = movielens.items.set_index("item_id").loc["1", "text"]
    assert text == ("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: "
                    + ", ".join(_expected_top_tags("1")))


def test_movie_without_genres_or_tags_has_a_plain_title(movielens):
    with open(_release_dir() / "movies.csv", encoding="utf-8", newline="") as f:
        movies = {r["movieId"]: r for r in csv.DictReader(f)}
    no_genre = next(m for m, r in movies.items() if r["genres"] == "(no genres listed)" and not
                    _expected_top_tags(m))
    text = movielens.items.set_index("item_id").loc[no_genre, "text"]
    assert text == movies[no_genre]["title"].strip()


def test_one_rating_row_maps_field_by_field(movielens):
    with open(_release_dir() / "ratings.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    got = movielens.interactions.iloc[len(rows) - 1]
    assert (got["user_id"], got["item_id"]) == (last["userId"], last["movieId"])
    assert got["ts"] == int(last["timestamp"])
    assert got["weight"] == pytest.approx(float(last["rating"]))


def test_loading_by_name_goes_through_load_dataset():
    from ltray.config import DataConfig

    ds = load_dataset(DataConfig(dataset="movielens-latest-small"))
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (610, 9742, 100_836)
    assert set(ds.sources) == set(ml.REQUIRED)


def test_release_files_match_their_published_sha256():
    for name in ml.REQUIRED:
        digest = hashlib.sha256((_release_dir() / name).read_bytes()).hexdigest()
        assert digest == ml.SHA256[name]


def _zip_release(path, tamper: str | None = None):
    with zipfile.ZipFile(path, "w") as z:
        for name in ml.SHA256:
            data = (_release_dir() / name).read_bytes()
            if name == tamper:
                data = data.replace(b"Toy Story", b"Toy Storm", 1)
            z.writestr(f"ml-latest-small/{name}", data)


def test_download_unpacks_and_verifies_a_release_zip(tmp_path):
    # A file:// URL is a real download path for urllib, without a network.
    zip_path = tmp_path / "ml-latest-small.zip"
    _zip_release(zip_path)
    dest = tmp_path / "home" / ml.NAME
    ml.download(dest, url=zip_path.as_uri())
    for name in ml.SHA256:
        assert (dest / name).read_bytes() == (_release_dir() / name).read_bytes()


def test_download_with_a_changed_file_fails_its_checksum(tmp_path):
    zip_path = tmp_path / "ml-latest-small.zip"
    _zip_release(zip_path, tamper="movies.csv")
    dest = tmp_path / "home" / ml.NAME
    with pytest.raises(DataError) as e:
        ml.download(dest, url=zip_path.as_uri())
    assert "sha256" in str(e.value)
    assert str(dest / "movies.csv") in str(e.value)


def test_unreachable_download_says_where_to_put_the_files(tmp_path):
    dest = tmp_path / "home" / ml.NAME
    with pytest.raises(DataError) as e:
        ml.download(dest, url="http://127.0.0.1:9/ml-latest-small.zip", timeout_s=5)
    assert str(dest) in str(e.value)
    assert str(dest) in e.value.hint and "ratings.csv" in e.value.hint and "LTRAY_DATA_HOME" in e.value.hint
    assert not dest.exists()
