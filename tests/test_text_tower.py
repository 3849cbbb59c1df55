"""The text tower: BERT inside the CTR model (top layers or LoRA), trained through Ray Train, exported
as a Hugging Face folder that TextEncoder and the Ray Data embedding stage load. Real MiniLM weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rank_helpers import build_case, sample_tables
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from ltray.config import EmbedConfig, RankConfig
from ltray.embed.encoder import TextEncoder
from ltray.rank import FeatureBuilder
from ltray.rank.model import CTRModel, bce_loss, load_model
from ltray.rank.text_tower import ItemTokens, LoRALinear, load_encoder, load_tokenizer, merge_lora
from ltray.rank.train import TEXT_ENCODER_DIR, TOWER_ITEMS_FILE, TrainError, train_ctr, write_samples

MAX_LEN = 32
N_TEXTS = 24
SPEC = {"n_dense": 6, "id_buckets": 64}
FROZEN_MODEL_KEYS = {"n_dense", "id_buckets", "id_dim", "cross_layers", "hidden"}


@pytest.fixture(autouse=True)
def _same_torch_state_whatever_ran_before():
    """Each test starts from the same torch state, alone or after the rest of the suite: the global RNG seeded
    (the LoRA adapters and the projections are drawn from it) and torch's thread count put back afterwards."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts(small_synthetic) -> list[str]:
    return small_synthetic.items["text"].iloc[:N_TEXTS].tolist()


@pytest.fixture(scope="module")
def tokens(texts) -> ItemTokens:
    return ItemTokens.from_texts(texts, load_tokenizer(None), MAX_LEN)


def _tower_cfg(mode: str, **kw) -> RankConfig:
    return RankConfig(text_tower=mode, text_dim=8, id_buckets=SPEC["id_buckets"], text_tower_max_length=MAX_LEN,
                      text_tower_lr=5e-3, **kw)


def _train_steps(model: CTRModel, cfg: RankConfig, tokens: ItemTokens, steps: int = 3) -> None:
    """A few plain torch steps on made-up clicks: enough to move every trainable weight."""
    gen = torch.Generator().manual_seed(0)
    opts = model.optimizers(cfg.lr, cfg.weight_decay, tower_lr=cfg.text_tower_lr)
    model.train()
    for _ in range(steps):
        item_idx = torch.randint(0, len(tokens.lengths), (16,), generator=gen)
        ids, mask, rows = tokens.batch(item_idx.numpy())
        logits = model(torch.randint(0, 64, (16,), generator=gen), item_idx, torch.randn(16, 6, generator=gen),
                       ids, mask, rows)
        loss = bce_loss(logits, (item_idx % 2).float())
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
    model.eval()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_top_layers_trains_only_the_top_layers(tokens):
    cfg = _tower_cfg("top_layers", text_tower_layers=2)
    model = CTRModel.for_features(SPEC, cfg)
    before = _snapshot(model.text_tower.encoder)
    _train_steps(model, cfg, tokens)
    after = model.text_tower.encoder.state_dict()
    n_layers = model.text_tower.encoder.config.num_hidden_layers
    top = tuple(f"encoder.layer.{i}." for i in range(n_layers - 2, n_layers))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, p in model.text_tower.encoder.named_parameters() if k.startswith(top)}
    assert trainable and moved == trainable, sorted(moved ^ trainable)[:5]
    assert not any(k.startswith("embeddings.") for k in moved)


def test_lora_trains_only_adapters_and_the_merge_is_exact(tokens, texts, tmp_path):
    cfg = _tower_cfg("lora", lora_rank=4, lora_alpha=8.0)
    model = CTRModel.for_features(SPEC, cfg)
    tower = model.text_tower
    n_layers = tower.encoder.config.num_hidden_layers
    adapters = [m for m in tower.encoder.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 2 * n_layers  # query and value of every layer
    assert {n.rsplit(".", 1)[1] for n, p in tower.encoder.named_parameters() if p.requires_grad} == {
        "lora_A", "lora_B"}
    before = _snapshot(tower.encoder)
    _train_steps(model, cfg, tokens)
    after = tower.encoder.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith(("lora_A", "lora_B")) for k in moved), sorted(moved)[:5]

    ids, mask, _ = tokens.batch(np.arange(len(texts)))
    with torch.inference_mode():
        adapted = tower.pooled(ids, mask)
        merged = merge_lora(tower.encoder)(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        merged = torch.nn.functional.normalize((merged * m).sum(1) / m.sum(1), dim=1)
    assert torch.allclose(merged, adapted, atol=1e-5)
    # The exported folder, loaded by TextEncoder, gives the adapted model's vectors.
    folder = tower.export(tmp_path / "enc")
    exported = TextEncoder(str(folder), max_length=MAX_LEN, dtype="fp32", device="cpu").encode(texts)
    np.testing.assert_allclose(exported, adapted.numpy(), atol=1e-5)


def test_exported_encoder_differs_from_the_base_model(tokens, texts, tmp_path):
    cfg = _tower_cfg("lora")
    model = CTRModel.for_features(SPEC, cfg)
    _train_steps(model, cfg, tokens)
    folder = model.text_tower.export(tmp_path / "enc")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    tuned = TextEncoder(str(folder), max_length=MAX_LEN, dtype="fp32", device="cpu")
    base = TextEncoder(None, max_length=MAX_LEN, dtype="fp32", device="cpu")
    v_tuned, v_base = tuned.encode(texts), base.encode(texts)
    assert np.allclose(np.linalg.norm(v_tuned, axis=1), 1.0, atol=1e-5)
    assert np.abs(v_tuned - v_base).max() > 1e-3
    assert tuned.model_id != base.model_id  # the embedding stage re-embeds rather than reusing old vectors
    # Same architecture and vocabulary as the base: a drop-in value for embed.model.
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == base.dim


def test_frozen_is_unchanged(small_synthetic, tmp_path):
    frozen = RankConfig(id_buckets=256, text_dim=8)
    assert frozen.text_tower == "frozen"
    model = CTRModel.for_features(SPEC, frozen)
    assert set(model.config) == FROZEN_MODEL_KEYS and model.text_tower is None
    assert not any("text_tower" in k for k in model.state_dict())
    opts = model.optimizers(frozen.lr, frozen.weight_decay, tower_lr=frozen.text_tower_lr)
    assert len(opts) == 1 and sum(len(g["params"]) for g in opts[0].param_groups) == len(list(model.parameters()))
    # The feature spec does not depend on the tower (the tower comes beside the features, not instead).
    ctx, train_pos, val_pos, cands, history = build_case(small_synthetic, context_fraction=0.6)
    train, _ = sample_tables(ctx, train_pos, val_pos, cands, history, frozen)
    items = np.flatnonzero(ctx.item_pop > 0)
    spec_frozen = FeatureBuilder(frozen).fit(ctx, items, table=train).spec()
    spec_lora = FeatureBuilder(frozen.model_copy(update={"text_tower": "lora"})).fit(ctx, items, table=train).spec()
    assert spec_frozen == spec_lora
    # Frozen samples carry no item column.
    write_samples(FeatureBuilder(frozen).fit(ctx, items, table=train), ctx, train.iloc[:50], str(tmp_path / "s"))
    cols = pq.read_table(tmp_path / "s").column_names
    assert cols == ["user_hash", "item_hash", "dense", "label"]


def test_tower_model_refuses_to_score_without_tokens():
    model = CTRModel.for_features(SPEC, _tower_cfg("lora"))
    with pytest.raises(ValueError, match="text tower"):
        model(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, 6))


@pytest.fixture(scope="module")
def lora_run(small_synthetic, ray_cluster, tmp_path_factory):
    """Two Ray Train workers, one epoch, a few hundred samples, text_tower=lora."""
    cfg = RankConfig(text_tower="lora", text_tower_max_length=MAX_LEN, num_workers=2, epochs=1, batch_size=64,
                     id_buckets=1024, text_dim=8, use_gpu="never", text_tower_lr=1e-3)
    ctx, train_pos, val_pos, cands, history = build_case(small_synthetic, context_fraction=0.6)
    train, val = sample_tables(ctx, train_pos, val_pos, cands, history, cfg)
    train, val = train.iloc[:400], val.sample(200, random_state=0)
    out = tmp_path_factory.mktemp("tower_rank")
    storage = tmp_path_factory.mktemp("tower_storage")
    texts = small_synthetic.items["text"].tolist()
    with pytest.raises(TrainError, match="item texts"):
        train_ctr(train, val, ctx, FeatureBuilder(cfg), cfg, out, str(storage))
    builder = FeatureBuilder(cfg)
    metrics = train_ctr(train, val, ctx, builder, cfg, out, str(storage), item_texts=texts)
    return {"metrics": metrics, "out": Path(out), "texts": texts, "cfg": cfg, "builder": builder, "ctx": ctx,
            "val": val}


def test_torch_trainer_lora_run_reports_val_auc_and_exports(lora_run):
    m, out = lora_run["metrics"], lora_run["out"]
    assert m["epochs_run"] == 1 and {h["world_size"] for h in m["history"]} == {2}
    assert 0.0 < m["val_auc"] < 1.0 and np.isfinite(m["val_logloss"])
    assert m["text_tower"] == "lora" and Path(m["text_encoder"]) == out / TEXT_ENCODER_DIR
    # Only the adapters moved inside the encoder: the checkpoint's base weights are MiniLM's, bit for bit.
    model, _ = load_model(out / "model.safetensors")
    base = load_encoder(None)[0].state_dict()
    saved = load_file(str(out / "model.safetensors"))
    prefix = "text_tower.encoder."
    for k, v in saved.items():
        if not k.startswith(prefix) or k.endswith(("lora_A", "lora_B")):
            continue
        name = k[len(prefix):].replace(".base.", ".")
        assert torch.equal(v, base[name]), k
    assert any(saved[k].abs().max() > 0 for k in saved if k.endswith("lora_B"))
    assert model.config["text_tower"]["mode"] == "lora"
    # The tower's output per catalog item, saved beside the weights, scores validation without tokens
    # and gives the AUC the workers reported.
    items = np.load(out / TOWER_ITEMS_FILE, allow_pickle=False)
    ctx, val = lora_run["ctx"], lora_run["val"]
    assert items.shape == (ctx.n_items, lora_run["cfg"].text_dim)
    feats = lora_run["builder"].build(ctx, val)
    with torch.inference_mode():
        logits = model(*(torch.from_numpy(np.asarray(feats[k])) for k in ("user_hash", "item_hash", "dense")),
                       item_text=torch.from_numpy(items[val["item_idx"].to_numpy()]))
    assert roc_auc_score(val["label"], logits.numpy()) == pytest.approx(m["val_auc"], abs=1e-5)


def test_ray_data_stage_re_embeds_with_the_exported_encoder(lora_run, small_synthetic, tmp_path):
    from ltray.embed.items import load_embeddings
    from ltray.embed.stage import embed_items

    folder = lora_run["metrics"]["text_encoder"]
    items = small_synthetic.items[["item_id", "text"]].iloc[:40].reset_index(drop=True)
    # One actor on one CPU: the stage's reads need the other CPU of the 2-CPU test cluster.
    cfg = EmbedConfig(model=folder, dtype="fp32", device="cpu", max_length=MAX_LEN, batch_size=16,
                      num_actors=1, cpus_per_actor=1.0)
    embed_items(items, cfg, tmp_path / "emb")
    vectors = load_embeddings(tmp_path / "emb", items["item_id"].astype(str).tolist())
    direct = TextEncoder(folder, max_length=MAX_LEN, dtype="fp32", device="cpu").encode(items["text"].tolist())
    base = TextEncoder(None, max_length=MAX_LEN, dtype="fp32", device="cpu").encode(items["text"].tolist())
    np.testing.assert_allclose(vectors, direct, atol=1e-5)
    assert np.abs(vectors - base).max() > 1e-4


def test_tower_optimizer_state_round_trips_for_resume(tokens, tmp_path):
    """A restarted worker reloads the tower's optimizers (two Adam groups + SparseAdam) exactly."""
    from ltray.rank.train import _load_optimizers, _save_optimizers

    cfg = _tower_cfg("top_layers")
    model = CTRModel.for_features(SPEC, cfg, sparse_embeddings=True)
    opts = model.optimizers(cfg.lr, cfg.weight_decay, tower_lr=cfg.text_tower_lr)
    model.train()
    ids, mask, rows = tokens.batch(np.arange(4))
    bce_loss(model(torch.arange(4), torch.arange(4), torch.ones(4, 6), ids, mask, rows), torch.ones(4)).backward()
    for o in opts:
        o.step()
    saved = _save_optimizers(opts, tmp_path / "opt.safetensors")
    again = model.optimizers(cfg.lr, cfg.weight_decay, tower_lr=cfg.text_tower_lr)
    _load_optimizers(again, tmp_path / "opt.safetensors", json.loads(json.dumps(saved)))
    assert [g["lr"] for g in again[0].param_groups] == [cfg.lr, cfg.text_tower_lr]
    for a, b in zip(opts, again, strict=True):
        sa, sb = a.state_dict()["state"], b.state_dict()["state"]
        assert sa.keys() == sb.keys() and sa
        for k in sa:
            for name, v in sa[k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[k][name])), (k, name)


def test_cli_export_encoder_needs_a_tower(tmp_path):
    from typer.testing import CliRunner

    from ltray.cli import app

    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--artifacts", str(tmp_path / "run"),
                                      "--export-encoder", str(tmp_path / "enc")])
    assert result.exit_code == 2
    assert "rank.text_tower=lora" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "enc").exists()


def test_ranker_loads_a_tower_checkpoint_and_scores_with_its_item_outputs(lora_run):
    from ltray.rank.ranker import Ranker

    ranker = Ranker.load(lora_run["out"])
    probs = ranker.score(lora_run["ctx"], lora_run["val"])
    assert roc_auc_score(lora_run["val"]["label"], probs) == pytest.approx(lora_run["metrics"]["val_auc"], abs=1e-5)
