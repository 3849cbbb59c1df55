"""Malformed input: every error names the file, the data row(s) (1-based, header excluded) and the
column, and nothing reaches the artifact store."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltray.artifacts import ArtifactStore, fingerprint_of
from ltray.config import DataConfig
from ltray.data import DataError, load_dataset

ITEMS = "item_id,text\na,alpha\nb,beta\nc,gamma\n"
INTER = "user_id,item_id,ts,weight\nu1,a,100,1\nu1,b,200,1\nu2,c,300,2\n"


def ingest(cfg: DataConfig, store: ArtifactStore) -> None:
    """What the pipeline's data stage does: validate everything, then write one stage."""
    ds = load_dataset(cfg)
    with store.writing("data", fingerprint=fingerprint_of(ds.sources)) as w:
        ds.items.to_parquet(w / "items.parquet")
        ds.interactions.to_parquet(w / "interactions.parquet")


def _parquet(table: dict) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(table), path)


@dataclass
class Case:
    """Files to write (name -> text, bytes or writer), the config, and what the error must name."""

    files: dict[str, str | bytes | Callable[[Path], None]]
    cfg: dict
    file: str | None  # the file (or folder) the message names, relative to tmp_path
    rows: list[int] = field(default_factory=list)
    column: str | None = None
    says: str = ""  # a fragment of the message
    hint: str | None = None  # a fragment of the hint


def case(items=ITEMS, inter=INTER, *, items_name="items.csv", inter_name="inter.csv", extra=None, cfg=None,
         **expect) -> Case:
    files = {items_name: items, inter_name: inter, **(extra or {})}
    base = {"items": items_name, "interactions": inter_name}
    return Case(files, {**base, **(cfg or {})}, **expect)


CASES = {
    # -- missing columns
    "missing item_id column": case("id,text\na,x\n", file="items.csv", column="item_id",
                                   says="missing item_id column", hint="--item-id-col"),
    "missing text column": case("item_id,body\na,x\n", file="items.csv", column="text", says="missing text"),
    "missing ts column": case(inter="user_id,item_id\nu,a\n", file="inter.csv", column="ts",
                              says="missing ts"),
    "mapped id column absent": case(cfg={"item_id_col": "sku"}, file="items.csv", column="sku",
                                    says="missing item_id column"),
    "named weight column absent": case(cfg={"weight_col": "rating"}, file="inter.csv", column="rating",
                                       says="missing weight column"),
    "mapping shadows a column": case("sku,item_id,text\nA,a,x\n", cfg={"item_id_col": "sku"},
                                     file="items.csv", column="item_id", says="also has a 'item_id' column"),
    # -- null and empty ids
    "null item id": case("item_id,text\na,alpha\n,beta\nc,gamma\n", file="items.csv", rows=[2],
                         column="item_id", says="null or empty"),
    "blank item id": case("item_id,text\na,alpha\nb,beta\n   ,gamma\n", file="items.csv", rows=[3],
                          column="item_id", says="null or empty"),
    "null user id in JSONL": case(inter='{"user_id": "u1", "item_id": "a", "ts": 1}\n'
                                        '{"user_id": null, "item_id": "b", "ts": 2}\n'
                                        '{"user_id": "", "item_id": "c", "ts": 3}\n',
                                  inter_name="inter.jsonl", file="inter.jsonl", rows=[2, 3], column="user_id",
                                  says="user_id is null or empty"),
    "null item id in log, mapped": case(inter="who,what,ts\nu,a,1\nu,,2\n",
                                        cfg={"user_id_col": "who", "interaction_item_id_col": "what"},
                                        file="inter.csv", rows=[2], column="what", says="item_id is null"),
    # -- text
    "null text": case("item_id,text\na,alpha\nb,\nc,\n", file="items.csv", rows=[2, 3], column="text",
                      says="text is null", hint="null_text=fill"),
    "null text in JSONL, mapped": case('{"id": "a", "desc": "x"}\n{"id": "b", "desc": null}\n',
                                       items_name="items.jsonl",
                                       cfg={"item_id_col": "id", "text_col": "desc"},
                                       file="items.jsonl", rows=[2], column="desc", says="text is null"),
    "template uses a missing column": case("item_id,title\na,A\n", cfg={"text_template": "{title} ({year})"},
                                           file="items.csv", column="year", says="template"),
    # -- duplicates and unknown items
    "duplicate item ids": case("item_id,text\na,alpha\nb,beta\na,again\n", file="items.csv", rows=[1, 3],
                               column="item_id", says="duplicate item_id 'a'"),
    "duplicate after stripping": case("item_id,text\na,alpha\n a ,beta\n", file="items.csv", rows=[1, 2],
                                      column="item_id", says="duplicate item_id 'a'"),
    "duplicate across files": case(items=None, items_name="items", extra={
        "items/1.csv": "item_id,text\na,alpha\nb,beta\n", "items/2.csv": "item_id,text\nc,gamma\na,again\n"},
        file="items/1.csv", rows=[1], column="item_id", says="2.csv row 2"),
    "unknown items": case(inter="user_id,item_id,ts\nu,a,1\nu,zz,2\nv,b,3\nv,yy,4\n", file="inter.csv",
                          rows=[2, 4], column="item_id", says="not in the catalog",
                          hint="unknown_items=drop"),
    "unknown items, mapped": case(inter="user_id,product,ts\nu,zz,1\n",
                                  cfg={"interaction_item_id_col": "product"},
                                  file="inter.csv", rows=[1], column="product", says="not in the catalog"),
    "only unknown items, dropped": case(inter="user_id,item_id,ts\nu,zz,1\n", cfg={"unknown_items": "drop"},
                                        file="inter.csv", column="item_id", says="no interaction is left"),
    # -- empty input
    "empty items file": case("", file="items.csv", says="empty"),
    "whitespace-only JSONL": case(inter="\n  \n", inter_name="inter.jsonl", file="inter.jsonl", says="empty"),
    "header-only log": case(inter="user_id,item_id,ts\n", file="inter.csv", says="no data rows"),
    "header-only catalog": case("item_id,text\n", file="items.csv", says="no data rows"),
    # -- encoding
    "non-UTF-8 in a CSV cell": case(b"item_id,text\na,alpha\nb,caf\xe9\nc,gamma\n", file="items.csv",
                                    rows=[2], column="text", says="invalid UTF-8 byte 0xe9 at line 3"),
    "non-UTF-8 in a CSV header": case(b"item_id,t\xffxt\na,alpha\n", file="items.csv", says="in the header"),
    "non-UTF-8 in JSONL": case(inter=b'{"user_id": "u", "item_id": "a", "ts": 1}\n\n'
                                     b'{"user_id": "\xc3(", "item_id": "b", "ts": 2}\n',
                               inter_name="inter.jsonl", file="inter.jsonl", rows=[2], column="user_id",
                               says="line 3"),
    # -- timestamps
    "unparseable timestamp": case(inter="user_id,item_id,ts\nu,a,1\nu,b,2\nv,c,yesterday\n", file="inter.csv",
                                  rows=[3], column="ts", says="'yesterday'"),
    "null timestamp, mapped": case(inter="user_id,item_id,when\nu,a,\nu,b,2021-01-01\n",
                                   cfg={"ts_col": "when"}, file="inter.csv", rows=[1], column="when",
                                   says="timestamp cannot be parsed"),
    "millisecond timestamps": case(inter="user_id,item_id,ts\nu,a,1600000000\nu,b,1600000000000\n",
                                   file="inter.csv", rows=[2], column="ts", says="milliseconds"),
    "boolean timestamps": case(inter=_parquet({"user_id": ["u"], "item_id": ["a"], "ts": [True]}),
                               inter_name="inter.parquet", file="inter.parquet", rows=[1], column="ts",
                               says="timestamp"),
    # -- weights
    "negative weight": case(inter="user_id,item_id,ts,weight\nu,a,1,1\nu,b,2,-1\n", file="inter.csv",
                            rows=[2], column="weight", says="-1"),
    "non-numeric weight, mapped": case(inter="user_id,item_id,ts,qty\nu,a,1,1\nu,b,2,2\nu,c,3,lots\n",
                                       cfg={"weight_col": "qty"}, file="inter.csv", rows=[3], column="qty",
                                       says="'lots'"),
    "infinite weight": case(inter="user_id,item_id,ts,weight\nu,a,1,inf\n", file="inter.csv", rows=[1],
                            column="weight", says="finite"),
    "missing weight key in JSONL": case(inter='{"user_id": "u", "item_id": "a", "ts": 1, "weight": 2}\n'
                                              '{"user_id": "u", "item_id": "b", "ts": 2}\n',
                                        inter_name="inter.jsonl", file="inter.jsonl", rows=[2],
                                        column="weight", says="null"),
    # -- mistyped columns
    "boolean weights": case(inter=_parquet({"user_id": ["u", "v"], "item_id": ["a", "b"], "ts": [1, 2],
                                            "weight": [True, False]}),
                            inter_name="inter.parquet", file="inter.parquet", rows=[1, 2], column="weight",
                            says="weight must be"),
    "fractional item ids": case(_parquet({"item_id": [1.0, 2.5], "text": ["x", "y"]}),
                                items_name="items.parquet", file="items.parquet", rows=[2], column="item_id",
                                says="must be a string or an integer"),
    "numeric text column": case(_parquet({"item_id": ["a", "b"], "price": [1, 2]}),
                                items_name="items.parquet", cfg={"text_col": "price"}, file="items.parquet",
                                rows=[1, 2], column="price", says="text must be a string"),
    "nested item id in JSONL": case('{"item_id": "a", "text": "x"}\n{"item_id": ["b"], "text": "y"}\n',
                                    items_name="items.jsonl", file="items.jsonl", rows=[2], column="item_id",
                                    says="found list"),
    # -- malformed files
    "malformed JSONL line": case('{"item_id": "a", "text": "x"}\n\n{"item_id": "b", "text": "y"\n',
                                 items_name="items.jsonl", file="items.jsonl", rows=[2],
                                 says="malformed JSON at line 3"),
    "JSONL line not an object": case('{"item_id": "a", "text": "x"}\n["b", "y"]\n', items_name="items.jsonl",
                                     file="items.jsonl", rows=[2], says="not a JSON object"),
    "JSON array with a non-object": case('[{"item_id": "a", "text": "x"}, "b", 3]', items_name="items.json",
                                         file="items.json", rows=[2, 3], says="must be a JSON object"),
    "ragged CSV row": case("item_id,text\na,alpha\nb,beta,extra\n", file="items.csv", rows=[2],
                           says="malformed CSV"),
    "not a Parquet file": case(b"PAR1 this is not parquet", items_name="items.parquet", file="items.parquet",
                               says="cannot read Parquet"),
    # -- files and folders
    "unsupported extension": case("item_id,text\na,x\n", items_name="items.xlsx", file="items.xlsx",
                                  says="unsupported file type '.xlsx'"),
    "missing file": case(items=None, cfg={"items": "nope.csv"}, file="nope.csv", says="does not exist"),
    "empty folder": case(items=None, items_name="items", extra={"items/readme.txt": "no data here"},
                         file="items", says="folder has no"),
    "only items given": case(cfg={"interactions": None}, file="items.csv", says="without --interactions",
                             hint="--interactions"),
    "only interactions given": case(cfg={"items": None}, file="inter.csv", says="without --items"),
}


def _write(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        if content is None:
            continue
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _resolve(tmp_path: Path, cfg: dict) -> DataConfig:
    return DataConfig(**{k: (str(tmp_path / v) if k in ("items", "interactions") and v else v)
                         for k, v in cfg.items()})


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_named_precisely_and_writes_nothing(tmp_path, name):
    c = CASES[name]
    data = tmp_path / "data"
    _write(data, c.files)
    run = tmp_path / "run"
    store = ArtifactStore(run)
    with pytest.raises(DataError) as e:
        ingest(_resolve(data, c.cfg), store)
    err, msg = e.value, str(e.value)
    assert c.says in msg, msg
    if c.hint:
        assert c.hint in (err.hint or ""), err.hint
    if c.file:
        assert err.file == str(data / c.file)
        assert msg.startswith(str(data / c.file)), msg
    assert err.rows == c.rows, msg
    if c.rows:
        label = "rows" if len(c.rows) > 1 else "row"
        assert f"{label} {', '.join(map(str, c.rows))}" in msg
    assert err.column == c.column, msg
    if c.column:
        assert f"column '{c.column}'" in msg
    # Nothing reached the store: no stage, no manifest, no temp folder, not even an empty run folder.
    assert not run.exists()
    assert store.manifest() == {"stages": {}}
    assert not store.has("data")


@pytest.mark.parametrize("name", ["null text", "unknown items", "non-UTF-8 in a CSV cell", "header-only log"])
def test_a_failed_load_leaves_the_previous_good_stage_untouched(tmp_path, name):
    good = tmp_path / "good"
    _write(good, {"items.csv": ITEMS, "inter.csv": INTER})
    store = ArtifactStore(tmp_path / "run")
    ingest(_resolve(good, {"items": "items.csv", "interactions": "inter.csv"}), store)
    before_manifest = (tmp_path / "run" / "manifest.json").read_bytes()
    before_files = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*")
                    if p.is_file()}

    bad = tmp_path / "bad"
    _write(bad, CASES[name].files)
    with pytest.raises(DataError):
        ingest(_resolve(bad, CASES[name].cfg), ArtifactStore(tmp_path / "run"))

    after_files = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*")
                   if p.is_file()}
    assert (tmp_path / "run" / "manifest.json").read_bytes() == before_manifest
    assert after_files == before_files
    assert ArtifactStore(tmp_path / "run").has("data")


def test_null_text_passes_with_the_fill_policy(tmp_path):
    c = CASES["null text"]
    _write(tmp_path, c.files)
    store = ArtifactStore(tmp_path / "run")
    ingest(_resolve(tmp_path, {**c.cfg, "null_text": "fill", "text_fill": "?"}), store)
    assert store.has("data")
    items = __import__("pandas").read_parquet(store.stage_path("data") / "items.parquet")
    assert items["text"].tolist() == ["alpha", "?", "?"]


def test_unknown_items_pass_with_the_drop_policy_and_are_counted(tmp_path):
    c = CASES["unknown items"]
    _write(tmp_path, c.files)
    ds = load_dataset(_resolve(tmp_path, {**c.cfg, "unknown_items": "drop"}))
    assert ds.interactions["item_id"].tolist() == ["a", "b"]
    assert ds.sources["dropped_unknown_items"] == 2


def test_unknown_dataset_name_is_an_error_with_the_choices():
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="movielens-1b"))
    assert "movielens-1b" in str(e.value)
    assert "synthetic" in str(e.value) and "movielens-latest-small" in str(e.value)
    assert "--items" in e.value.hint


def test_many_bad_rows_are_summarised(tmp_path):
    rows = "".join(f"u,i{k},{'x' if k % 2 else k}\n" for k in range(20))
    items = "item_id,text\n" + "".join(f"i{k},t\n" for k in range(20))
    _write(tmp_path, {"items.csv": items, "inter.csv": "user_id,item_id,ts\n" + rows})
    with pytest.raises(DataError) as e:
        load_dataset(_resolve(tmp_path, {"items": "items.csv", "interactions": "inter.csv"}))
    # Data rows 2, 4, ..., 20 hold 'x'; the message shows the first five and counts the rest.
    assert e.value.rows == list(range(2, 21, 2))
    assert "rows 2, 4, 6, 8, 10 (+5 more)" in str(e.value)


def test_cli_exits_non_zero_with_one_line_naming_file_row_and_column(tmp_path):
    from typer.testing import CliRunner

    from ltray.cli import app

    _write(tmp_path, CASES["negative weight"].files)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["data", "inspect", "--items", str(tmp_path / "items.csv"),
                                      "--interactions", str(tmp_path / "inter.csv"), "--artifacts", str(run)])
    assert result.exit_code != 0
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert f"{tmp_path / 'inter.csv'}, row 2, column 'weight'" in " ".join(text.split())
    assert "Traceback" not in text
    assert not (run / "manifest.json").exists()


def test_error_payload_is_json_friendly(tmp_path):
    # The CLI and jobs report errors as data: the fields must survive JSON.
    _write(tmp_path, CASES["duplicate item ids"].files)
    with pytest.raises(DataError) as e:
        load_dataset(_resolve(tmp_path, CASES["duplicate item ids"].cfg))
    payload = json.loads(json.dumps({"file": e.value.file, "rows": e.value.rows, "column": e.value.column}))
    assert payload == {"file": str(tmp_path / "items.csv"), "rows": [1, 3], "column": "item_id"}
