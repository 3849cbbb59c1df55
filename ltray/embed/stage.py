"""The catalog embedding stage on Ray: Parquet items -> Ray Data actor pool -> Parquet shards of vectors.

The only module of ``ltray.embed`` that imports Ray (what it reads and writes is in ``ltray.embed.items``).
Streamed in blocks of at most ``embed.block_rows``: the driver holds neither texts nor vectors, only
summaries and ObjectRefs to the sorted key arrays that workers filter their batches against.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from ltray.config import Config, EmbedConfig
from ltray.embed.items import (
    MANIFEST_FILE,
    STAGE,
    EmbedError,
    check_items,
    fingerprint,
    fingerprint_of_digest,
    item_keys,
    parquet_files,
    previous_keys,
    scan_items,
    signature,
    write_shards,
)
from ltray.embed.models import text_hash


# -- sizing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    num_actors: int
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    threads: int  # torch threads inside each actor


def actor_pool_spec(cluster_resources: dict[str, float], cfg: EmbedConfig, n_texts: int | None = None) -> PoolSpec:
    """One actor per GPU where there are GPUs (unless device=cpu); else one actor per whole CPU.

    GPU actors reserve one CPU each (tokenising) unless cpus_per_actor says otherwise.
    CPU actors share the cluster's CPUs evenly, so 1.5 CPUs gives one actor holding
    1.5; torch threads per actor = its whole CPUs, at least 1.
    ``n_texts`` (the texts to encode) caps the actors at one per forward pass (``batch_size``): an actor
    loads the model, which takes seconds, and one with less than a pass of texts costs more than it saves.
    """
    spec = _full_pool(cluster_resources, cfg)
    if n_texts is None:
        return spec
    return replace(spec, num_actors=max(1, min(spec.num_actors, math.ceil(n_texts / cfg.batch_size))))


def _full_pool(cluster_resources: dict[str, float], cfg: EmbedConfig) -> PoolSpec:
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


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


_KEYS_CACHE: dict[str, np.ndarray] = {}


def _keys_from(ref_box: list) -> np.ndarray:
    """The key array behind an ObjectRef (boxed in a list so that Ray does not resolve it early), cached."""
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
    t, _ = check_items(batch, fill)
    hashes = text_hash(t.column("text").to_pylist())
    t = t.append_column("text_hash", pa.array(hashes, pa.string()))
    if old_keys is not None:
        keys = item_keys(t.column("item_id").to_pylist(), hashes)
        t = t.filter(pa.array(~_in_sorted(keys, _keys_from(old_keys))))
    # Rows ordered by text length: each actor batch then holds texts of about one length, so its
    # forward passes pad as little as a loop over the whole catalog sorted by length.
    return t.take(pc.sort_indices(pc.utf8_length(t.column("text"))))


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
        from ltray.embed.encoder import TextEncoder  # torch: in the actors only, not in every read task

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


def pc_sum(col: pa.ChunkedArray) -> int:
    return int(pc.sum(col.cast(pa.int64())).as_py() or 0)


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
    # num_cpus=0: reads, filters and writes are light, and the actor pool may hold every CPU. The node-id
    # label pins them (Ray's named form; a scheduling_strategy here is a deprecated ray_remote_arg).
    return {"num_cpus": 0, "label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _get(refs):
    """``ray.get``, raising an EmbedError that a task raised as itself, not wrapped in Ray's RayTaskError."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EmbedError):
            raise e.cause from None
        raise


_scan_task = ray.remote(num_returns=2)(scan_items)


def _scan(source: Path, cfg: EmbedConfig, sig: dict[str, Any], previous_dir: Path | None):
    """Run the scans in Ray tasks; the driver gets the summaries and ObjectRefs to the key arrays."""
    new_keys, summary = _scan_task.options(**_on_this_node()).remote(str(source), cfg)
    old_keys = overlap = None
    if previous_dir is not None and Path(previous_dir).exists():
        old_keys = ray.remote(previous_keys).options(**_on_this_node()).remote(Path(previous_dir), sig)
        overlap = ray.remote(_overlap).remote(new_keys, old_keys)
    summary = _get(summary)
    carried = int(_get(overlap)) if overlap is not None else 0
    return new_keys, old_keys if carried else None, summary, carried


def _read_row_groups(files: list[Path], columns: list[str], pin: dict[str, Any], slice_rows: int | None = None,
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


def todo_blocks(source: Path, cfg: EmbedConfig, block_rows: int, old_keys: np.ndarray | None,
                pin: dict[str, Any]):
    """The catalog rows still to encode, prepared, as blocks of at most block_rows (one per read slice)."""
    # batch_size=None: one call per read slice. A row count here would fuse with the read and bundle
    # that many *slices* into one task, i.e. one block for the whole catalog.
    return (_read_row_groups(parquet_files(source), ["item_id", "text"], pin, slice_rows=block_rows,
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
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = None
    if isinstance(items, pd.DataFrame):  # to Parquet (one streaming path); blank text stays, for the scan
        scratch = out_dir / "_input"
        write_shards(check_items(items, None)[0], scratch, cfg.block_rows)
    source = scratch or Path(items)
    try:
        stats = _embed_parquet(source, cfg, out_dir, previous_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats


def _embed_parquet(source: Path, cfg: EmbedConfig, out_dir: Path, previous_dir: Path | None) -> dict:
    sig = signature(cfg)
    new_keys, old_keys, summary, carried = _scan(source, cfg, sig, previous_dir)
    count = summary["count"]
    if count == 0:
        raise EmbedError("no items to embed")
    todo_n = count - carried
    spec = actor_pool_spec(ray.cluster_resources(), cfg, n_texts=todo_n)
    pin = _on_this_node()
    # Enough blocks to keep every actor busy, none bigger than block_rows.
    block_rows = max(1, min(cfg.block_rows, math.ceil(max(todo_n, 1) / (spec.num_actors * cfg.blocks_per_actor))))
    parts = []
    if todo_n:
        todo = (todo_blocks(source, cfg, block_rows, old_keys, pin)
                .map_batches(_EmbedBatch, fn_constructor_kwargs={"cfg": cfg.model_dump(), "threads": spec.threads},
                             batch_size=actor_batch_rows(block_rows, cfg),
                             batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=spec.num_actors),
                             num_cpus=spec.num_cpus_per_actor, num_gpus=spec.num_gpus_per_actor))
        parts.append(todo)
    if carried:
        parts.append(_read_row_groups(parquet_files(previous_dir, "part-*.parquet"),
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


# -- with the artifact store --------------------------------------------------------------------
def fingerprint_of_file(path: str | Path, cfg: EmbedConfig) -> str:
    """``fingerprint`` of an items Parquet file or folder, computed by a Ray task streaming over it."""
    _, summary = _scan_task.options(**_on_this_node()).remote(str(path), cfg)
    return fingerprint_of_digest(_get(summary)["digest"], cfg)


def run_embed(store, items: pd.DataFrame | str | Path, cfg: Config) -> dict[str, Any]:
    """Embed into ``store``'s ``embed`` stage unless it is current; reuse the committed one for carry-over.

    ``items``: a DataFrame (item_id, text) or, to keep the catalog off the driver, a Parquet file or
    folder (the data stage's ``items.parquet``).
    """
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
