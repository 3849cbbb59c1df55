"""What the embedding stage reads and writes, without Ray: the input rules, the carry-over keys, the
catalog scan, the manifest and shards, ``load_embeddings`` and the fingerprints.

Output folder::

    part-00000.parquet ...   item_id (string), embedding (fixed_size_list<float32>[d]),
                             text_hash (string), model_id (string); new rows in catalog order,
                             then carried-over rows in the previous artifact's order
    embed.json               model, dim, count, encoded, carried_over, truncated, items_per_s, ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ltray.config import EmbedConfig
from ltray.embed.models import model_id_of, resolve_model, text_hash
from ltray.errors import LtrayError

STAGE = "embed"
MANIFEST_FILE = "embed.json"
ITEM_COLUMNS = ["item_id", "text"]
# What must match, besides text and model, for an old vector to stand for a new one.
# dtype is left out on purpose: bf16/fp16 vectors keep cosine >= 0.999 to fp32 ones.
SIGNATURE_FIELDS = ("pooling", "max_length")


class EmbedError(LtrayError, ValueError):
    """Bad input to the embedding stage, or a previous artifact that cannot be used."""


# -- input rules --------------------------------------------------------------------------------
def check_items(items: pa.Table | pd.DataFrame, fill: str | None,
                where: str = "the items to embed") -> tuple[pa.Table, np.ndarray]:
    """The input rules for a DataFrame, a Parquet batch or a Ray Data block: item_id and text as strings
    (null text is empty), ids unique, blank text -> ``fill`` (None keeps it). Returns (table, blank rows)."""
    names = items.column_names if isinstance(items, pa.Table) else list(items.columns)
    missing = sorted(set(ITEM_COLUMNS) - set(names))
    if missing:
        raise EmbedError(f"items need columns item_id and text; missing {missing} in {where}")
    if isinstance(items, pd.DataFrame):
        ids = pa.array(items["item_id"].astype(str).to_numpy(), pa.string())
        texts = items["text"].fillna("").astype(str).tolist()
    else:
        ids = items.column("item_id").cast(pa.string())
        texts = pc.fill_null(items.column("text").cast(pa.string()), "").to_pylist()
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise EmbedError(f"duplicate item_id {dup[0]['values'].as_py()!r} in {where}")
    blank = np.array([not t.strip() for t in texts], bool)
    if fill is not None:
        texts = [fill if b else t for t, b in zip(texts, blank, strict=True)]
    return pa.table({"item_id": ids, "text": pa.array(texts, pa.string())}), blank


def _refuse_empty(cfg: EmbedConfig, count: int, ids: list[str]) -> None:
    if count and cfg.empty_text == "error":
        raise EmbedError(f"{count} item(s) have empty text, e.g. {ids[:5]} "
                         "(set embed.empty_text=fill to encode embed.empty_text_fill instead)")


def prepare_items(items: pd.DataFrame, cfg: EmbedConfig) -> pd.DataFrame:
    """item_id/text as strings, blank text filled or refused, with the text_hash column."""
    table, blank = check_items(items, cfg.empty_text_fill)
    _refuse_empty(cfg, int(blank.sum()), table.column("item_id").filter(pa.array(blank)).to_pylist())
    out = table.to_pandas()
    out["text_hash"] = text_hash(out["text"].tolist())
    out.attrs["empty"] = int(blank.sum())
    return out


def signature(cfg: EmbedConfig) -> dict[str, Any]:
    """The model id a TextEncoder would report (without loading the weights) and SIGNATURE_FIELDS."""
    path, is_local = resolve_model(cfg.model)
    return {"model_id": model_id_of(path, is_local), **{f: getattr(cfg, f) for f in SIGNATURE_FIELDS}}


# -- keys: what carry-over compares -------------------------------------------------------------
def item_keys(item_ids: Sequence[str], hashes: Sequence[str]) -> np.ndarray:
    """One uint64 per (item_id, text_hash): the first 8 bytes of their sha1 (collisions ~2^-64)."""
    out = np.empty(len(item_ids), dtype=np.uint64)
    for i, (iid, th) in enumerate(zip(item_ids, hashes, strict=True)):
        out[i] = int.from_bytes(hashlib.sha1(f"{iid}\x1f{th}".encode()).digest()[:8], "little")
    return out


def scan_items(path: str | Path, cfg: EmbedConfig, batch_rows: int = 65_536) -> tuple[np.ndarray, dict[str, Any]]:
    """One streaming pass over an items Parquet file or folder: input rules, keys and a digest.

    Returns the sorted keys of every (item_id, text_hash) and ``{count, empty, digest}``; the digest
    is what ``fingerprint`` hashes, so a file and the same DataFrame give the same fingerprint. Runs
    in a Ray task (``embed_items``): it holds 8 bytes per item, never the texts of the whole catalog.
    """
    files = parquet_files(path)
    digest, keys, id_keys = hashlib.sha256(), [], []
    count = empty = 0
    blank_ids: list[str] = []
    for f in files:
        pf = pq.ParquetFile(f)
        check_items(pf.schema_arrow.empty_table(), None, str(f))  # a missing column, named with its file
        for batch in pf.iter_batches(batch_size=batch_rows, columns=ITEM_COLUMNS):
            table, blank = check_items(pa.Table.from_batches([batch]), cfg.empty_text_fill, str(f))
            ids = table.column("item_id").to_pylist()
            empty += int(blank.sum())
            blank_ids += table.column("item_id").filter(pa.array(blank)).to_pylist()[:5 - len(blank_ids)]
            hashes = text_hash(table.column("text").to_pylist())
            for iid, th in zip(ids, hashes, strict=True):
                digest.update(f"{iid}\x1f{th}\x1e".encode())
            keys.append(item_keys(ids, hashes))
            id_keys.append(item_keys(ids, [""] * len(ids)))
            count += len(ids)
    _refuse_empty(cfg, empty, blank_ids)
    all_ids = np.sort(np.concatenate(id_keys)) if id_keys else np.zeros(0, np.uint64)
    if len(all_ids) and (all_ids[1:] == all_ids[:-1]).any():  # across batches and files
        dup = _first_duplicate_id(files, all_ids[1:][all_ids[1:] == all_ids[:-1]][0])
        raise EmbedError(f"duplicate item_id {dup!r} in {path}")
    del all_ids, id_keys
    out = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    return out, {"count": count, "empty": empty, "digest": digest.hexdigest()}


def _first_duplicate_id(files: list[Path], key: np.uint64) -> str:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=["item_id"]):
            ids = pa.array(batch.column("item_id")).cast(pa.string()).to_pylist()
            hit = np.flatnonzero(item_keys(ids, [""] * len(ids)) == key)
            if len(hit):
                return ids[hit[0]]
    return "?"


def previous_keys(previous_dir: Path | None, sig: dict[str, Any]) -> np.ndarray | None:
    """Sorted keys of the previous artifact's rows made with ``sig``'s model; None when none is usable."""
    if previous_dir is None or not Path(previous_dir).exists():
        return None
    old_sig = read_manifest(previous_dir).get("signature", {})
    if any(old_sig.get(k) != v for k, v in sig.items()):
        return None
    keys = []
    for f in parquet_files(previous_dir, "part-*.parquet"):
        t = pq.read_table(f, columns=["item_id", "text_hash", "model_id"])
        ok = np.asarray(pc.equal(t.column("model_id"), sig["model_id"]).to_numpy(zero_copy_only=False), bool)
        ids = t.column("item_id").to_numpy(zero_copy_only=False)[ok]
        keys.append(item_keys(ids.tolist(), t.column("text_hash").to_numpy(zero_copy_only=False)[ok].tolist()))
    return np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)


def parquet_files(path: str | Path, pattern: str = "*.parquet") -> list[Path]:
    path = Path(path)
    files = sorted(path.glob(pattern)) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise EmbedError(f"no Parquet files ({pattern}) at {path}")
    return files


# -- the artifact: manifest and shards ----------------------------------------------------------
def read_manifest(path: Path) -> dict[str, Any]:
    f = Path(path) / MANIFEST_FILE
    if not f.exists():
        raise EmbedError(f"{f} is missing: {path} is not an embedding artifact")
    return json.loads(f.read_text(encoding="utf-8"))


def write_shards(table: pa.Table, out_dir: Path, shard_rows: int) -> list[str]:
    """An in-memory table as Parquet parts of ``shard_rows`` (a DataFrame input, benchmarks' stand-in vectors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        name = f"part-{i:05d}.parquet"
        pq.write_table(table.slice(start, shard_rows), out_dir / name)
        names.append(name)
    return names


def load_embeddings(path: Path, item_ids: Sequence[str]) -> np.ndarray:
    """float32 (len(item_ids), d), row i = the vector of item_ids[i] (reads every shard into memory)."""
    files = sorted(Path(path).glob("part-*.parquet"))
    if not files:
        raise EmbedError(f"no embedding shards (part-*.parquet) in {path}")
    table = pa.concat_tables([pq.read_table(f, columns=["item_id", "embedding"]) for f in files])
    have = pd.Series(np.arange(table.num_rows), index=table.column("item_id").to_numpy(zero_copy_only=False))
    want = pd.Index([str(i) for i in item_ids])
    missing = want.difference(have.index)
    if len(missing):
        raise EmbedError(f"{len(missing)} item(s) have no embedding in {path}, e.g. {list(missing[:5])}")
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return np.ascontiguousarray(vecs[have.loc[want].to_numpy()], dtype=np.float32)


# -- fingerprints -------------------------------------------------------------------------------
def fingerprint(items: pd.DataFrame, cfg: EmbedConfig) -> str:
    """Everything the output depends on: vector-shaping config, the model, every item's id and text."""
    prepared = prepare_items(items, cfg)
    h = hashlib.sha256()
    for iid, th in zip(prepared["item_id"], prepared["text_hash"], strict=True):
        h.update(f"{iid}\x1f{th}\x1e".encode())
    return fingerprint_of_digest(h.hexdigest(), cfg)


def fingerprint_of_digest(digest: str, cfg: EmbedConfig) -> str:
    """The fingerprint of a ``scan_items`` digest (what ``fingerprint`` hashes for a DataFrame)."""
    from ltray.artifacts import fingerprint_of

    return fingerprint_of({"signature": signature(cfg), "dtype": cfg.dtype, "items": digest})
