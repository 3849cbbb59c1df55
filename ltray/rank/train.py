"""Data-parallel CTR training with Ray Train (TorchTrainer + DDP). The only rank module that imports ray.

Features are built once on the driver with the FeatureBuilder and written as Parquet next
to the Ray Train storage, so workers (on any node) stream plain tensors and do no feature work.
Each epoch every worker scores the whole validation set, read straight from its Parquet
(identical weights give identical scores, so the AUC is exact and the same on every rank), rank 0 writes a checkpoint
(safetensors + feature spec + config + optimizer state) and early stopping watches
validation AUC. A restarted worker group resumes from the latest checkpoint. Once the best epoch is
copied into ``out_dir``, the run's folders in the storage (Train's checkpoints and results, the samples)
are deleted: nothing reads them afterwards. A failed training leaves them, for diagnosis.

The epoch loop (``_fit_epochs``) talks to a small session: ``_RaySession`` inside a TorchTrainer
worker, or ``_LocalSession`` for ``in_process`` runs (one worker in this process, for a ranker that
is thrown away, where Train's fixed start-up costs more than the training).

With ``rank.text_tower`` = top_layers | lora the BERT encoder trains inside the model through
the same loop: the samples carry each row's ``item_idx``, the item texts are tokenised once on
the driver (``ItemTokens``) and each batch encodes its distinct items. The best epoch's encoder
is exported (LoRA merged) as a Hugging Face folder ``<out_dir>/text_encoder`` for ``embed.model``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import log_loss, roc_auc_score

from ltray.config import RankConfig
from ltray.errors import LtrayError
from ltray.rank.features import FeatureBuilder, FeatureContext, arrow_to_features, features_to_arrow
from ltray.rank.model import WEIGHTS_FILE, CTRModel, bce_loss, load_model, save_model
from ltray.rank.ranker import RANK_CONFIG_FILE, TOWER_ITEMS_FILE
from ltray.rank.text_tower import ItemTokens, load_tokenizer

OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_STATE_FILE = "train_state.json"
METRICS_FILE = "rank.json"
FAIL_MARKER = "_fail_hook_fired"
ROWS_PER_FILE = 65_536  # several Parquet files, so the dataset splits into blocks across workers
VAL_BATCH_ROWS = 65_536
TOWER_EVAL_ITEMS = 256  # distinct items per encoder pass when scoring validation (bounds activation memory)
TEXT_ENCODER_DIR = "text_encoder"

log = logging.getLogger(__name__)


class TrainError(LtrayError, RuntimeError):
    """Ray Train could not produce a model."""


# -- storage helpers (local folder or any pyarrow URI) --------------------------------------
def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    return pafs.FileSystem.from_uri(uri)


def _join(uri: str, *parts: str) -> str:
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve().joinpath(*parts))
    return "/".join([uri.rstrip("/"), *parts])


def remove_run_storage(storage: str, run_name: str) -> None:
    """Delete one training's folders in Ray Train's storage: its run (checkpoints, results) and its samples.

    A local storage folder left empty goes too (the default ``<run>/_train`` holds nothing else); a
    URI's root stays, as other runs may share it."""
    fs, root = _fs(storage)
    for name in (run_name, f"{run_name}-samples"):
        try:
            fs.delete_dir(f"{root}/{name}")
        except FileNotFoundError:
            pass
        except OSError as e:  # disk space is all that is at stake: the ranker is already saved
            log.warning("could not delete the training folder %s/%s: %s", root, name, e)
    if isinstance(fs, pafs.LocalFileSystem):
        with contextlib.suppress(OSError):  # not empty: another training is using it
            Path(root).rmdir()


def write_samples(builder: FeatureBuilder, ctx: FeatureContext, table: pd.DataFrame, uri: str,
                  with_item_idx: bool = False) -> int:
    """Build features for a labelled sample table and write them as Parquet parts under ``uri``.

    ``with_item_idx`` adds each row's catalog row, which a text tower needs to find the item's tokens.
    """
    fs, root = _fs(uri)
    fs.create_dir(root, recursive=True)
    n = len(table)
    for part, start in enumerate(range(0, max(n, 1), ROWS_PER_FILE)):
        chunk = table.iloc[start:start + ROWS_PER_FILE]
        feats = builder.build(ctx, chunk)
        arrow = features_to_arrow(feats, chunk["label"].to_numpy(np.float32))
        if with_item_idx:
            arrow = arrow.append_column("item_idx", pa.array(chunk["item_idx"].to_numpy(np.int64)))
        pq.write_table(arrow, f"{root}/part-{part:05d}.parquet", filesystem=fs)
    return n


def _streams(uri: str, cfg: RankConfig) -> bool:
    """Whether a sample set goes through Ray Data: only above ``materialize_max_mb``. A smaller one is read
    whole by each worker, which takes its own share: Ray Data's executor costs seconds to start each epoch on
    a small machine, more than such a set takes to train."""
    fs, root = _fs(uri)
    size = sum(f.size for f in fs.get_file_info(pafs.FileSelector(root))
               if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    return size > cfg.materialize_max_mb * 2**20


def _read_samples(uri: str) -> dict[str, np.ndarray]:
    import pyarrow.dataset as pads

    fs, root = _fs(uri)
    return _sample_features(pads.dataset(root, filesystem=fs, format="parquet").to_table())


def _share_batches(feats: dict[str, np.ndarray], rank: int, world: int, batch_size: int,
                   dtypes: dict[str, torch.dtype], device, seed: int, shuffle: bool):
    """This rank's batches of an in-memory sample set. Every rank takes n // world rows of one permutation
    (the same on all ranks), so all take the same number of steps, as DDP needs."""
    n = len(feats["label"])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    share = n // world
    mine = order[rank * share:(rank + 1) * share]
    for start in range(0, share, batch_size):
        rows = mine[start:start + batch_size]
        yield {k: torch.from_numpy(np.ascontiguousarray(feats[k][rows])).to(device, dtype)
               for k, dtype in dtypes.items()}


def _iter_parquet(uri: str, batch_rows: int):
    """Feature batches straight from Parquet: validation is read whole by every worker, so it needs
    no Ray Data split (whose per-epoch executor start costs seconds on a small machine)."""
    import pyarrow.dataset as pads

    fs, root = _fs(uri)
    for rb in pads.dataset(root, filesystem=fs, format="parquet").to_batches(batch_size=batch_rows):
        yield _sample_features(pa.Table.from_batches([rb]))


def _sample_features(table: pa.Table) -> dict[str, np.ndarray]:
    """A samples table's feature arrays, with ``item_idx`` when a text tower needs it."""
    feats = arrow_to_features(table)
    if "item_idx" in table.column_names:
        feats["item_idx"] = table.column("item_idx").to_numpy()
    return feats


def resolve_use_gpu(cfg: RankConfig, in_process: bool = False) -> bool:
    """Whether training uses GPUs: the cluster's, one per worker; or, ``in_process``, this process's own."""
    if cfg.use_gpu == "never":
        return False
    if in_process:  # the driver may have no GPU where the cluster's workers do
        gpus, need, where = torch.cuda.device_count(), 1, "this process"
    else:
        import ray

        gpus, need, where = ray.cluster_resources().get("GPU", 0.0), cfg.num_workers, "the cluster"
    if cfg.use_gpu == "always" and gpus < need:
        raise TrainError(f"rank.use_gpu=always but {where} has {gpus:g} GPUs for {need} workers")
    return gpus >= need


def worker_cpus(cfg: RankConfig) -> float:
    """CPUs per worker: what is left after ``data_cpus`` (Ray Data's reads need a CPU, or they hang)."""
    import ray

    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker
    free = ray.cluster_resources().get("CPU", 1.0) - cfg.data_cpus
    share = free / cfg.num_workers
    if share <= 0:
        raise TrainError(f"the cluster has no CPU left for {cfg.num_workers} workers after rank.data_cpus="
                         f"{cfg.data_cpus}; lower rank.num_workers or rank.data_cpus")
    return round(min(1.0, share), 3)


# -- checkpoint files ------------------------------------------------------------------------
def _save_optimizers(opts: list[torch.optim.Optimizer], path: Path) -> dict[str, Any]:
    """Optimizer state as safetensors; scalars and param groups come back JSON-able."""
    tensors, scalars, groups = {}, {}, []
    for k, opt in enumerate(opts):
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for name, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{k}.{pid}.{name}"] = v.detach().cpu().contiguous()
                else:  # SparseAdam keeps its step count as a plain int
                    scalars[f"{k}.{pid}.{name}"] = v
        groups.append([dict(g) for g in sd["param_groups"]])
    save_file(tensors, str(path))
    return {"param_groups": groups, "scalars": scalars}


def _load_optimizers(opts: list[torch.optim.Optimizer], path: Path, saved: dict[str, Any]) -> None:
    groups = saved["param_groups"]
    if len(groups) != len(opts):
        raise TrainError(f"checkpoint has {len(groups)} optimizers, the model {len(opts)} (sparse setting changed?)")
    states: list[dict[int, dict[str, Any]]] = [{} for _ in opts]
    for key, v in [*load_file(str(path)).items(), *saved["scalars"].items()]:
        k, pid, name = key.split(".", 2)
        states[int(k)].setdefault(int(pid), {})[name] = v
    for opt, st, g in zip(opts, states, groups, strict=True):
        opt.load_state_dict({"state": st, "param_groups": g})


def _write_checkpoint(d: Path, model: CTRModel, opts: list[torch.optim.Optimizer], builder: FeatureBuilder,
                      cfg: RankConfig, state: dict[str, Any]) -> None:
    spec = builder.spec()
    save_model(model, d, spec)
    builder.save(d)
    (d / RANK_CONFIG_FILE).write_text(json.dumps(json.loads(cfg.model_dump_json()), indent=2))
    opt_state = _save_optimizers(opts, d / OPTIMIZER_FILE)
    (d / TRAIN_STATE_FILE).write_text(json.dumps({**state, "optimizer": opt_state}, indent=2))


# -- the per-worker loop ---------------------------------------------------------------------
def _gather(x: np.ndarray, world: int) -> np.ndarray:
    if world == 1:
        return x
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, x)
    return np.concatenate(parts)


def _broadcast_flag(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.broadcast(t, src=0)
    return bool(t.item())


def _safe_metrics(labels: np.ndarray, preds: np.ndarray) -> tuple[float, float]:
    p = np.clip(preds.astype(np.float64), 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(labels, p)) if 0 < labels.sum() < len(labels) else float("nan")
    return float(log_loss(labels, p, labels=[0, 1])), auc


def _fail_hook(config: dict[str, Any], step: int, rank: int, world: int) -> None:
    """Test hook: rank 1 raises once at ``fail_at_step``; a marker in storage stops it on the retry."""
    at = config.get("fail_at_step")
    if at is None or step != at or rank != min(1, world - 1):
        return
    fs, marker = _fs(config["fail_marker"])
    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        return
    with fs.open_output_stream(marker) as f:
        f.write(f"fired at step {step} on rank {rank}".encode())
    raise RuntimeError(f"test hook: rank {rank} fails at step {step} (rank.fail_at_step)")


def _tower_inputs(tokens: ItemTokens | None, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, ...]:
    """The text tower's extra forward arguments for a training batch (none for a frozen tower)."""
    if tokens is None:
        return ()
    return tuple(t.to(device) for t in tokens.batch(batch["item_idx"].cpu().numpy()))


def _tower_outputs(model: CTRModel, tokens: ItemTokens, item_idx: np.ndarray, device) -> torch.Tensor:
    """The tower's output per row, each distinct item encoded once, a bounded number at a time."""
    uniq, inverse = np.unique(item_idx, return_inverse=True)
    out = []
    for start in range(0, len(uniq), TOWER_EVAL_ITEMS):
        ids, mask, _ = tokens.batch(uniq[start:start + TOWER_EVAL_ITEMS])
        out.append(model.text_tower(ids.to(device), mask.to(device)))
    return torch.cat(out)[torch.from_numpy(inverse.reshape(-1)).to(device)]


class _RaySession:
    """What the epoch loop needs from Ray Train (inside a TorchTrainer worker)."""

    def __init__(self, train_uri: str | None):
        """``train_uri``: a small sample set each worker reads whole; None: the "train" dataset shard."""
        import ray.train
        import ray.train.torch

        self._train, self._torch = ray.train, ray.train.torch
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.feats = _read_samples(train_uri) if train_uri else None

    def checkpoint(self):
        return self._train.get_checkpoint()

    def prepare_model(self, model: CTRModel):
        return self._torch.prepare_model(model)

    def batches(self, batch_size: int, dtypes: dict[str, torch.dtype], shuffle_buffer: int, seed: int):
        if self.feats is not None:
            return _share_batches(self.feats, self.rank, self.world, batch_size, dtypes, self.device, seed,
                                  bool(shuffle_buffer))
        return self._train.get_dataset_shard("train").iter_torch_batches(
            batch_size=batch_size, dtypes=dtypes, device=self.device, local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=seed if shuffle_buffer else None)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str) -> None:
        ckpt = self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        self._train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


class _LocalSession:
    """The same loop in this process, one worker, no Ray Train: for a small throw-away ranker (the one that
    only picks the operating point), where Train's fixed start-up costs more than the training. Samples
    come from the Parquet parts in order; the best epoch's files are kept in ``best_dir``."""

    def __init__(self, train_uri: str, best_dir: Path, device: torch.device):
        self.feats = _read_samples(train_uri)
        self.rank, self.world, self.device = 0, 1, device
        self.best_dir, self.best_auc, self.history = best_dir, -np.inf, []

    def checkpoint(self):
        return None

    def prepare_model(self, model: CTRModel):
        return model.to(self.device)

    def batches(self, batch_size: int, dtypes: dict[str, torch.dtype], shuffle_buffer: int, seed: int):
        return _share_batches(self.feats, 0, 1, batch_size, dtypes, self.device, seed, bool(shuffle_buffer))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str) -> None:
        self.history.append(metrics)
        if checkpoint_dir is not None and metrics["val_auc"] > self.best_auc:
            self.best_auc = metrics["val_auc"]
            shutil.rmtree(self.best_dir, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.best_dir)


def _train_loop(config: dict[str, Any]) -> None:
    """TorchTrainer's per-worker entry point."""
    _fit_epochs(config, _RaySession(config["train_uri"]))


def _resume(model: CTRModel, opts: list, session: _RaySession | _LocalSession) -> dict[str, Any]:
    """The loop's state: fresh, or the model, optimizers and counters of the session's last checkpoint."""
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_val_auc": -1.0, "best_epoch": -1, "bad_epochs": 0,
                             "resumes": 0, "history": []}
    ckpt = session.checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            resumed, _ = load_model(d / WEIGHTS_FILE)
            model.load_state_dict(resumed.state_dict())
            saved = json.loads((d / TRAIN_STATE_FILE).read_text())
            _load_optimizers(opts, d / OPTIMIZER_FILE, saved.pop("optimizer"))
            state = {**saved, "resumes": saved["resumes"] + 1}
    return state


def _train_epoch(ddp, opts: list, batches, tokens, device, state: dict[str, Any], before_step
                 ) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """One pass over this worker's batches: (labels, predictions, samples, data seconds, compute seconds)."""
    t_data = t_compute = 0.0
    n_seen = 0
    preds, labels = [], []
    t0 = time.perf_counter()
    for batch in batches:
        t1 = time.perf_counter()
        t_data += t1 - t0
        before_step(state["step"])
        logits = ddp(batch["user_hash"], batch["item_hash"], batch["dense"], *_tower_inputs(tokens, batch, device))
        loss = bce_loss(logits, batch["label"])
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        state["step"] += 1
        n_seen += len(logits)
        preds.append(torch.sigmoid(logits.detach()).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        t0 = time.perf_counter()
        t_compute += t0 - t1
    return np.concatenate(labels), np.concatenate(preds), n_seen, t_data, t_compute


def _validate(model: CTRModel, val_uri: str, tokens, device) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) over the whole validation set."""
    vp, vl = [], []
    with torch.inference_mode():
        for feats in _iter_parquet(val_uri, VAL_BATCH_ROWS):
            text = _tower_outputs(model, tokens, feats["item_idx"], device) if tokens is not None else None
            # torch.tensor copies: Arrow hands out read-only arrays, which from_numpy warns about.
            logits = model(*(torch.tensor(feats[k], device=device) for k in ("user_hash", "item_hash", "dense")),
                           item_text=text)
            vp.append(torch.sigmoid(logits).cpu().numpy())
            vl.append(feats["label"])
    return np.concatenate(vl), np.concatenate(vp)


def _fit_epochs(config: dict[str, Any], session: _RaySession | _LocalSession) -> None:
    cfg = RankConfig.model_validate(config["rank"])
    builder: FeatureBuilder = config["builder"]
    rank, world = session.rank, session.world
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    device = session.device

    # Sparse embedding gradients on CPU (gloo all-reduces them); NCCL needs dense ones.
    sparse = cfg.sparse_embeddings == "always" or (cfg.sparse_embeddings == "auto" and device.type == "cpu")
    model = CTRModel.for_features(builder.spec(), cfg, sparse_embeddings=sparse)
    opts = model.optimizers(cfg.lr, cfg.weight_decay, tower_lr=cfg.text_tower_lr)
    tokens = ItemTokens(**config["item_tokens"]) if config.get("item_tokens") else None
    state = _resume(model, opts, session)
    ddp = session.prepare_model(model)
    per_worker_batch = max(1, cfg.batch_size // world)
    dtypes = {"user_hash": torch.int64, "item_hash": torch.int64, "dense": torch.float32, "label": torch.float32}
    if tokens is not None:
        dtypes["item_idx"] = torch.int64

    for epoch in range(state["epoch"], cfg.epochs):
        ddp.train()
        t_epoch = time.perf_counter()
        labels, preds, n_seen, t_data, t_compute = _train_epoch(
            ddp, opts, session.batches(per_worker_batch, dtypes, cfg.shuffle_buffer, cfg.seed + epoch), tokens,
            device, state, lambda step: _fail_hook(config, step, rank, world))
        t_train = time.perf_counter() - t_epoch
        train_logloss, train_auc = _safe_metrics(_gather(labels, world), _gather(preds, world))
        n_total = int(_gather(np.array([n_seen]), world).sum())
        # Every rank scores all of validation: same weights, same scores, an exact AUC everywhere.
        ddp.eval()
        t_val = time.perf_counter()
        val_logloss, val_auc = _safe_metrics(*_validate(model, config["val_uri"], tokens, device))
        t_val = time.perf_counter() - t_val

        improved = val_auc > state["best_val_auc"]
        if improved:
            state["best_val_auc"], state["best_epoch"], state["bad_epochs"] = val_auc, epoch, 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        metrics = {"epoch": epoch, "train_logloss": train_logloss, "train_auc": train_auc,
                   "val_logloss": val_logloss, "val_auc": val_auc, "best_val_auc": state["best_val_auc"],
                   "best_epoch": state["best_epoch"], "step": state["step"], "resumes": state["resumes"],
                   "train_samples": n_total, "train_seconds": t_train, "samples_per_s": n_total / max(t_train, 1e-9),
                   "data_seconds": t_data, "compute_seconds": t_compute, "val_seconds": t_val, "world_size": world}
        state["history"].append(metrics)
        stop = state["bad_epochs"] >= cfg.early_stopping_patience
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                _write_checkpoint(Path(tmp), model, opts, builder, cfg, state)
                session.report(metrics, Path(tmp), f"epoch_{epoch:04d}")
        else:
            session.report(metrics, None, f"epoch_{epoch:04d}")
        if _broadcast_flag(stop, world):
            break


# -- the driver ------------------------------------------------------------------------------
def _copy_best(checkpoint_dir: Path, out: Path) -> dict[str, Any]:
    """The best epoch's model files into ``out``; returns that epoch's metrics row."""
    for name in (WEIGHTS_FILE, "feature_spec.json", "features.npz", RANK_CONFIG_FILE):
        shutil.copy2(checkpoint_dir / name, out / name)
    return json.loads((checkpoint_dir / TRAIN_STATE_FILE).read_text())["history"][-1]


def _fit_on_ray_train(loop_config: dict[str, Any], cfg: RankConfig, use_gpu: bool, run_name: str, storage: str,
                      train_uri: str, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], str]:
    """TorchTrainer over the workers; returns (best row, history, last metrics, best checkpoint path)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": worker_cpus(cfg), **({"GPU": 1} if use_gpu else {})}
    streams = _streams(train_uri, cfg)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={**loop_config, "train_uri": None if streams else train_uri},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_auc",
                                                         checkpoint_score_order="max")),
        datasets={"train": ray.data.read_parquet(train_uri)} if streams else None,
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainError(f"CTR training failed after {cfg.max_failures} retries: {e}") from e
    if result.error is not None:
        raise TrainError(f"CTR training failed: {result.error}") from result.error
    best = result.get_best_checkpoint("val_auc", "max") or result.checkpoint
    if best is None:
        raise TrainError("CTR training finished without a checkpoint")
    with best.as_directory() as d:
        best_row = _copy_best(Path(d), out)
    history: list[dict[str, Any]] = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / TRAIN_STATE_FILE).read_text())["history"]
    return best_row, history, result.metrics or {}, best.path


def train_ctr(train_df: pd.DataFrame, val_df: pd.DataFrame, ctx: FeatureContext, builder: FeatureBuilder,
              cfg: RankConfig, out_dir: str | Path, storage_path: str | None = None,
              test_hook: int | None = None, item_texts: Sequence[str] | None = None,
              in_process: bool = False, keep_storage: bool = False) -> dict[str, Any]:
    """Train the CTR model on labelled sample tables; the best epoch lands in ``out_dir``.

    ``train_df`` / ``val_df``: user_id, item_idx, from_* flags, label (validation later in time).
    ``builder`` is fitted here on the training items if it is not yet. ``test_hook`` (or
    ``cfg.fail_at_step``) makes rank 1 raise once at that global step, to test recovery.
    ``item_texts`` (one per catalog row of ``ctx``) is needed with ``cfg.text_tower`` != frozen; the
    fine-tuned encoder of the best epoch is then exported to ``out_dir/text_encoder``.
    ``in_process``: the same epoch loop in this process, one worker, no Ray at all (no checkpoints in
    storage, no resume): for a small ranker that is thrown away, where Train's start-up (about 20 s
    on 2 cores) costs more than the training.
    ``keep_storage``: leave this training's checkpoints and samples in the storage (tests and debugging);
    by default they are deleted once the best epoch is in ``out_dir`` (``checkpoint_path`` is then None).
    Returns the metrics also written to ``out_dir/rank.json``.
    """
    import ray

    tower = cfg.text_tower != "frozen"
    if tower and (item_texts is None or len(item_texts) != ctx.n_items):
        raise TrainError(f"rank.text_tower={cfg.text_tower!r} needs the item texts, one per catalog item "
                         f"({ctx.n_items}); got {'none' if item_texts is None else len(item_texts)}")
    for name, df in (("train", train_df), ("validation", val_df)):
        if len(df) == 0 or df["label"].nunique() < 2:
            raise TrainError(f"the {name} sample table needs both positive and negative rows")
    storage = storage_path or cfg.storage_path
    if not storage and not in_process:
        raise TrainError("no storage_path for Ray Train: pass one or set rank.storage_path")
    if not in_process and not ray.is_initialized():
        from ltray.raysession import start_or_join

        start_or_join()  # called outside the CLI: join the machine's cluster, else a private one
    if not builder.fitted:
        builder.fit(ctx, np.flatnonzero(ctx.item_pop > 0), table=train_df)
    run_name = cfg.run_name or f"ctr-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = resolve_use_gpu(cfg, in_process)
    with tempfile.TemporaryDirectory(prefix="ltray-rank-") as scratch:
        # Ray Train's samples live in its storage (workers on any node read them); an in-process run's are scratch.
        samples = str(Path(scratch) / "samples") if in_process else _join(storage, f"{run_name}-samples")
        t0 = time.perf_counter()
        n_train = write_samples(builder, ctx, train_df, _join(samples, "train"), with_item_idx=tower)
        n_val = write_samples(builder, ctx, val_df, _join(samples, "val"), with_item_idx=tower)
        item_tokens = None
        if tower:
            tok = ItemTokens.from_texts(item_texts, load_tokenizer(cfg.text_tower_model), cfg.text_tower_max_length)
            item_tokens = {"input_ids": tok.input_ids, "lengths": tok.lengths}
        t_features = time.perf_counter() - t0

        # The recovery test hook is for Ray Train's workers: an in-process run has nothing to resume with.
        fail_at = None if in_process else test_hook if test_hook is not None else cfg.fail_at_step
        loop_config = {"rank": json.loads(cfg.model_dump_json()), "builder": builder, "val_uri": _join(samples, "val"),
                       "fail_at_step": fail_at, "fail_marker": _join(samples, FAIL_MARKER), "item_tokens": item_tokens}
        t1 = time.perf_counter()
        if in_process:
            session = _LocalSession(_join(samples, "train"), Path(scratch) / "best",
                                    torch.device("cuda" if use_gpu else "cpu"))
            threads = torch.get_num_threads()
            try:
                _fit_epochs(loop_config, session)
            finally:
                torch.set_num_threads(threads)  # the loop sets rank.torch_threads; this process goes on
            best_row, best_path = _copy_best(session.best_dir, out), None
            history, last = session.history, session.history[-1]
        else:
            best_row, history, last, best_path = _fit_on_ray_train(loop_config, cfg, use_gpu, run_name, storage,
                                                                   _join(samples, "train"), out)
            if not keep_storage:
                remove_run_storage(storage, run_name)
                best_path = None
        t_fit = time.perf_counter() - t1
    encoder_dir = None
    if tower:
        best_model, _ = load_model(out / WEIGHTS_FILE)
        encoder_dir = str(best_model.text_tower.export(out / TEXT_ENCODER_DIR))
        with torch.inference_mode():
            items = _tower_outputs(best_model, tok, np.arange(ctx.n_items), torch.device("cpu"))
        np.save(out / TOWER_ITEMS_FILE, items.numpy().astype(np.float32), allow_pickle=False)
    metrics = {
        "best_epoch": best_row["epoch"], "val_auc": best_row["val_auc"], "val_logloss": best_row["val_logloss"],
        "train_auc": best_row["train_auc"], "train_logloss": best_row["train_logloss"],
        "epochs_run": int(last.get("epoch", best_row["epoch"])) + 1, "resumes": int(last.get("resumes", 0)),
        "num_workers": 1 if in_process else cfg.num_workers, "use_gpu": use_gpu, "n_train": n_train, "n_val": n_val,
        "feature_seconds": t_features, "fit_seconds": t_fit, "run_name": run_name,
        "storage_path": None if in_process else storage,
        "checkpoint_path": best_path, "in_process": in_process, "history": history,
    }
    if tower:
        metrics.update(text_tower=cfg.text_tower, text_encoder=encoder_dir)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
