"""Amazon Office 2014 5-core and Last.fm HetRec 2k, read from the real files under $LTRAY_DATA_HOME."""

from __future__ import annotations

import collections
import csv
import functools
import hashlib
import os

import numpy as np
import pytest

from ltray.config import DataConfig
from ltray.data import BUILTIN, DataError, load_dataset, temporal_holdout
from ltray.data import amazon as az
from ltray.data import lastfm as lf

TEST_FRACTION, MIN_USER = 0.2, 5  # DataConfig's defaults, spelled out for the expected counts


@pytest.fixture(scope="module")
def office():
    return az.load()


@pytest.fixture(scope="module")
def lastfm():
    return lf.load()


def _rows(path, encoding="utf-8", header=True):
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    return rows[1:] if header else rows


def _n_test(n):
    return np.maximum(1, np.floor(TEST_FRACTION * n + 0.5)).astype(int)


def _mirror(src, dest, *, without=(), replace=None):
    """dest holds links to src's files, minus `without`, plus files written from `replace`."""
    dest.mkdir(parents=True)
    for f in os.listdir(src):
        if f not in without and f not in (replace or {}):
            os.symlink(src / f, dest / f)
    for f, data in (replace or {}).items():
        (dest / f).write_bytes(data)


# -- Amazon Office ------------------------------------------------------------------------------
def test_office_counts_match_sources_md(office):
    assert office.name == "amazon-office-2014-5core"
    assert (office.n_users, office.n_items, len(office.interactions)) == (4905, 2420, 53_258)


def test_office_canonical_columns(office):
    items, inter = office.items, office.interactions
    assert list(inter.columns) == ["user_id", "item_id", "ts", "weight"]
    assert inter["ts"].dtype == np.int64 and inter["weight"].dtype == np.float32
    assert (inter["weight"] == 1.0).all()
    assert set(items.columns) >= {"item_id", "text", "title", "asin"}
    assert items["item_id"].is_unique and items["asin"].is_unique
    assert inter["item_id"].isin(items["item_id"]).all()
    # 2000-09-29 .. 2014-07-23, whole days.
    assert inter["ts"].min() == 970_185_600 and inter["ts"].max() == 1_406_073_600
    assert (inter["ts"] % 86_400 == 0).all()


def test_office_items_map_asins_to_the_interaction_ids(office):
    folder = az.dataset_dir()
    text = dict(_rows(folder / "Office.text"))
    ids = dict(_rows(folder / "Office.item2index", header=False))
    by_id = office.items.set_index("item_id")
    assert by_id.loc["1", "asin"] == "B0000AG93P"
    for asin, item_id in list(ids.items())[:50]:
        assert by_id.loc[item_id, "asin"] == asin
        assert by_id.loc[item_id, "text"] == text[asin]
        assert by_id.loc[item_id, "title"] == text[asin]


def test_office_non_ascii_text_comes_through(office):
    by_asin = office.items.set_index("asin")
    assert by_asin.loc["B00006IF6W", "text"].startswith("Scotch® Deluxe Desktop Tape Dispenser")
    assert by_asin.loc["B00002NDS2", "text"].startswith("DYMO Labeling Tape, ½ x 23'")
    non_ascii = office.items["text"].map(lambda s: not s.isascii()).sum()
    assert non_ascii == 52


def test_office_rows_are_train_then_dev_then_test(office):
    folder = az.dataset_dir()
    inter = office.interactions
    train, test = _rows(folder / "train.csv"), _rows(folder / "test.csv")
    first, last = inter.iloc[0], inter.iloc[-1]
    assert (first["user_id"], first["item_id"], first["ts"]) == (train[0][0], train[0][1], int(train[0][2]))
    assert (last["user_id"], last["item_id"], last["ts"]) == (test[-1][0], test[-1][1], int(test[-1][2]))


def test_office_holdout_takes_each_users_dev_and_test_rows(office):
    folder = az.dataset_dir()
    train, test = temporal_holdout(office.interactions, TEST_FRACTION, MIN_USER)
    assert len(test) == 10_466 and len(train) + len(test) == 53_258
    held = set(zip(test["user_id"], test["item_id"], strict=True))
    n_test = _n_test(office.interactions.groupby("user_id").size())
    for user, item, _, _ in _rows(folder / "test.csv"):
        assert (user, item) in held
    dev = _rows(folder / "dev.csv")
    # The dev row is the second-last: held out wherever the user's share is 2 or more.
    assert sum(n_test[u] >= 2 for u, *_ in dev) == 2413
    for user, item, _, _ in dev:
        assert ((user, item) in held) == (n_test[user] >= 2)
    # Many dev rows share their day with the user's last training row: file order decides those.
    last_train = {}
    for user, _, t in _rows(folder / "train.csv"):
        last_train[user] = max(last_train.get(user, 0), int(t))
    assert sum(int(t) == last_train[u] for u, _, t, _ in dev) > 1000


def test_office_sources_and_files(office):
    for name in az.REQUIRED:
        digest = hashlib.sha256((az.dataset_dir() / name).read_bytes()).hexdigest()
        assert digest == az.SHA256[name] == office.sources[name]["sha256"]
    assert "dev" in office.sources["split_note"]


# -- Last.fm ------------------------------------------------------------------------------------
def test_lastfm_counts_match_sources_md(lastfm):
    assert lastfm.name == "lastfm-hetrec-2k"
    assert (lastfm.n_users, lastfm.n_items, len(lastfm.interactions)) == (1892, 17_632, 92_834)
    # 12,133 of the 17,632 artists carry a tag; 1,538 assignments are on artists outside artists.dat.
    assert (lastfm.items["tags"] != "").sum() == 12_133
    assert lastfm.sources["dropped_tag_assignments_off_catalog"] == 1538


def test_lastfm_weights_are_play_counts(lastfm):
    plays = _rows(lf.dataset_dir() / "user_artists.dat")
    inter = lastfm.interactions
    assert list(inter.columns) == ["user_id", "item_id", "ts", "weight"]
    for k in (0, len(plays) // 2, len(plays) - 1):
        got = inter.iloc[k]
        assert (got["user_id"], got["item_id"], got["weight"]) == (plays[k][0], plays[k][1], float(plays[k][2]))
    assert inter["weight"].max() == 352_698


@functools.cache
def _tag_assignments() -> tuple[dict[str, str], list[list[str]]]:
    folder = lf.dataset_dir()
    return dict(_rows(folder / "tags.dat", encoding="latin-1")), _rows(folder / "user_taggedartists.dat")


def _expected_top_tags(artist_id: str) -> list[str]:
    """The artist's most assigned tags, lower-cased, ties alphabetical: straight from the files."""
    vocab, tagged = _tag_assignments()
    counts = collections.Counter(vocab[tag].strip().lower() for _, a, tag, *_ in tagged if a == artist_id)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in ranked[: lf.TAGS_PER_ARTIST]]


@pytest.mark.parametrize("artist_id, name", [("89", "Lady Gaga"), ("289", "Britney Spears"), ("1", "MALICE MIZER")])
def test_lastfm_text_is_name_and_top_tags(lastfm, artist_id, name):
    row = lastfm.items.set_index("item_id").loc[artist_id]
    tags = _expected_top_tags(artist_id)
    assert len(tags) == lf.TAGS_PER_ARTIST
    assert row["title"] == name
    assert row["text"] == f"{name}. Tags: " + ", ".join(tags)


def test_lastfm_latin1_tags_come_through(lastfm):
    raw = (lf.dataset_dir() / "tags.dat").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the premise: tags.dat is not UTF-8
    assert "fußball" in raw.decode("latin-1")
    by_name = lastfm.items.set_index("title")
    # Each of these artists has exactly five tags, one count each: all of them, alphabetical.
    assert by_name.loc["Vetusta Morla", "text"] == "Vetusta Morla. Tags: español, indie rock, male, sexy, spanish"
    assert "düsseldorf" in by_name.loc["Farid Bang", "tags"]
    assert not lastfm.items["tags"].str.contains("Ã").any()  # no Latin-1 read as UTF-8 or back


def test_lastfm_artist_without_tags_is_its_name(lastfm):
    untagged = lastfm.items[lastfm.items["tags"] == ""]
    assert len(untagged) == 17_632 - 12_133
    assert (untagged["text"] == untagged["title"]).all()


def test_lastfm_order_is_seeded_and_per_user(lastfm):
    inter = lastfm.interactions
    again = lf.random_order_ts(inter["user_id"])
    assert np.array_equal(again, inter["ts"].to_numpy())
    assert not np.array_equal(lf.random_order_ts(inter["user_id"], seed=lf.ORDER_SEED + 1), again)
    # Each user's times are a permutation of the origin + 0..n-1 seconds.
    pos = inter["ts"] - lf.ORDER_ORIGIN_TS
    by_user = pos.groupby(inter["user_id"])
    assert (by_user.min() == 0).all() and (by_user.max() == by_user.size() - 1).all()
    assert (by_user.nunique() == by_user.size()).all()
    # A user's order does not depend on the other users' rows.
    one = inter[inter["user_id"] == "2"]
    assert np.array_equal(lf.random_order_ts(one["user_id"].reset_index(drop=True)), one["ts"].to_numpy())
    assert "seeded random" in lastfm.sources["split_note"]


def test_lastfm_split_is_a_per_user_holdout(lastfm):
    inter = lastfm.interactions
    train, test = temporal_holdout(inter, TEST_FRACTION, MIN_USER)
    n = inter.groupby("user_id").size()
    expected = np.where(n >= MIN_USER, _n_test(n), 0)
    assert len(test) == expected.sum() == 18_562
    got = test.groupby("user_id").size().reindex(n.index, fill_value=0)
    assert np.array_equal(got.to_numpy(), expected)
    # Random, not file order (artist id order): the held-out artists are not each user's last rows.
    last_rows = inter.groupby("user_id").tail(10)
    assert len(set(zip(test["user_id"], test["item_id"], strict=True))
               & set(zip(last_rows["user_id"], last_rows["item_id"], strict=True))) < 0.5 * len(test)


def test_lastfm_sources_and_files(lastfm):
    for name in lf.REQUIRED:
        digest = hashlib.sha256((lf.dataset_dir() / name).read_bytes()).hexdigest()
        assert digest == lf.SHA256[name] == lastfm.sources[name]["sha256"]


# -- both ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, missing", [(az, "dev.csv"), (az, "Office.item2index"), (lf, "tags.dat")])
def test_a_missing_file_is_named(tmp_path, monkeypatch, module, missing):
    _mirror(module.dataset_dir(), tmp_path / module.NAME, without=(missing,))
    monkeypatch.setenv("LTRAY_DATA_HOME", str(tmp_path))
    with pytest.raises(DataError) as e:
        module.load()
    assert e.value.file == str(tmp_path / module.NAME / missing)
    assert missing in str(e.value) and "LTRAY_DATA_HOME" in e.value.hint


def test_a_missing_column_is_named(tmp_path, monkeypatch):
    train = (az.dataset_dir() / "train.csv").read_bytes().replace(b"\ttime\n", b"\twhen\n", 1)
    _mirror(az.dataset_dir(), tmp_path / az.NAME, replace={"train.csv": train})
    monkeypatch.setenv("LTRAY_DATA_HOME", str(tmp_path))
    with pytest.raises(DataError) as e:
        az.load()
    assert e.value.file == str(tmp_path / az.NAME / "train.csv") and e.value.column == "time"


def test_a_bad_byte_names_the_file_and_row(tmp_path, monkeypatch):
    text = (az.dataset_dir() / "Office.text").read_bytes().replace("½".encode(), b"\xbd", 1)
    _mirror(az.dataset_dir(), tmp_path / az.NAME, replace={"Office.text": text})
    monkeypatch.setenv("LTRAY_DATA_HOME", str(tmp_path))
    with pytest.raises(DataError) as e:
        az.load()
    assert e.value.file == str(tmp_path / az.NAME / "Office.text") and e.value.rows == [9]
    assert "UTF-8" in str(e.value)


@pytest.mark.parametrize("name, counts", [("amazon-office-2014-5core", (4905, 2420, 53_258)),
                                          ("lastfm-hetrec-2k", (1892, 17_632, 92_834))])
def test_loading_by_name_goes_through_load_dataset(name, counts):
    assert name in BUILTIN
    ds = load_dataset(DataConfig(dataset=name))
    assert ds.name == name
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == counts
