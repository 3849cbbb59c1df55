"""The catalog embedding stage: Parquet items -> Ray Data actor pool -> Parquet shards of vectors.

The only module of ``ltray.embed`` that imports Ray (lazily, inside the functions that run it).
Streaming: the items are read as Parquet in blocks of at most ``embed.block_rows``, encoded on the
actor pool and written as shards by Ray Data write tasks; the driver holds neither texts nor
vectors, only small summaries. Carry-over compares one uint64 key per (item_id, text_hash): a Ray
task scans the catalog and the previous artifact into sorted key arrays (8 bytes per item, in the
object store), workers filter their batches against them. Sizing (``actor_pool_spec``), the keys
and the input policy are plain functions, testable without a cluster.

Output folder::

    part-00000.parquet ...   item_id (string), embedding (fixed_size_list<float32>[d]),
                             text_hash (string), model_id (string); new rows in catalog order,
                             then carried-over rows in the previous artifact's order
    embed.json               model, dim, count, encoded, carried_over, truncated, items_per_s, ...
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ltray.config import Config, EmbedConfig
from ltray.embed.encoder import TextEncoder, model_id_of, resolve_model, text_hash
from ltray.errors import LtrayError

STAGE = "embed"
MANIFEST_FILE = "embed.json"
# What must match, besides text and model, for an old vector to stand for a new one.
# dtype is left out on purpose: bf16/fp16 vectors keep cosine >= 0.999 to fp32 ones.
SIGNATURE_FIELDS = ("pooling", "max_length")


class EmbedError(LtrayError, ValueError):
    """Bad input to the embedding stage, or a previous artifact that cannot be used."""


# -- sizing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    num_actors: int
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    threads: int  # torch threads inside each actor


def actor_pool_spec(cluster_resources: dict[str, float], cfg: EmbedConfig) -> PoolSpec:
    """One actor per GPU where there are GPUs (unless device=cpu); else one actor per whole CPU.

    GPU actors reserve one CPU each (tokenising) unless cpus_per_actor says otherwise.
    CPU actors share the cluster's CPUs evenly, so 1.5 CPUs gives one actor holding
    1.5; torch threads per actor = its whole CPUs, at least 1.
    """
    cpus = float(cluster_resources.get("CPU", 0.0))
    gpus = float(cluster_resources.get("GPU", 0.0))
    if cfg.device == "cuda" and gpus < 1:
        raise EmbedError("embed.device=cuda but the cluster has no GPU")
    if gpus >= 1 and cfg.device != "cpu":
        n = cfg.num_actors or int(gpus)
        per_cpu = cfg.cpus_per_actor or (min(1.0, cpus / n) if cpus > 0 else 0.0)
        return PoolSpec(n, float(per_cpu), min(1.0, gpus / n), max(1, math.floor(per_cpu)))
    if cpus <= 0:
        raise EmbedError("the cluster reports no CPUs to run embedding actors on")
    if cfg.cpus_per_actor is not None:
        per_cpu = min(cfg.cpus_per_actor, cpus)
        n = cfg.num_actors or max(1, math.floor(cpus / per_cpu))
    else:
        n = cfg.num_actors or max(1, math.floor(cpus))
        per_cpu = cpus / n
    return PoolSpec(int(n), float(per_cpu), 0.0, max(1, math.floor(per_cpu)))


def actor_batch_rows(block_rows: int, cfg: EmbedConfig) -> int:
    """Rows per actor call: at most batch_size x sort_batches, cut evenly from a block (1218 rows make two
    calls of 609, not 1024 + 194: a short call pads its last forward pass and costs a Python round trip)."""
    most = cfg.batch_size * cfg.sort_batches
    calls = math.ceil(block_rows / most)
    return max(1, math.ceil(block_rows / calls))


# -- input policy -------------------------------------------------------------------------------
def prepare_items(items: pd.DataFrame, cfg: EmbedConfig) -> pd.DataFrame:
    """item_id/text as strings, blank text filled or refused, with the text_hash column."""
    missing = {"item_id", "text"} - set(items.columns)
    if missing:
        raise EmbedError(f"items need columns item_id and text; missing {sorted(missing)}")
    out = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(),
                        "text": items["text"].fillna("").astype(str).to_numpy()})
    if out["item_id"].duplicated().any():
        dup = out.loc[out["item_id"].duplicated(), "item_id"].iloc[0]
        raise EmbedError(f"duplicate item_id {dup!r} in the items to embed")
    blank = out["text"].str.strip() == ""
    if blank.any():
        if cfg.empty_text == "error":
            ids = out.loc[blank, "item_id"].tolist()
            raise EmbedError(f"{len(ids)} item(s) have empty text, e.g. {ids[:5]} "
                             "(set embed.empty_text=fill to encode embed.empty_text_fill instead)")
        out.loc[blank, "text"] = cfg.empty_text_fill
    out["text_hash"] = text_hash(out["text"].tolist())
    out.attrs["empty"] = int(blank.sum())
    return out


def model_id_for(cfg: EmbedConfig) -> str:
    """The model id a TextEncoder would report, without loading the weights."""
    path, is_local = resolve_model(cfg.model)
    return model_id_of(path, is_local)


def signature(cfg: EmbedConfig) -> dict[str, Any]:
    return {"model_id": model_id_for(cfg), **{f: getattr(cfg, f) for f in SIGNATURE_FIELDS}}


# -- keys: what carry-over compares -------------------------------------------------------------
def item_keys(item_ids: Sequence[str], hashes: Sequence[str]) -> np.ndarray:
    """One uint64 per (item_id, text_hash): the first 8 bytes of their sha1 (collisions ~2^-64)."""
    out = np.empty(len(item_ids), dtype=np.uint64)
    for i, (iid, th) in enumerate(zip(item_ids, hashes, strict=True)):
        out[i] = int.from_bytes(hashlib.sha1(f"{iid}\x1f{th}".encode()).digest()[:8], "little")
    return out


def _prepare_table(table: pa.Table, fill: str) -> pa.Table:
    """item_id / text as strings, blank text filled, text_hash and key added (one Ray Data batch)."""
    ids = table.column("item_id").cast(pa.string()).to_pylist()
    texts = ["" if t is None else str(t) for t in table.column("text").to_pylist()]
    texts = [fill if not t.strip() else t for t in texts]
    hashes = text_hash(texts)
    return pa.table({"item_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "text_hash": pa.array(hashes, pa.string()),
                     "key": pa.array(item_keys(ids, hashes), pa.uint64())})


def scan_items(path: str | Path, cfg: EmbedConfig, batch_rows: int = 65_536) -> tuple[np.ndarray, dict[str, Any]]:
    """One streaming pass over an items Parquet file or folder: input policy, keys and a digest.

    Returns the sorted keys of every (item_id, text_hash) and ``{count, empty, digest}``; the digest
    is what ``fingerprint`` hashes, so a file and the same DataFrame give the same fingerprint. Runs
    in a Ray task (``embed_items``): it holds 8 bytes per item, never the texts of the whole catalog.
    """
    files = _parquet_files(path)
    digest, keys, id_keys = hashlib.sha256(), [], []
    count = empty = 0
    blank_ids: list[str] = []
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=["item_id", "text"]):
            raw = ["" if t is None else str(t) for t in batch.column("text").to_pylist()]
            blank = [not t.strip() for t in raw]
            ids = pa.array(batch.column("item_id")).cast(pa.string()).to_pylist()
            if any(blank):
                empty += int(sum(blank))
                blank_ids += [i for i, b in zip(ids, blank, strict=True) if b][:5 - len(blank_ids)]
            texts = [cfg.empty_text_fill if b else t for t, b in zip(raw, blank, strict=True)]
            hashes = text_hash(texts)
            for iid, th in zip(ids, hashes, strict=True):
                digest.update(f"{iid}\x1f{th}\x1e".encode())
            keys.append(item_keys(ids, hashes))
            id_keys.append(item_keys(ids, [""] * len(ids)))
            count += len(ids)
    if empty and cfg.empty_text == "error":
        raise EmbedError(f"{empty} item(s) have empty text, e.g. {blank_ids} "
                         "(set embed.empty_text=fill to encode embed.empty_text_fill instead)")
    all_ids = np.sort(np.concatenate(id_keys)) if id_keys else np.zeros(0, np.uint64)
    if len(all_ids) and (all_ids[1:] == all_ids[:-1]).any():
        dup = _first_duplicate_id(files, all_ids[1:][all_ids[1:] == all_ids[:-1]][0])
        raise EmbedError(f"duplicate item_id {dup!r} in the items to embed")
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
    for f in _parquet_files(previous_dir, "part-*.parquet"):
        t = pq.read_table(f, columns=["item_id", "text_hash", "model_id"])
        ok = np.asarray(pc.equal(t.column("model_id"), sig["model_id"]).to_numpy(zero_copy_only=False), bool)
        ids = t.column("item_id").to_numpy(zero_copy_only=False)[ok]
        keys.append(item_keys(ids.tolist(), t.column("text_hash").to_numpy(zero_copy_only=False)[ok].tolist()))
    return np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)


def _parquet_files(path: str | Path, pattern: str = "*.parquet") -> list[Path]:
    path = Path(path)
    files = sorted(path.glob(pattern)) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise EmbedError(f"no Parquet files ({pattern}) at {path}")
    return files


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


_KEYS_CACHE: dict[str, np.ndarray] = {}


def _keys_from(ref_box: list) -> np.ndarray:
    """The key array behind an ObjectRef (boxed in a list so that Ray does not resolve it early), cached."""
    import ray

    ref = ref_box[0]
    hit = _KEYS_CACHE.get(ref.hex())
    if hit is None:
        _KEYS_CACHE.clear()  # one stage at a time per worker
        hit = _KEYS_CACHE[ref.hex()] = ray.get(ref)
    return hit


# -- Ray Data batch functions (run on workers) ----------------------------------------------------
STAT_COLUMNS = ("truncated", "tokens", "batch_start", "batch_end", "cpu_s", "carried")


def _prepare_todo(batch: pa.Table, fill: str, old_keys: list | None) -> pa.Table:
    """Prepare a batch of catalog rows and drop those the previous artifact already holds."""
    t = _prepare_table(batch, fill)
    if old_keys is not None:
        keep = ~_in_sorted(t.column("key").to_numpy(), _keys_from(old_keys))
        t = t.filter(pa.array(keep))
    # Rows ordered by text length: each actor batch then holds texts of about one length, so its
    # forward passes pad as little as a loop over the whole catalog sorted by length.
    t = t.take(pc.sort_indices(pc.utf8_length(t.column("text"))))
    return t.drop_columns(["key"])


def _carried_rows(batch: pa.Table, new_keys: list, model_id: str) -> pa.Table:
    """Rows of the previous artifact whose (item_id, text_hash) is still in the catalog, same model."""
    ids = batch.column("item_id").to_pylist()
    keys = item_keys(ids, batch.column("text_hash").to_pylist())
    same_model = np.asarray(pc.equal(batch.column("model_id"), model_id).to_numpy(zero_copy_only=False), bool)
    keep = _in_sorted(keys, _keys_from(new_keys)) & same_model
    t = batch.filter(pa.array(keep))
    n = t.num_rows
    return pa.table({"item_id": t.column("item_id"), "embedding": t.column("embedding"),
                     "text_hash": t.column("text_hash"),
                     "truncated": pa.array(np.zeros(n, bool)), "tokens": pa.array(np.zeros(n, np.int64)),
                     "batch_start": pa.array(np.full(n, np.nan)), "batch_end": pa.array(np.full(n, np.nan)),
                     "cpu_s": pa.array(np.zeros(n)), "carried": pa.array(np.ones(n, bool))})


class _EmbedBatch:
    """Ray Data callable class: loads the encoder once per actor, encodes each batch."""

    def __init__(self, cfg: dict[str, Any], threads: int):
        c = EmbedConfig.model_validate(cfg)
        self.encoder = TextEncoder(c.model, pooling=c.pooling, max_length=c.max_length, dtype=c.dtype,
                                   device=c.device, threads=threads, batch_size=c.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()  # wall clock: comparable across actors on one machine
        cpu0 = time.process_time()
        # the encoder sorts the batch by token length and cuts it into forward passes of batch_size
        enc = self.encoder.encode_detailed(batch.column("text").to_pylist())
        cpu_per_row = (time.process_time() - cpu0) / max(batch.num_rows, 1)
        d = enc.vectors.shape[1]
        flat = pa.array(enc.vectors.reshape(-1), type=pa.float32())
        n = batch.num_rows
        return pa.table({
            "item_id": batch.column("item_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, d),
            "text_hash": batch.column("text_hash"),
            "truncated": pa.array(enc.truncated),
            "tokens": pa.array(enc.tokens, type=pa.int64()),
            "batch_start": pa.array(np.full(n, started)),
            "batch_end": pa.array(np.full(n, time.time())),
            "cpu_s": pa.array(np.full(n, cpu_per_row)),
            "carried": pa.array(np.zeros(n, bool)),
        })


def _normalise(table: pa.Table) -> pa.Table:
    """item_id, embedding (fixed_size_list<float32>), text_hash: one schema whatever produced the rows.

    Ray hands back large_string and may turn the fixed-size list into its tensor type.
    """
    col = table.column("embedding").combine_chunks()
    if isinstance(col.type, pa.ExtensionType):  # Ray's tensor extension: (n, d) ndarray
        arr = np.asarray(col.to_numpy(zero_copy_only=False), np.float32).reshape(len(col), -1)
        dim, flat = arr.shape[1], pa.array(arr.reshape(-1), pa.float32())
    elif pa.types.is_fixed_size_list(col.type):
        dim, flat = col.type.list_size, col.flatten()
    else:  # a variable-size list: every row has the same length
        flat = col.flatten()
        dim = len(flat) // max(len(col), 1)
    embedding = pa.FixedSizeListArray.from_arrays(flat.cast(pa.float32()), dim)
    return pa.table({"item_id": table.column("item_id").cast(pa.string()),
                     "embedding": embedding,
                     "text_hash": table.column("text_hash").cast(pa.string())})


def _shard_sink(out_dir: Path, model_id: str, rows_per_file: int):
    """A Ray Data Datasink: each write task writes one ``part-<task>.parquet`` and returns its stats.

    Write tasks run in worker processes on the driver's node (the stage's temp folder is local to it),
    so neither the vectors nor the per-row stats ever reach the driver; it gets one small dict per file.
    """
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink

    class ShardSink(Datasink):
        def __init__(self):
            self.results: list[dict[str, Any]] = []

        @property
        def supports_distributed_writes(self) -> bool:
            return False

        @property
        def min_rows_per_write(self) -> int:
            return rows_per_file

        def write(self, blocks, ctx) -> dict[str, Any]:
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return {"file": None, "rows": 0}
            stats = pa.concat_tables([t.select(list(STAT_COLUMNS)) for t in tables])
            body = pa.concat_tables([_normalise(t) for t in tables])
            body = body.append_column("model_id", pa.array([model_id] * body.num_rows, pa.string()))
            name = f"part-{ctx.task_idx:05d}.parquet"
            pq.write_table(body, Path(out_dir) / name)
            encoded = pc.invert(stats.column("carried"))
            return {"file": name, "rows": body.num_rows, "dim": body.schema.field("embedding").type.list_size,
                    "carried": pc_sum(stats.column("carried")), "encoded": pc_sum(encoded),
                    "truncated": pc_sum(stats.column("truncated")), "tokens": pc_sum(stats.column("tokens")),
                    "cpu_s": float(pc.sum(stats.column("cpu_s")).as_py() or 0.0),
                    "first_start": pc.min(stats.column("batch_start")).as_py(),
                    "last_end": pc.max(stats.column("batch_end")).as_py()}

        def on_write_complete(self, write_result) -> None:
            self.results = [r for r in write_result.write_returns if r and r.get("rows")]

    return ShardSink()


# -- the stage ----------------------------------------------------------------------------------
def _on_this_node() -> dict[str, Any]:
    """Ray remote args that keep a task on the driver's node (where the stage's local folders are)."""
    import ray

    # num_cpus=0: reads, filters and writes are light, and the actor pool may hold every CPU. The node-id
    # label pins them (Ray's named form; a scheduling_strategy here is a deprecated ray_remote_arg).
    return {"num_cpus": 0, "label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _write_input(items: pd.DataFrame, folder: Path, rows: int) -> Path:
    """A DataFrame handed in by the caller becomes Parquet, so that one streaming path serves both."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(),
                          "text": items["text"].to_numpy(dtype=object)})
    missing = {"item_id", "text"} - set(items.columns)
    if missing:
        raise EmbedError(f"items need columns item_id and text; missing {sorted(missing)}")
    for i, start in enumerate(range(0, max(len(frame), 1), rows)):
        part = frame.iloc[start:start + rows]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i:05d}.parquet",
                       row_group_size=rows)
    return folder


def _scan(source: Path, cfg: EmbedConfig, sig: dict[str, Any], previous_dir: Path | None):
    """Run the scans in Ray tasks; the driver gets the summaries and ObjectRefs to the key arrays."""
    import ray

    pin = _on_this_node()
    scan = ray.remote(scan_items).options(num_returns=2, **pin)
    new_keys, summary = scan.remote(str(source), cfg)
    old_keys = overlap = None
    if previous_dir is not None and Path(previous_dir).exists():
        old_keys = ray.remote(previous_keys).options(**pin).remote(Path(previous_dir), sig)
        overlap = ray.remote(_overlap).remote(new_keys, old_keys)
    try:
        summary = ray.get(summary)
        carried = int(ray.get(overlap)) if overlap is not None else 0
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EmbedError):
            raise e.cause from None
        raise
    return new_keys, old_keys if carried else None, summary, carried


def _read_row_groups(ray, files: list[Path], columns: list[str], pin: dict[str, Any], slice_rows: int | None = None,
                     by_length: bool = False):
    """A Dataset of Parquet row groups (or slices of at most ``slice_rows`` of them), read by CPU-less
    tasks on this node: each slice is one block.

    ``by_length``: a row group's slices are length strata, not runs of rows: slice j holds the j-th
    share of the group's rows ranked by text length, longest first. Every actor call then holds texts
    of about one length, so its forward passes pad about as little as a loop over the whole group
    sorted by length, and the costliest blocks start first, so no actor is left with a long one at the end.

    Not ``ray.data.read_parquet``: its file-listing task needs a CPU, and an actor pool holding every
    CPU would then wait on it forever. The blocks must be many enough for every actor: a block goes
    to one actor whole, so a catalog in one row group would keep all actors but one idle.
    """
    frags = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            step = max(1, slice_rows or n)
            if by_length:
                parts = max(1, math.ceil(n / step))
                frags += [{"file": str(f), "rg": i, "part": j, "parts": parts} for j in range(parts)]
            else:
                frags += [{"file": str(f), "rg": i, "offset": lo, "rows": min(step, n - lo)}
                          for lo in range(0, n, step)]
    return ray.data.from_items(frags, override_num_blocks=max(1, len(frags))).map_batches(
        _read_fragment, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": columns}, **pin)


def todo_blocks(ray, source: Path, cfg: EmbedConfig, block_rows: int, old_keys: np.ndarray | None,
                pin: dict[str, Any]):
    """The catalog rows still to encode, prepared, as blocks of at most block_rows (one per read slice)."""
    # batch_size=None: one call per read slice. A row count here would fuse with the read and bundle
    # that many *slices* into one task, i.e. one block for the whole catalog.
    return (_read_row_groups(ray, _parquet_files(source), ["item_id", "text"], pin, slice_rows=block_rows,
                             by_length=True)
            .map_batches(_prepare_todo, batch_format="pyarrow", batch_size=None, **pin,
                         fn_kwargs={"fill": cfg.empty_text_fill,
                                    "old_keys": [old_keys] if old_keys is not None else None}))


def _read_fragment(batch: pa.Table, columns: list[str]) -> pa.Table:
    row = batch.to_pylist()[0]
    table = pq.ParquetFile(row["file"]).read_row_group(row["rg"], columns=columns)
    if "parts" not in row:
        return table.slice(row["offset"], row["rows"])
    return table.take(length_stratum(table.column("text"), row["part"], row["parts"]))


def length_stratum(texts: pa.ChunkedArray | pa.Array, part: int, parts: int) -> np.ndarray:
    """Row positions of the part-th of `parts` equal shares of `texts` ranked by length, longest first
    (ties in row order); the parts cover every row once."""
    lengths = pc.utf8_length(pc.fill_null(texts, "")).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    n = len(order)
    return np.sort(order[part * n // parts:(part + 1) * n // parts])


def _overlap(new_keys: np.ndarray, old_keys: np.ndarray | None) -> int:
    return 0 if old_keys is None else int(_in_sorted(new_keys, old_keys).sum())


def embed_items(items: pd.DataFrame | str | Path, cfg: EmbedConfig, out_dir: Path,
                previous_dir: Path | None = None) -> dict[str, Any]:
    """Embed ``items`` into Parquet shards in ``out_dir``; unchanged items are copied from ``previous_dir``.

    ``items`` is a Parquet file or folder with item_id and text (streamed: the driver holds neither
    the texts nor the vectors of the catalog), or a DataFrame (written to Parquet in ``out_dir``
    first). Ray must be initialised by the caller. Returns the stats also written to ``embed.json``.
    """
    import ray

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = None
    if isinstance(items, pd.DataFrame):
        scratch = _write_input(items, out_dir / "_input", cfg.block_rows)
    source = scratch or Path(items)
    try:
        stats = _embed_parquet(source, cfg, out_dir, previous_dir, ray)
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats


def _embed_parquet(source: Path, cfg: EmbedConfig, out_dir: Path, previous_dir: Path | None, ray) -> dict:
    sig = signature(cfg)
    new_keys, old_keys, summary, carried = _scan(source, cfg, sig, previous_dir)
    count = summary["count"]
    if count == 0:
        raise EmbedError("no items to embed")
    todo_n = count - carried
    spec = actor_pool_spec(ray.cluster_resources(), cfg)
    pin = _on_this_node()
    # Enough blocks to keep every actor busy, none bigger than block_rows.
    block_rows = max(1, min(cfg.block_rows, math.ceil(max(todo_n, 1) / (spec.num_actors * cfg.blocks_per_actor))))
    parts = []
    if todo_n:
        todo = (todo_blocks(ray, source, cfg, block_rows, old_keys, pin)
                .map_batches(_EmbedBatch, fn_constructor_kwargs={"cfg": cfg.model_dump(), "threads": spec.threads},
                             batch_size=actor_batch_rows(block_rows, cfg),
                             batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=spec.num_actors),
                             num_cpus=spec.num_cpus_per_actor, num_gpus=spec.num_gpus_per_actor))
        parts.append(todo)
    if carried:
        parts.append(_read_row_groups(ray, _parquet_files(previous_dir, "part-*.parquet"),
                                      ["item_id", "embedding", "text_hash", "model_id"], pin)
                     .map_batches(_carried_rows, batch_format="pyarrow", batch_size=None, **pin,
                                  fn_kwargs={"new_keys": [new_keys], "model_id": sig["model_id"]}))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    sink = _shard_sink(out_dir, sig["model_id"], cfg.shard_rows)
    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # shards in catalog order (carried rows after new ones)
    launched = time.time()
    try:
        ds.write_datasink(sink, ray_remote_args=_on_this_node())
    finally:
        ctx.execution_options.preserve_order = keep_order
    finished = time.time()
    res = sink.results
    written = sum(r["rows"] for r in res)
    if written != count:
        raise EmbedError(f"the embedding stage wrote {written} rows for {count} items")
    starts = [r["first_start"] for r in res if r["first_start"] is not None and r["first_start"] == r["first_start"]]
    ends = [r["last_end"] for r in res if r["last_end"] is not None and r["last_end"] == r["last_end"]]
    encode_s = finished - launched if todo_n else 0.0
    window_s = (max(ends) - min(starts)) if todo_n and starts else 0.0
    return {
        "model": sig["model_id"], "dim": int(res[0]["dim"]), "count": count,
        "encoded": int(sum(r["encoded"] for r in res)), "carried_over": int(sum(r["carried"] for r in res)),
        "truncated": int(sum(r["truncated"] for r in res)), "empty": int(summary["empty"]),
        "tokens_encoded": int(sum(r["tokens"] for r in res)),
        "items_per_s": round(todo_n / encode_s, 2) if encode_s > 0 else None,
        "items_per_s_excl_startup": round(todo_n / window_s, 2) if window_s > 0 else None,
        "seconds": 0.0, "encode_seconds": round(encode_s, 3),
        "startup_seconds": round(min(starts) - launched, 3) if todo_n and starts else 0.0,
        "actor_cpu_seconds": round(sum(r["cpu_s"] for r in res), 3),
        "pool": asdict(spec) if todo_n else None, "dtype": cfg.dtype, "device": cfg.device,
        "block_rows": block_rows, "signature": sig, "shards": sorted(r["file"] for r in res),
    }


# -- previous artifacts and driver-side helpers ---------------------------------------------------
def _read_dir(path: Path, columns: list[str] | None = None) -> pa.Table:
    files = sorted(Path(path).glob("part-*.parquet"))
    if not files:
        raise EmbedError(f"no embedding shards (part-*.parquet) in {path}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def read_manifest(path: Path) -> dict[str, Any]:
    f = Path(path) / MANIFEST_FILE
    if not f.exists():
        raise EmbedError(f"{f} is missing: {path} is not an embedding artifact")
    return json.loads(f.read_text(encoding="utf-8"))


def write_shards(table: pa.Table, out_dir: Path, shard_rows: int) -> list[str]:
    """Write an in-memory table as shards (benchmarks' stand-in vectors; the stage writes from workers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        name = f"part-{i:05d}.parquet"
        pq.write_table(table.slice(start, shard_rows), out_dir / name)
        names.append(name)
    return names


def pc_sum(col: pa.ChunkedArray) -> int:
    return int(pc.sum(col.cast(pa.int64())).as_py() or 0)


def load_embeddings(path: Path, item_ids: Sequence[str]) -> np.ndarray:
    """float32 (len(item_ids), d), row i = the vector of item_ids[i] (reads every shard into memory)."""
    table = _read_dir(Path(path), columns=["item_id", "embedding"])
    have = pd.Series(np.arange(table.num_rows), index=table.column("item_id").to_numpy(zero_copy_only=False))
    want = pd.Index([str(i) for i in item_ids])
    missing = want.difference(have.index)
    if len(missing):
        raise EmbedError(f"{len(missing)} item(s) have no embedding in {path}, e.g. {list(missing[:5])}")
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return np.ascontiguousarray(vecs[have.loc[want].to_numpy()], dtype=np.float32)


# -- with the artifact store --------------------------------------------------------------------
def fingerprint(items: pd.DataFrame, cfg: EmbedConfig) -> str:
    """Everything the output depends on: vector-shaping config, the model, every item's id and text."""
    prepared = prepare_items(items, cfg)
    h = hashlib.sha256()
    for iid, th in zip(prepared["item_id"], prepared["text_hash"], strict=True):
        h.update(f"{iid}\x1f{th}\x1e".encode())
    return _fingerprint_of_digest(h.hexdigest(), cfg)


def _fingerprint_of_digest(digest: str, cfg: EmbedConfig) -> str:
    from ltray.artifacts import fingerprint_of

    return fingerprint_of({"signature": signature(cfg), "dtype": cfg.dtype, "items": digest})


def fingerprint_of_file(path: str | Path, cfg: EmbedConfig) -> str:
    """``fingerprint`` of an items Parquet file or folder, computed by a Ray task streaming over it."""
    import ray

    try:
        _, summary = ray.remote(scan_items).options(num_returns=2, **_on_this_node()).remote(str(path), cfg)
        return _fingerprint_of_digest(ray.get(summary)["digest"], cfg)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EmbedError):
            raise e.cause from None
        raise


def run_embed(store, items: pd.DataFrame | str | Path, cfg: Config) -> dict[str, Any]:
    """Embed into ``store``'s ``embed`` stage unless it is current; reuse the committed one for carry-over.

    ``items``: a DataFrame (item_id, text) or, to keep the catalog off the driver, a Parquet file or
    folder (the data stage's ``items.parquet``).
    """
    import ray

    # Callers (CLI, jobs, pipeline) normally start or join a cluster; a bare call still works.
    if isinstance(items, pd.DataFrame):
        fp = fingerprint(items, cfg.embed)
        if store.is_current(STAGE, fp):
            return {"skipped": True, "fingerprint": fp}
    if not ray.is_initialized():
        from ltray.raysession import start_or_join

        start_or_join()  # called outside the CLI: join the machine's cluster, else a private one
    if not isinstance(items, pd.DataFrame):
        fp = fingerprint_of_file(items, cfg.embed)
        if store.is_current(STAGE, fp):
            return {"skipped": True, "fingerprint": fp}
    previous = store.stage_path(STAGE) if store.has(STAGE) else None
    with store.writing(STAGE, fingerprint=fp) as w:
        stats = embed_items(items, cfg.embed, w.path, previous_dir=previous)
        w.info.update({k: stats[k] for k in ("model", "dim", "count", "encoded", "carried_over",
                                             "truncated", "empty", "items_per_s")})
    return {"skipped": False, "fingerprint": fp, **stats}
