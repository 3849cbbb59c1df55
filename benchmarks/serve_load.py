"""Serve under load: our app vs the framework floor (the same four-deployment chain with no-op bodies).

    .venv/bin/python benchmarks/serve_load.py [--artifacts DIR] [--requests 400] [--quick]

Starts Ray Serve on 127.0.0.1, drives POST /recommend from a separate process (httpx, asyncio) with
a bounded number of requests at 1, 8 and 32 concurrent clients, and prints p50 / p99 latency,
throughput and errors for: the chain (Ingress -> CFRecall -> TailRetrieval -> CTRRanker), the
colocated topology (Ingress -> Pipeline) and the floor. Then our p50 minus the floor's (what our code
adds per request), the issue's targets as ratios, and the in-process Recommender's throughput (the
limit serving could reach). Without --artifacts it fits MovieLens into artifacts/movielens-latest-small
(a few minutes; a no-op when already there). --quick: the small synthetic config, fewer requests.
"""


import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LTRAY_DATA_HOME", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

QUICK_OVERRIDES = ["data.synthetic.n_items=600", "data.synthetic.n_users=300",
                   "data.synthetic.interactions_per_user=25", "cf.iterations=8", "rank.epochs=2",
                   "rank.batch_size=256"]
# The targets on this 2-core machine.
MAX_P50_RATIO_AT_1 = 1.5
MIN_RPS_RATIO_AT_32 = 0.8


# -- the load generator (runs in its own process) ------------------------------------------------------
async def _drive(url: str, bodies: list[dict], concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    it = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            nonlocal errors
            for body in it:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/recommend", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1e3)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"n": len(lat), "errors": errors, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "rps": len(lat) / wall}


def client_main(args) -> None:
    bodies = json.loads(Path(args.bodies).read_text())
    print(json.dumps(asyncio.run(_drive(args.url, bodies, args.concurrency))))


def run_load(url: str, bodies_file: Path, concurrency: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--client", "--url", url, "--bodies", str(bodies_file),
                          "--concurrency", str(concurrency)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the floor: the same chain shape with no-op bodies ----------------------------------------------------
def build_floor_app(cfg):
    from fastapi import FastAPI
    from ray import serve

    from deployments.app import _options
    from deployments.schemas import RecommendRequest, RecommendResponse

    api = FastAPI()

    @serve.deployment(name="NoopRecall")
    class NoopRecall:
        def recall(self, user_id, recent_items, exclude_seen):
            return {"user": user_id}

    @serve.deployment(name="NoopRetrieval")
    class NoopRetrieval:
        def candidates(self, recall):
            return recall

    @serve.deployment(name="NoopRanker")
    class NoopRanker:
        async def rank(self, user_id, state, cands, k, tail_share):
            return [], 0.0

    @serve.deployment(name="NoopIngress")
    @serve.ingress(api)
    class NoopIngress:
        def __init__(self, recall, retrieval, ranker):
            self.recall, self.retrieval, self.ranker = recall, retrieval, ranker

        @api.post("/recommend", response_model=RecommendResponse)
        async def recommend(self, req: RecommendRequest):
            rec = await self.recall.recall.remote(req.user_id, req.recent_items, req.exclude_seen)
            cands = await self.retrieval.candidates.remote(rec)
            items, share = await self.ranker.rank.remote(req.user_id, rec, cands, req.k, req.tail_share)
            return {"user_id": req.user_id, "items": items, "fallback": False, "tail_share": share,
                    "unknown_recent_items": [], "version": "floor"}

    o = _options(cfg)
    return NoopIngress.options(**o).bind(NoopRecall.options(**o).bind(), NoopRetrieval.options(**o).bind(),
                                         NoopRanker.options(**o).bind())


# -- the benchmark ------------------------------------------------------------------------------------------
def ensure_artifacts(args) -> str:
    from ltray.config import load_config
    from ltray.logs import lines_to
    from ltray.pipeline import fit

    if args.artifacts:
        return args.artifacts
    if args.quick:
        art, cfg = ROOT / "artifacts" / "bench-synthetic-small", load_config(overrides=QUICK_OVERRIDES)
    else:
        art = ROOT / "artifacts" / "movielens-latest-small"
        cfg = load_config(overrides=["data.dataset=movielens-latest-small"])
    t0 = time.perf_counter()
    with lines_to(lambda m: print(f"  fit: {m}", flush=True)):
        fit(cfg, str(art))
    print(f"artifacts {art} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return str(art)


def wait_ready(url: str, path: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url + path, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}{path} not ready in {timeout_s} s")


def start_serve(overrides: list[str], **init_kwargs):
    """Ray (unless one runs already) and Serve's HTTP proxy on a free loopback port: (ServeConfig with
    `overrides` and that port, base URL). Both load benchmarks start this way."""
    import ray
    from ray import serve

    from deployments.app import _free_port
    from ltray.config import ServeConfig

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, **init_kwargs)
    port = _free_port("127.0.0.1")
    cfg = ServeConfig.model_validate({**dict(o.split("=", 1) for o in overrides), "port": port})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return cfg, f"http://127.0.0.1:{port}"


def measure(name: str, app, url: str, bodies_file: Path, levels: list[int], warmup: Path, ready_path: str):
    from ray import serve

    serve.run(app, name="bench", route_prefix="/", blocking=False)
    wait_ready(url, ready_path)
    run_load(url, warmup, 4)
    rows = {}
    for c in levels:
        rows[c] = r = run_load(url, bodies_file, c)
        print(f"  {name:<10} clients={c:>2}  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
              f"{r['rps']:6.1f} req/s  errors {r['errors']}/{r['n']}", flush=True)
    serve.delete("bench")
    return rows


def in_process(artifacts: str, bodies: list[dict]) -> dict:
    """`Recommender.recommend` (a DataFrame out) and the columns path Serve's stages run, one caller."""
    from deployments.stages import limit_threads
    from ltray.recommend import load_recommender

    limit_threads(1)  # as in each Serve replica: one thread per pool
    rec = load_recommender(artifacts)

    def columns(user_id: str, k: int):
        state, cands = rec.rank_candidates(user_id)
        return rec.top_k_columns(state, cands, k)

    out = {}
    for name, fn in (("recommend", rec.recommend), ("columns", columns)):
        for b in bodies[:10]:
            fn(b["user_id"], k=b["k"])
        lat, cpu = [], time.process_time()
        t0 = time.perf_counter()
        for b in bodies:
            t = time.perf_counter()
            fn(b["user_id"], k=b["k"])
            lat.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
        out[name] = {"p50": float(np.median(lat)), "rps": len(lat) / wall, "n": len(lat),
                     "cpu_ms": (time.process_time() - cpu) * 1e3 / len(lat)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="a fitted run folder (default: fit MovieLens)")
    p.add_argument("--requests", type=int, default=None, help="requests per concurrency level")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--topologies", default="chain,colocated")
    p.add_argument("--quick", action="store_true", help="small synthetic run, fewer requests")
    p.add_argument("--serve", action="append", default=[], metavar="FIELD=VALUE",
                   help="a ServeConfig override for our app and the floor alike (e.g. max_replicas=1); repeatable")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client_main(args)

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from deployments.app import build
    from ltray.artifacts import ArtifactStore

    n_req = args.requests or (60 if args.quick else 400)
    levels = [1, 8] if args.quick else [1, 8, 32]
    artifacts = ensure_artifacts(args)
    users = pq.read_table(ArtifactStore(artifacts).stage_path("data") / "train.parquet",
                          columns=["user_id"]).column("user_id").to_numpy()
    users = np.unique(users.astype(str))
    rng = np.random.default_rng(0)
    bodies = [{"user_id": str(u), "k": args.k} for u in rng.choice(users, n_req)]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ltray-serve-load-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    bodies_file, warmup = tmp / "bodies.json", tmp / "warmup.json"
    bodies_file.write_text(json.dumps(bodies))
    warmup.write_text(json.dumps(bodies[: min(40, n_req)]))

    cfg, url = start_serve(args.serve)  # on the fit's Ray when the fit above started one
    print(f"artifacts {artifacts}; {len(users):,} users; {n_req} requests per level; "
          f"{os.cpu_count()} CPUs; Ray {ray.__version__}; replicas {cfg.min_replicas}..{cfg.max_replicas} at "
          f"{cfg.num_cpus} CPU, max_ongoing_requests {cfg.max_ongoing_requests}, batch wait "
          f"{cfg.batch_wait_timeout_s * 1e3:g} ms", flush=True)
    results = {"floor": measure("floor", build_floor_app(cfg), url, bodies_file, levels, warmup, "/docs")}
    if any(r["errors"] for r in results["floor"].values()):
        raise SystemExit("the floor app answered with errors; its figures would mean nothing")
    for topo in args.topologies.split(","):
        tcfg = cfg.model_copy(update={"topology": topo})
        results[topo] = measure(topo, build(artifacts, tcfg), url, bodies_file, levels, warmup, "/readyz")
    serve.shutdown()
    ray.shutdown()
    inproc = in_process(artifacts, bodies)

    floor = results["floor"]
    print("\nwhat our code adds per request (p50 ours - p50 floor), and ratios to the floor:")
    for topo in (t for t in results if t != "floor"):
        for c in levels:
            r, f = results[topo][c], floor[c]
            print(f"  {topo:<10} clients={c:>2}  +{r['p50'] - f['p50']:6.1f} ms   p50 x{r['p50'] / f['p50']:.2f}   "
                  f"throughput x{r['rps'] / f['rps']:.2f}")
    for name, r in inproc.items():
        print(f"\nin-process Recommender ({name}): p50 {r['p50']:.1f} ms, {r['cpu_ms']:.1f} CPU-ms per call, "
              f"{r['rps']:.1f} req/s (one caller, 1 thread, {r['n']} calls)", end="")
    print(" -- the limit serving could reach")
    top = levels[-1]
    for topo in (t for t in results if t != "floor"):
        p50_ratio = results[topo][1]["p50"] / floor[1]["p50"]
        rps_ratio = results[topo][top]["rps"] / floor[top]["rps"]
        print(f"targets [{topo}]: p50 at 1 client x{p50_ratio:.2f} of floor (want <= {MAX_P50_RATIO_AT_1}): "
              f"{'met' if p50_ratio <= MAX_P50_RATIO_AT_1 else 'NOT met'}; at {top} clients errors "
              f"{results[topo][top]['errors']} (want 0), throughput x{rps_ratio:.2f} of floor (want >= "
              f"{MIN_RPS_RATIO_AT_32}): {'met' if rps_ratio >= MIN_RPS_RATIO_AT_32 else 'NOT met'}; "
              f"throughput x{results[topo][top]['rps'] / inproc['recommend']['rps']:.2f} of in-process")
    (tmp / "results.json").write_text(json.dumps({"serve": results, "in_process": inproc}, indent=2))


if __name__ == "__main__":
    main()
