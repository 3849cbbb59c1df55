"""Readers on real files the tests write: CSV, TSV, Parquet, JSONL, folders, column mapping, templates."""

from __future__ import annotations

import calendar
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltray.artifacts import file_sha256
from ltray.config import DataConfig
from ltray.data import load_dataset
from ltray.data.readers import read_table


def _utc(y, mo, d, h=0, mi=0, s=0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def shop_csv(tmp_path):
    """A catalog and a log with the shop's own column names."""
    items = _write(tmp_path / "catalog.csv",
                   "sku,name,title,genres,price\n"
                   "A1,Red kettle,Kettle,Kitchen|Tea,19.5\n"
                   "B2,Blue mug,Mug,Kitchen,4\n"
                   " C3 ,Green teapot,Teapot,,12\n")
    inter = _write(tmp_path / "orders.csv",
                   "customer,product,when,qty\n"
                   "u1,A1,2021-03-04,2\n"
                   "u1,B2,2021-03-04T05:06:07Z,1\n"
                   "u2,C3,2021-03-04T06:06:07+01:00,0.5\n"
                   "u2,A1,1614816000,3\n")
    return items, inter


def test_column_mapping_reads_the_shop_files(shop_csv):
    items, inter = shop_csv
    cfg = DataConfig(items=str(items), interactions=str(inter), item_id_col="sku", text_col="name",
                     user_id_col="customer", interaction_item_id_col="product", ts_col="when",
                     weight_col="qty")
    ds = load_dataset(cfg)
    assert ds.items["item_id"].tolist() == ["A1", "B2", "C3"]  # ids are stripped
    assert ds.items["text"].tolist() == ["Red kettle", "Blue mug", "Green teapot"]
    # Extra item columns are kept, as the file had them.
    assert {"title", "genres", "price"} <= set(ds.items.columns)
    assert ds.items["price"].tolist() == ["19.5", "4", "12"]
    assert list(ds.interactions.columns) == ["user_id", "item_id", "ts", "weight"]
    assert ds.interactions["user_id"].tolist() == ["u1", "u1", "u2", "u2"]
    assert ds.interactions["item_id"].tolist() == ["A1", "B2", "C3", "A1"]
    assert ds.interactions["weight"].tolist() == [2.0, 1.0, 0.5, 3.0]
    assert ds.interactions["ts"].dtype == np.int64


def test_iso_dates_and_unix_seconds_parse_to_int64_seconds(shop_csv):
    items, inter = shop_csv
    cfg = DataConfig(items=str(items), interactions=str(inter), item_id_col="sku", text_col="name",
                     user_id_col="customer", interaction_item_id_col="product", ts_col="when",
                     weight_col="qty")
    ts = load_dataset(cfg).interactions["ts"].tolist()
    # A date alone is midnight UTC; a zone offset is honoured; plain numbers are Unix seconds.
    assert ts == [_utc(2021, 3, 4), _utc(2021, 3, 4, 5, 6, 7), _utc(2021, 3, 4, 5, 6, 7), 1614816000]
    assert ts[0] == 1614816000


def test_text_template_builds_text_from_columns(shop_csv):
    items, inter = shop_csv
    cfg = DataConfig(items=str(items), interactions=str(inter), item_id_col="sku",
                     text_template="{title}. Genres: {genres}", user_id_col="customer",
                     interaction_item_id_col="product", ts_col="when", weight_col="qty")
    ds = load_dataset(cfg)
    # A null field renders as an empty string, not "nan".
    assert ds.items["text"].tolist() == ["Kettle. Genres: Kitchen|Tea", "Mug. Genres: Kitchen",
                                         "Teapot. Genres: "]
    assert "name" in ds.items.columns  # the unused text column is kept as an extra


def test_weight_defaults_to_one_when_the_log_has_no_weight_column(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,text\na,x\nb,y\n")
    inter = _write(tmp_path / "inter.csv", "user_id,item_id,ts\nu,a,10\nu,b,20\nv,a,30\n")
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    assert ds.interactions["weight"].tolist() == [1.0, 1.0, 1.0]
    assert ds.interactions["ts"].tolist() == [10, 20, 30]
    assert ds.n_users == 2 and ds.n_items == 2


def test_tsv_is_read_with_tabs(tmp_path):
    items = _write(tmp_path / "items.tsv", "item_id\ttext\na\thello, world\n")
    inter = _write(tmp_path / "inter.tsv", "user_id\titem_id\tts\nu\ta\t5\n")
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    assert ds.items["text"].tolist() == ["hello, world"]


def test_parquet_files_with_typed_columns(tmp_path):
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array([10, 20, 30], pa.int64()),
                             "text": ["ten", "twenty", "thirty"],
                             "year": pa.array([1990, 2000, 2010], pa.int32())}), items)
    inter = tmp_path / "inter.parquet"
    stamps = [pd.Timestamp("2020-01-01 00:00:00"), pd.Timestamp("2020-01-01 00:00:30"),
              pd.Timestamp("2020-01-02 12:00:00")]
    pq.write_table(pa.table({"user_id": ["u", "u", "v"],
                             "item_id": pa.array([10, 30, 20], pa.int64()),
                             "ts": pa.array(stamps, pa.timestamp("us")),
                             "weight": pa.array([1.5, 2.0, 0.0], pa.float64())}), inter)
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    # Integer ids become the same strings a CSV would give.
    assert ds.items["item_id"].tolist() == ["10", "20", "30"]
    assert ds.items["year"].tolist() == [1990, 2000, 2010]
    assert ds.interactions["item_id"].tolist() == ["10", "30", "20"]
    # A Parquet timestamp column is seconds since the epoch, whatever its unit.
    assert ds.interactions["ts"].tolist() == [_utc(2020, 1, 1), _utc(2020, 1, 1, 0, 0, 30),
                                              _utc(2020, 1, 2, 12)]
    assert ds.interactions["weight"].tolist() == [1.5, 2.0, 0.0]


def test_jsonl_files_tolerate_blank_lines_and_mixed_types(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "a", "text": "alpha", "tags": ["x", "y"]}\n\n'
                     '{"item_id": 7, "text": "seven"}\n', encoding="utf-8")
    inter = _jsonl(tmp_path / "inter.jsonl", [
        {"user_id": "u", "item_id": "a", "ts": "2020-05-01T00:00:00Z", "weight": 1},
        {"user_id": 42, "item_id": 7, "ts": 1588291200, "weight": 2.5},
    ])
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    assert ds.items["item_id"].tolist() == ["a", "7"]
    assert ds.items["text"].tolist() == ["alpha", "seven"]
    assert "tags" in ds.items.columns
    assert ds.interactions["user_id"].tolist() == ["u", "42"]
    assert ds.interactions["ts"].tolist() == [_utc(2020, 5, 1), 1588291200]
    assert ds.interactions["weight"].tolist() == [1.0, 2.5]


def test_folders_of_mixed_formats_are_read_in_name_order(tmp_path):
    item_dir = tmp_path / "items"
    item_dir.mkdir()
    _write(item_dir / "a.csv", "item_id,text\ni1,one\ni2,two\n")
    _jsonl(item_dir / "b.jsonl", [{"item_id": "i3", "text": "three"}])
    pq.write_table(pa.table({"item_id": ["i4", "i5"], "text": ["four", "five"]}), item_dir / "c.parquet")
    _write(item_dir / "notes.txt", "ignored: not a data file\n")
    _write(item_dir / ".hidden.csv", "item_id,text\nzz,hidden\n")
    inter_dir = tmp_path / "log"
    inter_dir.mkdir()
    _write(inter_dir / "2021.csv", "user_id,item_id,ts\nu,i1,1\nu,i4,2\n")
    _write(inter_dir / "2022.csv", "user_id,item_id,ts\nv,i5,3\n")
    ds = load_dataset(DataConfig(items=str(item_dir), interactions=str(inter_dir)))
    assert ds.items["item_id"].tolist() == ["i1", "i2", "i3", "i4", "i5"]
    assert ds.interactions["item_id"].tolist() == ["i1", "i4", "i5"]
    # The input files and their hashes are recorded, so a run can tell when its inputs change.
    files = ds.sources["files"]
    assert set(files) == {str(item_dir / n) for n in ("a.csv", "b.jsonl", "c.parquet")} | {
        str(inter_dir / n) for n in ("2021.csv", "2022.csv")}
    assert files[str(item_dir / "a.csv")] == file_sha256(item_dir / "a.csv")


def test_read_table_marks_each_row_with_its_file_and_row_number(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    _write(folder / "a.csv", "k\n1\n\n2\n")  # the blank line is not a row
    _write(folder / "b.csv", "k\n3\n")
    df = read_table(folder)
    assert df["k"].tolist() == ["1", "2", "3"]
    assert df["__row"].tolist() == [1, 2, 1]
    assert df["__file"].tolist() == [str(folder / "a.csv")] * 2 + [str(folder / "b.csv")]


def test_csv_keeps_na_like_strings_as_text(tmp_path):
    # "NA" and "null" are real ids/texts in a catalog; only an empty field is missing.
    items = _write(tmp_path / "items.csv", "item_id,text\nNA,null\nb,None\n")
    inter = _write(tmp_path / "inter.csv", "user_id,item_id,ts\nu,NA,1\n")
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    assert ds.items["item_id"].tolist() == ["NA", "b"]
    assert ds.items["text"].tolist() == ["null", "None"]


def test_null_text_fill_policy_fills_with_the_given_text(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,text\na,\nb,bee\n")
    inter = _write(tmp_path / "inter.csv", "user_id,item_id,ts\nu,a,1\n")
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter), null_text="fill",
                                 text_fill="(no description)"))
    assert ds.items["text"].tolist() == ["(no description)", "bee"]


def test_unknown_items_drop_policy_drops_and_counts(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,text\na,x\n")
    inter = _write(tmp_path / "inter.csv", "user_id,item_id,ts\nu,a,1\nu,zz,2\nv,yy,3\nv,a,4\n")
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter), unknown_items="drop"))
    assert ds.interactions["ts"].tolist() == [1, 4]
    assert ds.sources["dropped_unknown_items"] == 2


def test_a_json_file_may_hold_one_array_of_objects(tmp_path):
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"item_id": "a", "text": "alpha"}, {"item_id": "b", "text": "beta"}]),
                     encoding="utf-8")
    inter = _jsonl(tmp_path / "inter.json", [{"user_id": "u", "item_id": "b", "ts": 5}])
    ds = load_dataset(DataConfig(items=str(items), interactions=str(inter)))
    assert ds.items["item_id"].tolist() == ["a", "b"]
    assert ds.interactions["item_id"].tolist() == ["b"]


def test_user_files_are_not_labelled_with_the_default_builtin_name(shop_csv, tmp_path):
    items = _write(tmp_path / "i.csv", "item_id,text\na,x\n")
    inter = _write(tmp_path / "l.csv", "user_id,item_id,ts\nu,a,1\n")
    assert DataConfig().dataset == "synthetic"
    assert load_dataset(DataConfig(items=str(items), interactions=str(inter))).name == "custom"
    named = DataConfig(dataset="my-shop", items=str(items), interactions=str(inter))
    assert load_dataset(named).name == "my-shop"
