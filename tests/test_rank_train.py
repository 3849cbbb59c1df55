"""CTR training with Ray Train (2 workers, DDP on gloo), checkpoints, recovery and the Ranker."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rank_helpers import build_case, sample_tables
from sklearn.metrics import roc_auc_score

from ltray.config import RankConfig
from ltray.rank import SOURCE_FLAGS, FeatureBuilder, FeatureSpecError, Ranker
from ltray.rank.features import arrow_to_features
from ltray.rank.train import FAIL_MARKER, TRAIN_STATE_FILE, train_ctr, write_samples


def _cfg(small_config, **kw) -> RankConfig:
    base = {"id_buckets": 4096, "text_dim": 16, "num_workers": 2, "epochs": small_config.rank.epochs,
            "batch_size": small_config.rank.batch_size, "use_gpu": "never"}
    return small_config.rank.model_copy(update={**base, **kw})


@pytest.fixture(scope="module")
def case(small_synthetic, small_config):
    cfg = _cfg(small_config)
    ctx, train_pos, val_pos, cands, history = build_case(small_synthetic, context_fraction=0.6)
    train, val = sample_tables(ctx, train_pos, val_pos, cands, history, cfg)
    return {"cfg": cfg, "ctx": ctx, "train": train, "val": val, "cands": cands}


@pytest.fixture(scope="module")
def trained(case, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("rank")
    storage = tmp_path_factory.mktemp("train_storage")
    builder = FeatureBuilder(case["cfg"])
    metrics = train_ctr(case["train"], case["val"], case["ctx"], builder, case["cfg"], out, str(storage))
    return {"out": out, "storage": storage, "metrics": metrics, "builder": builder}


def test_two_workers_two_epochs_beat_a_popularity_scorer(case, trained):
    m, val, ctx = trained["metrics"], case["val"], case["ctx"]
    assert m["num_workers"] == 2 and m["epochs_run"] == 2
    assert {h["world_size"] for h in m["history"]} == {2}
    pop_auc = roc_auc_score(val["label"], ctx.item_pop[val["item_idx"]])
    assert m["val_auc"] > max(0.5, pop_auc) + 0.03, (m["val_auc"], pop_auc)
    # The reported AUC is the AUC of the saved model on all of validation (not one worker's shard).
    scores = Ranker.load(trained["out"]).score(ctx, val)
    assert roc_auc_score(val["label"], scores) == pytest.approx(m["val_auc"], abs=1e-6)
    for h in m["history"]:
        assert 0 < h["val_logloss"] < 1 and 0 < h["train_logloss"] < 1
        assert 0.5 < h["train_auc"] <= 1 and h["train_samples"] >= len(case["train"]) - 1
    assert json.loads((Path(trained["out"]) / "rank.json").read_text())["val_auc"] == m["val_auc"]


def test_training_deletes_its_train_storage_once_the_ranker_is_saved(trained):
    """Train's checkpoints, results and the samples (50+ MB a run) go once the best epoch is in the output
    folder; the output folder alone serves."""
    storage, m = Path(trained["storage"]), trained["metrics"]
    assert not storage.exists() or not any(storage.iterdir()), sorted(p.name for p in storage.iterdir())
    assert m["checkpoint_path"] is None and m["storage_path"] == str(storage)
    assert {p.name for p in Path(trained["out"]).iterdir()} >= {"model.safetensors", "feature_spec.json", "rank.json"}


def test_in_process_training_is_the_same_loop_without_ray_train(case, trained, tmp_path):
    """The throw-away choice ranker trains in the driver: one worker, the same epochs and early stopping,
    nothing written to Train's storage, and it learns what the 2-worker DDP run learns."""
    m, val, ctx = trained["metrics"], case["val"], case["ctx"]
    storage = tmp_path / "storage"
    local = train_ctr(case["train"], val, ctx, trained["builder"], case["cfg"], tmp_path / "out", str(storage),
                      in_process=True)
    assert local["in_process"] is True and local["num_workers"] == 1 and local["checkpoint_path"] is None
    assert {h["world_size"] for h in local["history"]} == {1} and local["epochs_run"] == m["epochs_run"]
    assert local["history"][0]["train_samples"] == len(case["train"])
    assert not storage.exists()  # samples and checkpoints went to a scratch folder, now gone
    scores = Ranker.load(tmp_path / "out").score(ctx, val)
    assert roc_auc_score(val["label"], scores) == pytest.approx(local["val_auc"], abs=1e-6)
    assert local["val_auc"] == pytest.approx(m["val_auc"], abs=0.02), (local["val_auc"], m["val_auc"])


def test_checkpoint_round_trips_with_identical_scores(case, trained, tmp_path):
    ctx, table = case["ctx"], case["val"].head(500)
    a = Ranker.load(trained["out"])
    scores = a.score(ctx, table)
    assert scores.dtype == np.float32 and scores.shape == (len(table),) and np.isfinite(scores).all()
    # A copy of the output folder scores the same (the Train checkpoint itself: the resume test).
    copy = tmp_path / "copy"
    shutil.copytree(trained["out"], copy)
    np.testing.assert_array_equal(scores, Ranker.load(copy).score(ctx, table))
    # One batched pass and row-by-row scoring agree (features do not depend on the batch).
    few = table.head(20)
    one_by_one = np.concatenate([a.score(ctx, few.iloc[[i]]) for i in range(len(few))])
    np.testing.assert_allclose(one_by_one, a.score(ctx, few), rtol=1e-5, atol=1e-7)


def test_features_on_parquet_equal_the_scoring_features(case, trained, tmp_path):
    """What the Train workers stream (`write_samples`, as training writes them) is what Serve builds for the
    same (user, item)."""
    ctx, val = case["ctx"], case["val"]
    samples = tmp_path / "val"
    write_samples(trained["builder"], ctx, val, str(samples))
    stored = arrow_to_features(pq.read_table(samples))
    ranker = Ranker.load(trained["out"])
    idx = np.random.default_rng(0).choice(len(val), size=25, replace=False)
    for i in idx:
        built = ranker.builder.build(ctx, val.iloc[[i]][["user_id", "item_idx", *SOURCE_FLAGS]])
        for key in ("user_hash", "item_hash", "dense"):
            np.testing.assert_array_equal(built[key][0], stored[key][i])


def test_mismatched_feature_spec_is_a_clear_error(case, trained, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained["out"], bad)
    other = FeatureBuilder(case["cfg"].model_copy(update={"text_dim": 8}))
    other.fit(case["ctx"], np.flatnonzero(case["ctx"].item_pop > 0), table=case["train"])
    other.save(bad)  # feature_spec.json + features.npz of another feature layout
    with pytest.raises(FeatureSpecError, match="does not match the features .* was trained on.*text_dim"):
        Ranker.load(bad)
    # A builder that does not fit the model's input width is refused too.
    from ltray.rank.model import load_model
    model, _ = load_model(Path(trained["out"]) / "model.safetensors")
    with pytest.raises(FeatureSpecError, match="dense features"):
        Ranker(model, other)


def test_debias_popularity_moves_tail_items_up(case, trained):
    ctx, cands = case["ctx"], case["cands"]
    ranker = Ranker.load(trained["out"])
    users = np.unique(cands["user_id"])[:80]
    table = cands[cands["user_id"].isin(users)].reset_index(drop=True)
    head = ctx.item_segment[table["item_idx"]] == 0
    assert 0.1 < head.mean() < 0.9

    def head_minus_tail_rank(scores: np.ndarray) -> float:
        # Mean within-user rank percentile (1 = top) of head candidates minus tail candidates.
        pct = table.assign(s=scores).groupby("user_id")["s"].rank(pct=True).to_numpy()
        return float(pct[head].mean() - pct[~head].mean())

    plain = head_minus_tail_rank(ranker.score(ctx, table, debias_popularity=False))
    debiased = head_minus_tail_rank(ranker.score(ctx, table, debias_popularity=True))
    assert debiased < plain - 0.02, (plain, debiased)


def test_killed_worker_resumes_from_checkpoint(case, ray_cluster, tmp_path):
    """With the samples streaming through Ray Data (the path of sets above rank.materialize_max_mb; the
    other tests hand each worker the whole small set)."""
    cfg = case["cfg"].model_copy(update={"materialize_max_mb": 0.0})
    rows_per_worker = len(case["train"]) // cfg.num_workers
    steps_per_epoch = math.ceil(rows_per_worker / (cfg.batch_size // cfg.num_workers))
    fail_at = steps_per_epoch + 3  # after the first epoch's checkpoint, inside the second epoch
    storage = tmp_path / "storage"
    metrics = train_ctr(case["train"], case["val"], case["ctx"], FeatureBuilder(cfg), cfg, tmp_path / "out",
                        str(storage), test_hook=fail_at, keep_storage=True)
    marker = storage / f"{metrics['run_name']}-samples" / FAIL_MARKER
    assert marker.exists() and "rank 1" in marker.read_text()
    assert metrics["resumes"] == 1  # the second attempt started from the epoch-0 checkpoint
    assert metrics["epochs_run"] == cfg.epochs
    assert [h["epoch"] for h in metrics["history"]] == list(range(cfg.epochs))
    assert metrics["history"][-1]["step"] == cfg.epochs * steps_per_epoch
    state = json.loads((Path(metrics["checkpoint_path"]) / TRAIN_STATE_FILE).read_text())
    assert state["epoch"] >= 1
    scores = Ranker.load(tmp_path / "out").score(case["ctx"], case["val"])
    assert roc_auc_score(case["val"]["label"], scores) == pytest.approx(metrics["val_auc"], abs=1e-6)
    # The output folder is the best Train checkpoint's model: both score the same.
    np.testing.assert_array_equal(scores, Ranker.load(metrics["checkpoint_path"]).score(case["ctx"], case["val"]))


def test_optimizer_state_round_trips_so_a_resume_continues_exactly(tmp_path):
    """Adam + SparseAdam state saved as safetensors/JSON continues training bit for bit."""
    import torch

    from ltray.rank.model import CTRModel, bce_loss
    from ltray.rank.train import _load_optimizers, _save_optimizers

    def make():
        torch.manual_seed(0)
        m = CTRModel(5, 64, 4, 1, (8,), sparse_embeddings=True)
        return m, m.optimizers(1e-2, 0.0)

    def step(m, opts, seed):
        g = torch.Generator().manual_seed(seed)
        u, i = torch.randint(64, (16,), generator=g), torch.randint(64, (16,), generator=g)
        x, y = torch.randn(16, 5, generator=g), (torch.rand(16, generator=g) < 0.5).float()
        for o in opts:
            o.zero_grad()
        bce_loss(m(u, i, x), y).backward()
        for o in opts:
            o.step()

    a, opts_a = make()
    step(a, opts_a, 1)
    saved = json.loads(json.dumps(_save_optimizers(opts_a, tmp_path / "opt.safetensors")))
    b, opts_b = make()
    b.load_state_dict(a.state_dict())
    _load_optimizers(opts_b, tmp_path / "opt.safetensors", saved)
    step(a, opts_a, 2)
    step(b, opts_b, 2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("n, world, batch", [(1025, 2, 512), (10, 3, 4), (7, 1, 3)])
def test_in_memory_shares_give_every_rank_the_same_steps_and_disjoint_rows(n, world, batch):
    """A small sample set is shared out in the workers, not by Ray Data: DDP hangs if one rank takes a step
    more than another, and no row may be seen twice in an epoch."""
    import torch

    from ltray.rank.train import _share_batches

    feats = {"row": np.arange(n), "label": np.zeros(n, np.float32)}
    dtypes = {"row": torch.int64}
    for shuffle in (False, True):
        per_rank = [[b["row"].numpy() for b in _share_batches(feats, r, world, batch, dtypes, "cpu", 7, shuffle)]
                    for r in range(world)]
        assert len({len(steps) for steps in per_rank}) == 1, [len(s) for s in per_rank]
        rows = np.concatenate([np.concatenate(steps) for steps in per_rank])
        assert len(rows) == (n // world) * world and len(np.unique(rows)) == len(rows)
    # disjoint shuffled shares mean every rank drew the same permutation; the seed (seed + epoch) changes it
    a = next(_share_batches(feats, 0, 1, n, dtypes, "cpu", 1, True))["row"].numpy()
    b = next(_share_batches(feats, 0, 1, n, dtypes, "cpu", 2, True))["row"].numpy()
    assert sorted(a) == sorted(b) == list(range(n)) and (n < 3 or not np.array_equal(a, b))
