"""How cost grows with the catalog: the pipeline stages on synthetic catalogs of growing size.

    python benchmarks/scale.py --quick                       # 2k and 10k items
    python benchmarks/scale.py --sizes 10000 100000 1000000 --embed-sample 5000 --rank-max-items 100000

For each size it runs the stages against a fresh artifact store the way the jobs do (``jobs/_common.py``):
the data stage and the later stages (cf + index, rank) in Ray tasks, the embedding through Ray Data. It
prints per stage: wall time, peak RSS of the driver and of the Ray workers (summed, sampled every 0.2 s),
and time per item. The baseline is the smallest size: "x per item" is each
size's cost per item over the smallest size's, so 1.0 means linear growth. It then fits
time = a * n^b per stage (b = the log-log slope) and writes a log-log plot.

``--embed-sample N``: catalogs larger than N embed only N sampled items with the real encoder, on the
real Ray Data stage, and the embedding time is extrapolated (per-item cost x n). The other items get
stand-in vectors (a sampled item's vector plus noise), committed as the embed stage, so the later
stages run on full-size inputs. Those rows are marked "extrapolated".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

MB = 2**20
STAGES = ("data", "embed", "cf+index", "index only", "rank")


class PeakMemory:
    """Samples the RSS of this process and of its Ray worker processes (``ray::*``) in a thread."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.me = psutil.Process()
        self._stop = threading.Event()
        self.driver = self.workers = 0
        self.driver_start = self.me.memory_info().rss

    def _sample(self) -> None:
        self.driver = max(self.driver, self.me.memory_info().rss)
        total = 0
        for child in self.me.children(recursive=True):
            try:
                if child.name().startswith("ray::") or "default_worker.py" in " ".join(child.cmdline()[:3]):
                    total += child.memory_info().rss
            except psutil.Error:
                continue
        self.workers = max(self.workers, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def stand_in_vectors(sample_vecs: np.ndarray, n: int, sample_rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """Real vectors at ``sample_rows``; elsewhere a random sampled vector plus noise, re-normalised."""
    rng = np.random.default_rng(seed)
    d = sample_vecs.shape[1]
    out = sample_vecs[rng.integers(len(sample_vecs), size=n)]
    out += rng.standard_normal(out.shape).astype(np.float32) * (0.3 / np.sqrt(d))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[sample_rows] = sample_vecs
    return out.astype(np.float32)


def commit_stand_in_embed(store, bundle, vectors: np.ndarray, cfg, note: str) -> None:
    import pyarrow as pa

    from ltray.embed.items import write_shards
    from ltray.embed.models import text_hash

    d = vectors.shape[1]
    table = pa.table({
        "item_id": pa.array(bundle.item_ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d),
        "text_hash": pa.array(text_hash(bundle.items["text"].astype(str).tolist()), pa.string()),
        "model_id": pa.array(["stand-in"] * len(vectors), pa.string()),
    })
    with store.writing("embed", fingerprint=f"stand-in-{len(vectors)}", note=note) as w:
        write_shards(table, w.path, cfg.embed.shard_rows)
        (w / "embed.json").write_text(json.dumps({"dim": d, "count": len(vectors), "note": note}))


def embed_sample_with_stand_ins(cfg, uri: str, sample_n: int, tmp: str) -> dict:
    """In a Ray task: embed ``sample_n`` sampled items on the real Ray Data stage, commit stand-ins for the rest."""
    from ltray import pipeline as p
    from ltray.artifacts import ArtifactStore
    from ltray.embed.items import load_embeddings
    from ltray.embed.stage import embed_items

    store = ArtifactStore(uri)
    bundle = p.load_bundle(store)
    n = len(bundle.items)
    sample_rows = np.sort(np.random.default_rng(0).choice(n, sample_n, replace=False))
    sample = bundle.items.iloc[sample_rows][["item_id", "text"]]
    t0 = time.perf_counter()
    stats = embed_items(sample, cfg.embed, Path(tmp) / "embed")
    seconds = time.perf_counter() - t0
    sample_vecs = load_embeddings(Path(tmp) / "embed", sample["item_id"].astype(str).tolist())
    commit_stand_in_embed(store, bundle, stand_in_vectors(sample_vecs, n, sample_rows), cfg,
                          f"{sample_n} items embedded, the rest stand-ins (benchmark)")
    return {"sample_seconds": seconds, "items_per_s": stats.get("items_per_s")}


def index_only(cfg, uri: str) -> dict:
    """In a Ray task: the FAISS tail and full indexes alone, timed without the loading."""
    from ltray import pipeline as p
    from ltray.artifacts import ArtifactStore
    from ltray.embed.items import load_embeddings
    from ltray.index.faiss_index import build_tail_and_full

    store = ArtifactStore(uri)
    bundle = p.load_bundle(store)
    vectors = load_embeddings(store.stage_path("embed"), bundle.item_ids)
    t0 = time.perf_counter()
    tail, full = build_tail_and_full(vectors, bundle.item_segment != 0, cfg.index)
    return {"seconds": time.perf_counter() - t0, "factory": {"tail": tail.factory, "full": full.factory}}


def run_size(n: int, args, root: Path) -> dict:
    """The stages the way the jobs run them (jobs/_common.py): data and the later stages in Ray tasks,
    the embedding through Ray Data; so "driver MB" is a job driver's memory."""
    from jobs._common import on_worker
    from ltray import pipeline as p
    from ltray.artifacts import ArtifactStore
    from ltray.config import load_config

    n_users = max(args.min_users, int(n * args.users_per_item))
    cfg = load_config(overrides=[
        f"data.synthetic.n_items={n}", f"data.synthetic.n_users={n_users}",
        f"data.synthetic.interactions_per_user={args.interactions_per_user}",
        f"embed.max_length={args.max_length}", f"cf.iterations={args.cf_iterations}",
        f"rank.epochs={args.rank_epochs}", "rank.num_workers=1",
    ])
    uri = str(root / f"n{n}")
    store = ArtifactStore(uri)
    rows: dict[str, dict] = {}

    def measure(stage: str, fn, extrapolated: bool = False):
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            out = fn()
            sec = time.perf_counter() - t0
        rows[stage] = {"seconds": sec, "driver_mb": mem.driver / MB, "workers_mb": mem.workers / MB,
                       # what the stage itself added to the driver, above what it held at the start
                       "driver_delta_mb": (mem.driver - mem.driver_start) / MB, "extrapolated": extrapolated}
        return out

    counts = measure("data", lambda: on_worker(p.commit_data, cfg, uri, False, store=store))
    if args.embed_sample and n > args.embed_sample:
        tmp = tempfile.mkdtemp(dir=root)
        stats = measure("embed", lambda: on_worker(embed_sample_with_stand_ins, cfg, uri, args.embed_sample, tmp,
                                                   store=store), extrapolated=True)
        rows["embed"].update(seconds=stats["sample_seconds"] / args.embed_sample * n, sample=args.embed_sample,
                             sample_seconds=stats["sample_seconds"], sample_items_per_s=stats["items_per_s"])
    else:
        measure("embed", lambda: p.commit_embed(store, cfg))
    measure("cf+index", lambda: on_worker(p.fit_from_store, cfg, uri, ("cf+index",), store=store))
    built = measure("index only", lambda: on_worker(index_only, cfg, uri, store=store))
    rows["index only"].update(seconds=built["seconds"], factory=built["factory"])
    if n <= args.rank_max_items:
        measure("rank", lambda: on_worker(p.fit_from_store, cfg, uri, ("rank",), store=store))
    return {"n": n, "users": n_users, "interactions": counts["train"], "stages": rows}


def fit_slope(ns: list[int], secs: list[float]) -> tuple[float, float]:
    """time = a * n^b by least squares on logs; returns (b, a)."""
    b, log_a = np.polyfit(np.log(ns), np.log(secs), 1)
    return float(b), float(np.exp(log_a))


def report(results: list[dict]) -> dict[str, dict]:
    base = results[0]
    print(f"\n{'n':>9} {'stage':<12} {'seconds':>9} {'us/item':>9} {'x per item':>10} {'driver MB':>10} "
          f"{'drv +MB':>8} {'workers MB':>10}  note")
    for r in results:
        for stage in STAGES:
            row = r["stages"].get(stage)
            if row is None:
                continue
            per = row["seconds"] / r["n"]
            b = base["stages"].get(stage)
            ratio = per / (b["seconds"] / base["n"]) if b else float("nan")
            note = ""
            if row.get("extrapolated"):
                note = (f"extrapolated from {row['sample']:,} items in {row['sample_seconds']:.1f}s "
                        f"({row['sample_seconds'] / row['sample'] * 1e3:.2f} ms/item incl. pool start)")
            if "factory" in row:
                note = f"tail {row['factory']['tail']}, full {row['factory']['full']}"
            print(f"{r['n']:>9,} {stage:<12} {row['seconds']:>9.2f} {per * 1e6:>9.1f} {ratio:>10.2f} "
                  f"{row['driver_mb']:>10.0f} {row['driver_delta_mb']:>8.0f} {row['workers_mb']:>10.0f}  {note}")
    fits = {}
    if len(results) >= 2:
        print("\nGrowth, time = a * n^b (b = 1 is linear):")
        for stage in STAGES:
            pts = [(r["n"], r["stages"][stage]["seconds"]) for r in results if stage in r["stages"]]
            if len(pts) >= 2:
                b, a = fit_slope([x for x, _ in pts], [y for _, y in pts])
                fits[stage] = {"slope": b, "a": a, "sizes": [x for x, _ in pts]}
                print(f"  {stage:<11} b = {b:.2f}  (sizes {', '.join(f'{x:,}' for x, _ in pts)})")
        ns = [r["n"] for r in results]
        drv = [max(s["driver_mb"] for s in r["stages"].values()) for r in results]
        b, _ = fit_slope(ns, drv)
        fits["driver peak MB"] = {"slope": b}
        print(f"  driver peak RSS: {', '.join(f'{m:.0f} MB' for m in drv)} (log-log slope {b:.2f}; "
              "0 would mean flat)")
        emb = [(r["n"], r["stages"]["embed"]) for r in results if "embed" in r["stages"]]
        print("  embed stage, driver RSS added: " + ", ".join(
            f"{row['driver_delta_mb']:.0f} MB at {row.get('sample', n):,} items embedded" for n, row in emb))
    return fits


def plot(results: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for stage in STAGES:
        pts = [(r["n"], r["stages"][stage]) for r in results if stage in r["stages"]]
        if not pts:
            continue
        ns = np.array([x for x, _ in pts])
        secs = np.array([row["seconds"] for _, row in pts])
        extra = np.array([bool(row.get("extrapolated")) for _, row in pts])
        label = f"{stage} (b={fits[stage]['slope']:.2f})" if stage in fits else stage
        line, = ax.plot(ns, secs, "-", label=label)
        ax.plot(ns[~extra], secs[~extra], "o", color=line.get_color())
        ax.plot(ns[extra], secs[extra], "o", mfc="white", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("wall time (s)")
    ax.set_title("ltray stages vs catalog size (hollow: extrapolated from a sample)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="2k and 10k items")
    ap.add_argument("--embed-sample", type=int, default=5000,
                    help="above this many items, embed a sample this big and extrapolate (0 = embed all)")
    ap.add_argument("--rank-max-items", type=int, default=100_000, help="skip the ranker above this size")
    ap.add_argument("--users-per-item", type=float, default=0.2)
    ap.add_argument("--min-users", type=int, default=1000)
    ap.add_argument("--interactions-per-user", type=float, default=20.0)
    ap.add_argument("--max-length", type=int, default=64, help="encoder tokens per text")
    ap.add_argument("--cf-iterations", type=int, default=10)
    ap.add_argument("--rank-epochs", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                    help="where scale.png (small, committed) and scale.json go")
    ap.add_argument("--verbose", action="store_true", help="show the stage tasks' logs")
    args = ap.parse_args(argv)
    sizes = [2_000, 10_000] if args.quick else sorted(args.sizes)
    if args.quick:
        args.embed_sample = min(args.embed_sample or 2_000, 2_000)

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=args.verbose, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="ltray-scale-"))
    print(f"sizes {sizes}; embed sample {args.embed_sample or 'off'}; ranker up to {args.rank_max_items:,} items; "
          f"{os.cpu_count()} CPUs; artifacts under {root}")
    results = []
    for n in sizes:
        t0 = time.perf_counter()
        results.append(run_size(n, args, root))
        print(f"n={n:,}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    fits = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, fits, args.out / "scale.png")
    (args.out / "scale.json").write_text(json.dumps({"results": results, "fits": fits}, indent=2, default=float))
    print(f"\nplot: {args.out / 'scale.png'}\ntable: {args.out / 'scale.json'}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
