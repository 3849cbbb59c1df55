"""The catalog embedding stage: items -> Ray Data actor pool -> Parquet shards of vectors.

The only module of ``ltray.embed`` that imports Ray (lazily, inside the
functions that run it). Sizing (``actor_pool_spec``), carry-over and the
output format are plain functions, testable without a cluster.

Output folder::

    part-00000.parquet ...   item_id (string), embedding (fixed_size_list<float32>[d]),
                             text_hash (string), model_id (string); rows in input order
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

STAGE = "embed"
MANIFEST_FILE = "embed.json"
# What must match, besides text and model, for an old vector to stand for a new one.
# dtype is left out on purpose: bf16/fp16 vectors keep cosine >= 0.999 to fp32 ones.
SIGNATURE_FIELDS = ("pooling", "max_length")


class EmbedError(ValueError):
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


# -- the Ray Data actor -------------------------------------------------------------------------
class _EmbedBatch:
    """Ray Data callable class: loads the encoder once per actor, encodes each batch."""

    def __init__(self, cfg: dict[str, Any], threads: int):
        c = EmbedConfig.model_validate(cfg)
        self.encoder = TextEncoder(c.model, pooling=c.pooling, max_length=c.max_length, dtype=c.dtype,
                                   device=c.device, threads=threads, batch_size=c.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()  # wall clock: comparable across actors on one machine
        cpu0 = time.process_time()
        enc = self.encoder.encode_detailed(batch.column("text").to_pylist())
        cpu_per_row = (time.process_time() - cpu0) / max(batch.num_rows, 1)
        d = enc.vectors.shape[1]
        flat = pa.array(enc.vectors.reshape(-1), type=pa.float32())
        return pa.table({
            "item_id": batch.column("item_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, d),
            "text_hash": batch.column("text_hash"),
            "truncated": pa.array(enc.truncated),
            "tokens": pa.array(enc.tokens, type=pa.int64()),
            "batch_start": pa.array(np.full(batch.num_rows, started)),
            "batch_end": pa.array(np.full(batch.num_rows, time.time())),
            "cpu_s": pa.array(np.full(batch.num_rows, cpu_per_row)),
        })


def _chunks(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(frame), num=min(n, len(frame)) + 1, dtype=int)
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def encode_with_ray(todo: pd.DataFrame, cfg: EmbedConfig,
                    resources: dict[str, float] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Run the actor pool over ``todo`` (item_id, text, text_hash); rows come back in any order."""
    import ray

    spec = actor_pool_spec(resources or ray.cluster_resources(), cfg)
    # Neighbours in length share a block, so each batch pads little (chars stand in for tokens).
    by_len = todo.iloc[np.argsort(todo["text"].str.len().to_numpy(), kind="stable")]
    blocks = _chunks(by_len[["item_id", "text", "text_hash"]], spec.num_actors * cfg.blocks_per_actor)
    ds = ray.data.from_pandas(blocks).map_batches(
        _EmbedBatch,
        fn_constructor_kwargs={"cfg": cfg.model_dump(), "threads": spec.threads},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.num_actors),
        num_cpus=spec.num_cpus_per_actor,
        num_gpus=spec.num_gpus_per_actor,
    )
    launched = time.time()
    table = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    finished = time.time()
    first = pc.min(table.column("batch_start")).as_py()
    last = pc.max(table.column("batch_end")).as_py()
    return table, {"pool": asdict(spec), "seconds": finished - launched,
                   # from the first batch any actor started to the last one done: start-up excluded
                   "encode_window_s": last - first, "startup_s": first - launched,
                   # CPU seconds the actors spent encoding: a throughput figure that a shared machine skews less
                   "actor_cpu_s": pc.sum(table.column("cpu_s")).as_py()}


# -- previous artifacts -------------------------------------------------------------------------
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


def carry_over(prepared: pd.DataFrame, previous_dir: Path | None, sig: dict[str, Any]
               ) -> tuple[pa.Table | None, np.ndarray]:
    """Rows of the previous artifact still valid for ``prepared``, and a mask of items to encode."""
    need = np.ones(len(prepared), dtype=bool)
    if previous_dir is None or not Path(previous_dir).exists():
        return None, need
    old_sig = read_manifest(previous_dir).get("signature", {})
    if any(old_sig.get(k) != v for k, v in sig.items()):
        return None, need
    old = _read_dir(previous_dir)
    old_df = pd.DataFrame({"item_id": old.column("item_id").to_numpy(zero_copy_only=False),
                           "text_hash": old.column("text_hash").to_numpy(zero_copy_only=False),
                           "model_id": old.column("model_id").to_numpy(zero_copy_only=False),
                           "row": np.arange(old.num_rows)})
    merged = prepared[["item_id", "text_hash"]].merge(old_df, on="item_id", how="left",
                                                      suffixes=("", "_old"))
    keep = ((merged["text_hash_old"] == merged["text_hash"]) & (merged["model_id"] == sig["model_id"])
            ).fillna(False).to_numpy(dtype=bool)
    need = ~keep
    rows = merged.loc[keep, "row"].to_numpy(dtype=np.int64)
    return old.take(pa.array(rows)).select(["item_id", "embedding", "text_hash"]), need


# -- the stage ----------------------------------------------------------------------------------
def _normalise(table: pa.Table) -> pa.Table:
    """item_id, embedding (fixed_size_list<float32>), text_hash: one schema whatever produced the rows.

    Ray hands back large_string and may name the list field differently; concat needs them equal.
    """
    col = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        dim, flat = col.type.list_size, col.flatten()
    else:  # a variable-size list: every row has the same length
        flat = col.flatten()
        dim = len(flat) // max(len(col), 1)
    embedding = pa.FixedSizeListArray.from_arrays(flat.cast(pa.float32()), dim)
    return pa.table({"item_id": table.column("item_id").cast(pa.string()),
                     "embedding": embedding,
                     "text_hash": table.column("text_hash").cast(pa.string())})


def write_shards(table: pa.Table, out_dir: Path, shard_rows: int) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        name = f"part-{i:05d}.parquet"
        pq.write_table(table.slice(start, shard_rows), out_dir / name)
        names.append(name)
    return names


def embed_items(items: pd.DataFrame, cfg: EmbedConfig, out_dir: Path,
                previous_dir: Path | None = None) -> dict[str, Any]:
    """Embed ``items`` (item_id, text) into ``out_dir``; unchanged items are copied from ``previous_dir``.

    Ray must be initialised by the caller. Returns the stats also written to ``embed.json``.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    prepared = prepare_items(items, cfg)
    sig = signature(cfg)
    kept, need = carry_over(prepared, previous_dir, sig)
    todo = prepared.loc[need]
    pieces, ray_info, truncated, tokens = [], {}, 0, 0
    if kept is not None and kept.num_rows:
        pieces.append(_normalise(kept))
    if len(todo):
        encoded, ray_info = encode_with_ray(todo, cfg)
        truncated = int(pc_sum(encoded.column("truncated")))
        tokens = int(pc_sum(encoded.column("tokens")))
        pieces.append(_normalise(encoded))
    if not pieces:
        raise EmbedError("no items to embed")
    table = pa.concat_tables(pieces)
    dim = table.schema.field("embedding").type.list_size
    # Rows in input (catalog) order: downstream stages index vectors by catalog row.
    pos = pd.Series(np.arange(len(prepared)), index=prepared["item_id"].to_numpy())
    order = np.argsort(pos.loc[table.column("item_id").to_numpy(zero_copy_only=False)].to_numpy())
    table = table.take(pa.array(order))
    table = pa.table({
        "item_id": table.column("item_id").cast(pa.string()),
        "embedding": table.column("embedding"),
        "text_hash": table.column("text_hash").cast(pa.string()),
        "model_id": pa.array([sig["model_id"]] * table.num_rows, type=pa.string()),
    })
    shards = write_shards(table, out_dir, cfg.shard_rows)
    seconds = time.perf_counter() - t_start
    encode_s = ray_info.get("seconds", 0.0)
    window_s = ray_info.get("encode_window_s", 0.0)
    stats = {
        "model": sig["model_id"], "dim": int(dim), "count": table.num_rows, "encoded": int(len(todo)),
        "carried_over": int(kept.num_rows if kept is not None else 0), "truncated": truncated,
        "empty": prepared.attrs["empty"], "tokens_encoded": tokens,
        "items_per_s": round(len(todo) / encode_s, 2) if encode_s > 0 else None,
        "items_per_s_excl_startup": round(len(todo) / window_s, 2) if window_s > 0 else None,
        "seconds": round(seconds, 3), "encode_seconds": round(encode_s, 3),
        "startup_seconds": round(ray_info.get("startup_s", 0.0), 3),
        "actor_cpu_seconds": round(ray_info.get("actor_cpu_s", 0.0), 3),
        "pool": ray_info.get("pool"), "dtype": cfg.dtype, "device": cfg.device,
        "signature": sig, "shards": shards,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats


def pc_sum(col: pa.ChunkedArray) -> int:
    return int(pc.sum(col.cast(pa.int64())).as_py() or 0)


def load_embeddings(path: Path, item_ids: Sequence[str]) -> np.ndarray:
    """float32 (len(item_ids), d), row i = the vector of item_ids[i]."""
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
    from ltray.artifacts import fingerprint_of

    return fingerprint_of({"signature": signature(cfg), "dtype": cfg.dtype, "items": h.hexdigest()})


def run_embed(store, items: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """Embed into ``store``'s ``embed`` stage unless it is current; reuse the committed one for carry-over."""
    import ray

    fp = fingerprint(items, cfg.embed)
    if store.is_current(STAGE, fp):
        return {"skipped": True, "fingerprint": fp}
    # Callers (CLI, jobs, pipeline) normally start or join a cluster; a bare call still works.
    if not ray.is_initialized():
        ray.init()
    previous = store.stage_path(STAGE) if store.has(STAGE) else None
    with store.writing(STAGE, fingerprint=fp) as w:
        stats = embed_items(items, cfg.embed, w.path, previous_dir=previous)
        w.info.update({k: stats[k] for k in ("model", "dim", "count", "encoded", "carried_over",
                                             "truncated", "empty", "items_per_s")})
    return {"skipped": False, "fingerprint": fp, **stats}
