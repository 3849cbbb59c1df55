"""Data-parallel scaling of CTR training: samples/s with 1 and 2 Ray Train workers, same data.

Prints the throughput ratio (target >= 1.6 on a 2-core machine), where a worker's time goes
(waiting on data, forward/backward/step, of which gradient all-reduce measured separately),
and validation AUC after the same number of epochs for each worker count (must agree within
0.01: data parallelism must not change what is learned; the global batch is the same).

    .venv/bin/python benchmarks/train_scaling.py            # synthetic default data, 3 epochs
    .venv/bin/python benchmarks/train_scaling.py --quick    # small smoke run

The sample data and FeatureContext come from tests/rank_helpers.py (synthetic catalog, real
ALS via implicit, seeded topic text vectors): the same builders the ranking tests use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def steady(history: list[dict], key: str) -> float:
    """Sum of a timing over epochs after the first (the first pays iterator and DDP warm-up)."""
    rows = history[1:] or history
    return float(sum(h[key] for h in rows))


def comm_probe(n_dense: int, cfg, steps: int) -> dict[str, float]:
    """Seconds per step of forward+backward+step with and without the DDP all-reduce (2 workers)."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from ltray.rank.model import CTRModel, bce_loss

    def loop(c):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = CTRModel(c["n_dense"], c["id_buckets"], c["id_dim"], c["cross_layers"], tuple(c["hidden"]),
                         sparse_embeddings=c["sparse"])
        opts = model.optimizers(1e-3, 0.0)
        ddp = ray.train.torch.prepare_model(model)
        b = c["batch"]
        g = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
        u = torch.randint(c["id_buckets"], (b,), generator=g)
        i = torch.randint(c["id_buckets"], (b,), generator=g)
        x = torch.randn(b, c["n_dense"], generator=g)
        y = (torch.rand(b, generator=g) < 0.2).float()

        def step(sync: bool) -> None:
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            if sync:
                bce_loss(ddp(u, i, x), y).backward()
            else:
                with ddp.no_sync():
                    bce_loss(ddp(u, i, x), y).backward()
            for opt in opts:
                opt.step()

        out = {}
        for name, sync in (("local", False), ("synced", True), ("local2", False), ("synced2", True)):
            for _ in range(3):
                step(sync)
            t = time.perf_counter()
            for _ in range(c["steps"]):
                step(sync)
            out[name] = (time.perf_counter() - t) / c["steps"]
        n_params = sum(p.numel() for p in model.parameters())
        return {"local_s": min(out["local"], out["local2"]), "synced_s": min(out["synced"], out["synced2"]),
                "params": n_params}

    with tempfile.TemporaryDirectory() as storage:
        res = TorchTrainer(
            loop, train_loop_config={"n_dense": n_dense, "id_buckets": cfg.id_buckets, "id_dim": cfg.id_dim,
                                     "cross_layers": cfg.cross_layers, "hidden": list(cfg.hidden),
                                     "batch": cfg.batch_size // 2, "steps": steps,
                                     "sparse": cfg.sparse_embeddings != "never"},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(storage_path=storage, name="comm-probe"),
        ).fit()
    return res.return_value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, 2 epochs: a smoke run")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: rank.batch_size)")
    args = ap.parse_args()

    import ray
    from rank_helpers import build_case, sample_tables
    from sklearn.metrics import roc_auc_score

    from ltray.config import load_config
    from ltray.rank import FeatureBuilder
    from ltray.rank.train import train_ctr

    over = ["rank.use_gpu=never"]
    if args.quick:
        over += ["data.synthetic.n_items=600", "data.synthetic.n_users=300", "data.synthetic.interactions_per_user=25",
                 "rank.id_buckets=4096", "rank.batch_size=256"]
    epochs = args.epochs or (2 if args.quick else 3)
    over += [f"rank.epochs={epochs}", f"rank.early_stopping_patience={epochs}"]  # fixed epochs: no early stop
    if args.batch_size:
        over.append(f"rank.batch_size={args.batch_size}")
    cfg = load_config(overrides=over)
    from ltray.data.synthetic import generate

    t0 = time.perf_counter()
    ds = generate(cfg.data.synthetic)
    ctx, train_pos, val_pos, cands, history = build_case(ds, context_fraction=0.6)
    train, val = sample_tables(ctx, train_pos, val_pos, cands, history, cfg.rank)
    builder = FeatureBuilder(cfg.rank).fit(ctx, np.flatnonzero(ctx.item_pop > 0), table=train)
    print(f"data: {ds.n_items} items, {len(train):,} train / {len(val):,} validation samples, "
          f"{len(builder.dense_names())} dense features; prepared in {time.perf_counter() - t0:.1f}s")
    pop_auc = roc_auc_score(val["label"], ctx.item_pop[val["item_idx"]])

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    print(f"cluster: {ray.cluster_resources().get('CPU', 0):g} CPUs; global batch {cfg.rank.batch_size}, "
          f"{epochs} epochs, torch threads/worker {cfg.rank.torch_threads}, id buckets {cfg.rank.id_buckets}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            rc = cfg.rank.model_copy(update={"num_workers": n})
            t = time.perf_counter()
            m = train_ctr(train, val, ctx, builder, rc, Path(tmp) / f"out{n}", str(Path(tmp) / "storage"))
            m["wall_s"] = time.perf_counter() - t
            runs[n] = m
    probe = comm_probe(len(builder.dense_names()), cfg.rank, steps=10 if args.quick else 30)

    print()
    print(f"{'workers':>7} {'samples/s':>11} {'train s':>8} {'data s':>7} {'compute s':>9} {'val AUC':>8} "
          f"{'fit wall s':>10}")
    rate = {}
    for n, m in runs.items():
        h = m["history"]
        samples, secs = steady(h, "train_samples"), steady(h, "train_seconds")
        rate[n] = samples / secs
        last = h[-1]
        print(f"{n:>7} {rate[n]:>11,.0f} {secs:>8.2f} {steady(h, 'data_seconds'):>7.2f} "
              f"{steady(h, 'compute_seconds'):>9.2f} {last['val_auc']:>8.4f} {m['fit_seconds']:>10.1f}")
    ratio = rate[2] / rate[1]
    auc_gap = abs(runs[1]["history"][-1]["val_auc"] - runs[2]["history"][-1]["val_auc"])
    print(f"\nthroughput ratio 2 workers / 1 worker: {ratio:.2f}x (target >= 1.6)")
    print(f"validation AUC after {epochs} epochs: 1 worker {runs[1]['history'][-1]['val_auc']:.4f}, "
          f"2 workers {runs[2]['history'][-1]['val_auc']:.4f}, gap {auc_gap:.4f} "
          f"({'OK' if auc_gap <= 0.01 else 'FAIL'}, limit 0.01); popularity-only scorer {pop_auc:.4f}")

    # Where a 2-worker step goes: data wait, compute, and the all-reduce inside backward.
    h1, h2 = runs[1]["history"], runs[2]["history"]
    steps2 = len(h2[-1:]) and (h2[-1]["step"] - (h2[0]["step"] if len(h2) > 1 else 0))
    steps1 = len(h1[-1:]) and (h1[-1]["step"] - (h1[0]["step"] if len(h1) > 1 else 0))
    per_step2 = steady(h2, "train_seconds") / max(steps2, 1)
    per_step1 = steady(h1, "train_seconds") / max(steps1, 1)
    data2 = steady(h2, "data_seconds") / max(steps2, 1)
    comm = max(probe["synced_s"] - probe["local_s"], 0.0)
    print(f"\nper step (global batch {cfg.rank.batch_size}): 1 worker {per_step1 * 1e3:.1f} ms; "
          f"2 workers {per_step2 * 1e3:.1f} ms, ideal {per_step1 / 2 * 1e3:.1f} ms")
    print(f"  2-worker step = data wait {data2 * 1e3:.1f} ms ({data2 / per_step2:.0%}) + "
          f"compute {(per_step2 - data2) * 1e3:.1f} ms ({1 - data2 / per_step2:.0%})")
    print(f"  probe ({probe['params']:,.0f} params, half batch): step without all-reduce "
          f"{probe['local_s'] * 1e3:.1f} ms, with {probe['synced_s'] * 1e3:.1f} ms -> all-reduce "
          f"{comm * 1e3:.1f} ms/step ({comm / max(probe['synced_s'], 1e-9):.0%} of a synced step)")
    print(f"  compute alone scales {per_step1 / max(probe['local_s'], 1e-9):.2f}x (1-worker full-batch step / "
          f"2-worker half-batch step without all-reduce; 2.0 = two free cores)")
    load = os.getloadavg()
    print(f"  machine load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
          "(other processes share these cores)")
    if ratio < 1.6:
        print("  target not reached: the all-reduce share and the compute-alone scaling above say why.")
    ray.shutdown()


if __name__ == "__main__":
    main()
