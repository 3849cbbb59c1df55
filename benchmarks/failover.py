"""Failover: a Serve replica SIGKILLed under load, per layout; how many requests fail and how long no answer comes.

    .venv/bin/python benchmarks/failover.py [--artifacts DIR | --quick] [--clients 16] [--seconds 35]
                                            [--layouts colocated,chain] [--serve FIELD=VALUE ...] [--label L]

For each layout, starts the app on a fitted run (a local Ray of its own), drives POST /recommend from
a separate process with N clients (httpx, asyncio; each request times out after --client-timeout s,
as a load balancer would) for a fixed time, and SIGKILLs one replica process of a deployment a third
of the way in: the colocated `Pipeline`, or the chain's `CTRRanker`. Prints total requests, failed
ones (non-2xx or client timeout), the failure %, the longest gap without a successful answer after
the kill, how long Serve took to find the replica dead and to run a replacement, and whether the
target is met (fewer than 0.5% failed and answers again within 5 s). Results go to
benchmarks/results/failover.json, under the run's label (the --serve overrides, or "defaults"), next
to the runs already there: compare the defaults with e.g. `--serve min_replicas=1`.

A client that gets a 503 waits its Retry-After before asking again (as a well-behaved client does);
the 503 still counts as a failure. Without --artifacts it fits MovieLens into
artifacts/movielens-latest-small (a few minutes; a no-op when already there); --quick: the small
synthetic run (benchmarks/serve_load.py's).
"""


import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, ensure_artifacts, start_serve, wait_ready  # noqa: E402  (sets the data / offline env too)

RESULTS = ROOT / "benchmarks" / "results" / "failover.json"
# The target under this probe.
MAX_FAILED_PCT = 0.5
MAX_GAP_S = 5.0
KILLED = {"colocated": "Pipeline", "chain": "CTRRanker"}  # the deployment whose replica dies, per layout
KILL_AT = 1 / 3  # of the run: steady load before, and time after for the replacement to come up
REPLACEMENT_WAIT_S = 120  # how long after the kill to watch for the replacement replica
POLL_S = 0.25  # how often the driver looks at the deployment's replicas after the kill
APP = "failover"
DETAIL_CHARS = 160  # of a failed answer's body: enough to tell which error it was


# -- the load generator (runs in its own process, so the driver's Ray calls do not slow it) ---------------
async def _drive(url: str, users: list[str], clients: int, seconds: float, timeout_s: float, k: int) -> list:
    import httpx

    rows: list[tuple] = []  # (start, end, status or 0 = no answer, Retry-After?, error detail or None)
    deadline = time.time() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def worker(seed: int):
            rng = np.random.default_rng(seed)
            while time.time() < deadline:
                t0 = time.time()
                retry_after = detail = None
                try:
                    r = await client.post("/recommend", json={"user_id": str(rng.choice(users)), "k": k})
                    status, retry_after = r.status_code, r.headers.get("retry-after")
                    detail = None if status == 200 else r.text[:DETAIL_CHARS]
                except httpx.HTTPError as e:  # the client timeout, or a dropped connection
                    status, detail = 0, type(e).__name__
                rows.append((t0, time.time(), status, retry_after is not None, detail))
                if status == 503 and retry_after is not None:
                    await asyncio.sleep(min(float(retry_after), max(0.0, deadline - time.time())))

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return rows


def client_main(args) -> None:
    users = json.loads(Path(args.users).read_text())
    rows = asyncio.run(_drive(args.url, users, args.clients, args.seconds, args.client_timeout, args.k))
    Path(args.out).write_text(json.dumps(rows))


# -- the replica to kill ----------------------------------------------------------------------------------
def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Live replica actors of one deployment -> their worker process ids, from our own cluster's GCS
    (`ray.util.state.list_actors` needs the dashboard, and an address when other Rays run here; a
    process scan could hit another Ray's app of the same name)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["Name"]: a["Pid"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and (a.get("Name") or "").startswith(prefix) and a.get("Pid")}


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    dep = status.deployments.get(deployment) if status else None
    return dep.replica_states.get("RUNNING", 0) if dep else 0


def summarize(rows: list, killed_at: float, end: float) -> dict:
    ok_ends = sorted(r[1] for r in rows if 200 <= r[2] < 300 and r[1] >= killed_at)
    marks = [killed_at, *ok_ends, end]
    gap = max(b - a for a, b in zip(marks, marks[1:], strict=False))
    failed = [r for r in rows if not 200 <= r[2] < 300]
    statuses: dict[str, int] = {}
    details: dict[str, int] = {}
    for r in rows:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        if r[4] is not None:
            details[r[4]] = details.get(r[4], 0) + 1
    pct = 100 * len(failed) / max(1, len(rows))
    return {"requests": len(rows), "failed": len(failed), "failed_pct": round(pct, 3),
            "statuses": statuses,  # "0": no answer within the client timeout (or a dropped connection)
            "503_without_retry_after": sum(1 for r in rows if r[2] == 503 and not r[3]),
            "failure_details": details,  # answer bodies (or the client's error) of the failed requests
            "longest_gap_after_kill_s": round(gap, 2),
            "target_met": pct < MAX_FAILED_PCT and gap < MAX_GAP_S}


def run_layout(layout: str, artifacts: str, cfg, url: str, users_file: Path, args) -> dict:
    import psutil
    from ray import serve

    from deployments.app import build

    deployment = KILLED[layout]
    serve.run(build(artifacts, cfg.model_copy(update={"topology": layout})), name=APP, route_prefix="/",
              blocking=False)
    wait_ready(url, "/readyz")
    target = running_replicas(APP, deployment)
    out = users_file.parent / f"rows-{layout}.json"
    client = subprocess.Popen([sys.executable, __file__, "--client", "--url", url, "--users", str(users_file),
                               "--clients", str(args.clients), "--seconds", str(args.seconds),
                               "--client-timeout", str(args.client_timeout), "--k", str(args.k),
                               "--out", str(out)])
    started = time.time()
    time.sleep(args.seconds * KILL_AT)
    before = replica_pids(APP, deployment)
    rss_mb = round(sum(psutil.Process(p).memory_info().rss for p in before.values()) / 2**20 / len(before))
    name, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    print(f"  [{layout}] SIGKILLed {name} (pid {pid}) at {killed_at - started:.1f} s; "
          f"{len(before)} replica(s) of {deployment} were running", flush=True)
    detected_s = replaced_s = None
    # Serve's controller finding the replica dead (fewer running; its health check does), then the
    # replacement: a new replica actor, and the deployment whole again (watched past the load's end).
    while client.poll() is None or (replaced_s is None and time.time() - killed_at < REPLACEMENT_WAIT_S):
        running = running_replicas(APP, deployment)
        if detected_s is None and running < target:
            detected_s = time.time() - killed_at
        if replaced_s is None and set(replica_pids(APP, deployment)) - set(before) and running >= target:
            replaced_s = time.time() - killed_at
        time.sleep(POLL_S)
    if client.returncode:
        raise SystemExit(f"the load client failed ({client.returncode})")
    rows = json.loads(out.read_text())
    res = {"layout": layout, "killed": deployment, "replicas": len(before), "replica_rss_mb": rss_mb,
           "clients": args.clients,
           "seconds": args.seconds, "client_timeout_s": args.client_timeout,
           "killed_at_s": round(killed_at - started, 2),
           **summarize(rows, killed_at, max(r[1] for r in rows)),
           "dead_replica_found_s": None if detected_s is None else round(detected_s, 2),
           "replacement_running_s": None if replaced_s is None else round(replaced_s, 2)}
    serve.delete(APP)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="a fitted run folder (default: fit MovieLens)")
    p.add_argument("--quick", action="store_true", help="the small synthetic run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=35.0, help="load time per layout")
    p.add_argument("--client-timeout", type=float, default=10.0, help="seconds a client waits for an answer")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--layouts", default="colocated,chain")
    p.add_argument("--serve", action="append", default=[], metavar="FIELD=VALUE",
                   help="a ServeConfig override (e.g. min_replicas=1, health_check_period_s=10); repeatable")
    p.add_argument("--out", default=str(RESULTS), help="the results file (with --client: the rows file)")
    p.add_argument("--label", help="this run's key in the results file (default: the --serve overrides, or "
                   "'defaults'); other runs there are kept")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--users", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client_main(args)

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from ltray.artifacts import ArtifactStore

    artifacts = ensure_artifacts(args)
    users = pq.read_table(ArtifactStore(artifacts, mode="r").stage_path("data") / "train.parquet",
                          columns=["user_id"]).column("user_id").to_numpy()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ltray-failover-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    users_file = tmp / "users.json"
    users_file.write_text(json.dumps(np.unique(users.astype(str)).tolist()))

    if ray.is_initialized():  # the fit above started one with the fit's resources
        ray.shutdown()
    # A Ray of our own: never someone else's cluster on this machine.
    cfg, url = start_serve(args.serve, address="local", runtime_env={"env_vars": {
        k: os.environ[k] for k in ("LTRAY_DATA_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}})
    print(f"artifacts {artifacts}; {args.clients} clients for {args.seconds:g} s per layout, client timeout "
          f"{args.client_timeout:g} s; {os.cpu_count()} CPUs; Ray {ray.__version__}; replicas "
          f"{cfg.min_replicas}..{cfg.max_replicas} at {cfg.num_cpus} CPU; health check every "
          f"{cfg.health_check_period_s:g} s (timeout {cfg.health_check_timeout_s:g} s); stage retries "
          f"{cfg.stage_retries}", flush=True)
    results = []
    for layout in args.layouts.split(","):
        r = run_layout(layout, artifacts, cfg, url, users_file, args)
        results.append(r)
        print(f"  [{layout}] {r['requests']} requests, {r['failed']} failed ({r['failed_pct']:.2f}%; "
              f"statuses {r['statuses']}), longest gap without an answer after the kill "
              f"{r['longest_gap_after_kill_s']:.2f} s; Serve found the replica dead after "
              f"{r['dead_replica_found_s']} s, its replacement running after {r['replacement_running_s']} s "
              f"-- target (< {MAX_FAILED_PCT}% failed, < {MAX_GAP_S:g} s): "
              f"{'met' if r['target_met'] else 'NOT met'}", flush=True)
    serve.shutdown()
    ray.shutdown()
    load = os.getloadavg()[0]
    run = {"artifacts": artifacts, "cpus": os.cpu_count(), "load_average_1m_at_end": round(load, 1),
           "ray": ray.__version__, "serve_config": cfg.model_dump(include={
               "min_replicas", "max_replicas", "num_cpus", "stage_retries", "health_check_period_s",
               "health_check_timeout_s", "retry_wait_s"}), "layouts": results}
    label = args.label or (" ".join(args.serve) or "defaults")
    write_results(Path(args.out), label, run)
    print(f"wrote {args.out} [{label}]")


def write_results(path: Path, label: str, run: dict) -> None:
    """One run into the results file under its label; the runs already there stay (before/after, ablations)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc = {"target": {"max_failed_pct": MAX_FAILED_PCT, "max_gap_s": MAX_GAP_S},
           "runs": {**doc.get("runs", {}), label: run}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
