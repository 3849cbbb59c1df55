"""The Ray Data embedding stage: equality with the plain encoder, output format, incremental runs, policy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltray.artifacts import ArtifactStore
from ltray.config import Config, EmbedConfig
from ltray.embed.encoder import TextEncoder
from ltray.embed.items import EmbedError, item_keys, load_embeddings, prepare_items, previous_keys, signature
from ltray.embed.stage import (
    PoolSpec,
    actor_batch_rows,
    actor_pool_spec,
    embed_items,
    length_stratum,
    run_embed,
    todo_blocks,
)

N_ITEMS = 120
MAX_LEN = 32
FILL = "an item with no description"


def _cfg(**kw) -> EmbedConfig:
    base = {"dtype": "fp32", "device": "cpu", "max_length": MAX_LEN, "batch_size": 16,
            "blocks_per_actor": 2, "empty_text_fill": FILL}
    return EmbedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def items(small_synthetic) -> pd.DataFrame:
    df = small_synthetic.items[["item_id", "text"]].iloc[:N_ITEMS].reset_index(drop=True).copy()
    df.loc[3, "text"] = ""
    df.loc[4, "text"] = "   "
    df.loc[5, "text"] = "an overlong text " * 40  # far past MAX_LEN tokens
    return df


@pytest.fixture(scope="module")
def plain() -> TextEncoder:
    c = _cfg()
    return TextEncoder(c.model, pooling=c.pooling, max_length=c.max_length, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def first_run(ray_cluster, items, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "v1"
    stats = embed_items(items, _cfg(), out)
    return out, stats


# -- pure sizing --------------------------------------------------------------------------------
def test_pool_two_cpus_no_gpu():
    assert actor_pool_spec({"CPU": 2.0}, EmbedConfig()) == PoolSpec(2, 1.0, 0.0, 1)


def test_pool_four_gpus():
    spec = actor_pool_spec({"CPU": 32.0, "GPU": 4.0}, EmbedConfig())
    assert (spec.num_actors, spec.num_gpus_per_actor, spec.num_cpus_per_actor) == (4, 1.0, 1.0)
    # device=cpu ignores the GPUs: one actor per CPU
    assert actor_pool_spec({"CPU": 32.0, "GPU": 4.0}, EmbedConfig(device="cpu")).num_actors == 32


def test_pool_fractional_cpus():
    assert actor_pool_spec({"CPU": 1.5}, EmbedConfig()) == PoolSpec(1, 1.5, 0.0, 1)
    assert actor_pool_spec({"CPU": 0.5}, EmbedConfig()) == PoolSpec(1, 0.5, 0.0, 1)
    assert actor_pool_spec({"CPU": 3.5}, EmbedConfig()) == PoolSpec(3, 3.5 / 3, 0.0, 1)


def test_pool_overrides():
    assert actor_pool_spec({"CPU": 8.0}, EmbedConfig(num_actors=2)) == PoolSpec(2, 4.0, 0.0, 4)
    assert actor_pool_spec({"CPU": 8.0}, EmbedConfig(cpus_per_actor=4)) == PoolSpec(2, 4.0, 0.0, 4)
    assert actor_pool_spec({"CPU": 16.0, "GPU": 2.0}, EmbedConfig(num_actors=4)).num_gpus_per_actor == 0.5
    with pytest.raises(EmbedError, match="no GPU"):
        actor_pool_spec({"CPU": 2.0}, EmbedConfig(device="cuda"))


# -- input policy (pure) ------------------------------------------------------------------------
def test_pool_has_no_more_actors_than_forward_passes_of_texts():
    cfg = EmbedConfig(batch_size=64)
    assert actor_pool_spec({"CPU": 4.0}, cfg, n_texts=1) == PoolSpec(1, 1.0, 0.0, 1)  # same CPUs per actor
    assert actor_pool_spec({"CPU": 4.0}, cfg, n_texts=130).num_actors == 3
    assert actor_pool_spec({"CPU": 4.0}, cfg, n_texts=10_000) == actor_pool_spec({"CPU": 4.0}, cfg)


def test_empty_text_error_policy_names_the_items(items):
    with pytest.raises(EmbedError, match=r"2 item\(s\) have empty text") as e:
        prepare_items(items, _cfg(empty_text="error"))
    assert repr(items.loc[3, "item_id"]) in str(e.value) and repr(items.loc[4, "item_id"]) in str(e.value)


def test_empty_text_fill_policy(items):
    prepared = prepare_items(items, _cfg())
    assert prepared.loc[[3, 4], "text"].tolist() == [FILL, FILL]
    assert prepared.attrs["empty"] == 2


# -- the Ray Data stage -------------------------------------------------------------------------
def test_stage_equals_plain_encoder(first_run, items, plain):
    out, stats = first_run
    got = load_embeddings(out, items["item_id"].tolist())
    want = plain.encode(prepare_items(items, _cfg())["text"].tolist())
    assert got.shape == (N_ITEMS, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the empty items got the fill text's vector
    np.testing.assert_allclose(got[3], plain.encode([FILL])[0], atol=1e-5)


def test_output_schema_and_manifest(first_run, items, plain):
    out, stats = first_run
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.schema.field("item_id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.schema.field("text_hash").type == pa.string()
    assert table.schema.field("model_id").type == pa.string()
    # Every item once; rows are in text-length order within a block (fewer pads), found by id.
    ids = table.column("item_id").to_pylist()
    assert sorted(ids) == sorted(items["item_id"].tolist()) and len(set(ids)) == len(ids)
    assert set(table.column("model_id").to_pylist()) == {plain.model_id}
    manifest = json.loads((out / "embed.json").read_text())
    assert manifest == stats
    assert (manifest["model"], manifest["dim"], manifest["count"]) == (plain.model_id, 384, N_ITEMS)
    assert (manifest["encoded"], manifest["carried_over"]) == (N_ITEMS, 0)
    texts = prepare_items(items, _cfg())["text"].tolist()
    assert manifest["truncated"] == plain.count_truncated(texts) >= 1
    assert plain.count_truncated(texts[5:6]) == 1  # the overlong item is among them
    assert manifest["empty"] == 2
    assert manifest["items_per_s"] > 0 and manifest["seconds"] > 0
    assert manifest["pool"]["num_actors"] == 2


def test_incremental_encodes_only_changed_and_new(first_run, items, plain, tmp_path):
    prev, _ = first_run
    changed = items.copy()
    changed_rows = [10, 20, 30, 40, 50, 60, 70]
    for r in changed_rows:
        changed.loc[r, "text"] = f"rewritten description number {r}"
    dropped = [100, 101, 102]
    changed = changed.drop(index=dropped)
    new = pd.DataFrame({"item_id": [f"new-{i}" for i in range(5)],
                        "text": [f"a brand new item {i}" for i in range(5)]})
    changed = pd.concat([changed, new], ignore_index=True)

    stats = embed_items(changed, _cfg(), tmp_path / "v2", previous_dir=prev)
    assert stats["encoded"] == len(changed_rows) + len(new)
    assert stats["carried_over"] == N_ITEMS - len(changed_rows) - len(dropped)
    assert stats["count"] == len(changed)
    got = load_embeddings(tmp_path / "v2", changed["item_id"].tolist())
    np.testing.assert_allclose(got, plain.encode(prepare_items(changed, _cfg())["text"].tolist()), atol=1e-5)
    # carried rows are the previous bytes, untouched
    keep = items["item_id"].drop(index=changed_rows + dropped).tolist()
    np.testing.assert_array_equal(load_embeddings(tmp_path / "v2", keep), load_embeddings(prev, keep))

    # nothing changed since: nothing encoded, no Ray run
    again = embed_items(changed, _cfg(), tmp_path / "v3", previous_dir=tmp_path / "v2")
    assert (again["encoded"], again["carried_over"]) == (0, len(changed))

    # a different pooling or max_length makes every old vector stale (checked without a Ray run)
    for other in (_cfg(pooling="cls"), _cfg(max_length=MAX_LEN * 2)):
        assert previous_keys(tmp_path / "v2", signature(other)) is None
    prepared = prepare_items(changed, _cfg())
    kept = previous_keys(tmp_path / "v2", signature(_cfg(dtype="bf16")))  # dtype alone keeps them
    np.testing.assert_array_equal(kept, np.sort(item_keys(prepared["item_id"].tolist(),
                                                          prepared["text_hash"].tolist())))


def test_load_embeddings_names_missing_ids(first_run):
    out, _ = first_run
    with pytest.raises(EmbedError, match="no-such-item"):
        load_embeddings(out, ["no-such-item"])


def test_run_embed_with_artifact_store(ray_cluster, items, tmp_path):
    store = ArtifactStore(tmp_path / "art")
    cfg = Config(embed=_cfg())
    small = items.iloc[:40]
    first = run_embed(store, small, cfg)
    assert first["skipped"] is False and first["encoded"] == 40
    info = store.stage_info("embed")
    assert info["count"] == 40 and info["encoded"] == 40 and info["fingerprint"] == first["fingerprint"]
    assert run_embed(store, small, cfg) == {"skipped": True, "fingerprint": first["fingerprint"]}

    edited = small.copy()
    edited.loc[7, "text"] = "something else entirely"
    third = run_embed(store, edited, cfg)
    assert (third["encoded"], third["carried_over"]) == (1, 39)
    assert store.stage_info("embed")["encoded"] == 1
    vecs = load_embeddings(store.stage_path("embed"), edited["item_id"].tolist())
    assert vecs.shape == (40, 384)


def test_parquet_input_streams_with_the_same_fingerprint(ray_cluster, items, tmp_path):
    """A Parquet catalog (what the pipeline passes) and the same DataFrame are one input to the stage."""
    small = items.iloc[:30].reset_index(drop=True)
    path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pandas(small, preserve_index=False), path, row_group_size=7)
    store = ArtifactStore(tmp_path / "art")
    cfg = Config(embed=_cfg())
    first = run_embed(store, path, cfg)
    assert first["skipped"] is False and (first["count"], first["encoded"]) == (30, 30)
    assert run_embed(store, small, cfg) == {"skipped": True, "fingerprint": first["fingerprint"]}
    duplicated = pd.concat([small, small.iloc[:1]], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(duplicated, preserve_index=False), tmp_path / "dup.parquet")
    with pytest.raises(EmbedError, match="duplicate item_id"):
        run_embed(store, tmp_path / "dup.parquet", cfg)


def test_actor_calls_cut_a_block_evenly():
    cfg = _cfg(batch_size=64, sort_batches=16)  # at most 1024 rows per call
    assert actor_batch_rows(1218, cfg) == 609  # two calls of 609, not 1024 + 194
    assert actor_batch_rows(1024, cfg) == 1024 and actor_batch_rows(300, cfg) == 300
    assert actor_batch_rows(20_000, cfg) == 1000


def test_one_row_group_is_cut_into_a_block_per_actor_share(ray_cluster, items, tmp_path):
    """A catalog in one Parquet row group still reaches the actor pool as many blocks: a block goes to one
    actor whole, and one block for the catalog left the second actor idle (0.51x the plain loop)."""
    from ltray.embed.stage import _on_this_node

    path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pandas(items, preserve_index=False), path)  # one row group
    assert pq.ParquetFile(path).num_row_groups == 1
    ds = todo_blocks(path, _cfg(), 25, None, _on_this_node()).materialize()
    assert ds.num_blocks() == -(-len(items) // 25)
    got = ds.to_pandas()
    assert sorted(got["item_id"]) == sorted(items["item_id"]) and (got.groupby("item_id").size() == 1).all()


@pytest.mark.parametrize("n, parts", [(10, 3), (9742, 8), (5, 5), (3, 1)])
def test_length_strata_cover_every_row_once_longest_first(n, parts):
    rng = np.random.default_rng(n)
    texts = pa.array(["x" * int(k) for k in rng.integers(0, 80, n)] [:-1] + [None])
    strata = [length_stratum(texts, j, parts) for j in range(parts)]
    np.testing.assert_array_equal(np.sort(np.concatenate(strata)), np.arange(n))
    lengths = np.array([len(t or "") for t in texts.to_pylist()])
    for longer, shorter in zip(strata, strata[1:], strict=False):
        assert lengths[longer].min() >= lengths[shorter].max()
    assert max(map(len, strata)) - min(map(len, strata)) <= 1
