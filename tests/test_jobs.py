"""The `ray job submit` entrypoints against a real local Ray head with token auth on (Ray 2.60's default).

The head is this module's own: started with `ray start --head --block` in its own temp dir and process
group, on free loopback ports, and stopped by killing exactly its processes (never `ray stop`, which
would kill every Ray on the machine, the session's `ray_cluster` included). This module does not use
`ray_cluster`: every Ray client here runs in a subprocess with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from ports import free_port, free_ports

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOBS = ("embed_catalog", "build_index", "train_ctr", "evaluate", "pipeline")
# tests/conftest.py's small_config values, cut further where only the plumbing is under test.
SMALL = [
    "data.synthetic.n_items=600", "data.synthetic.n_users=300", "data.synthetic.interactions_per_user=25",
    "cf.iterations=8", "rank.epochs=1", "rank.batch_size=256", "rank.num_workers=1", "eval.tune=false",
    "embed.max_length=32", "rank.refit_on_all=false", "cf.tune=false", "cf.mix=0.5",
]
SETS = [a for s in SMALL for a in ("--set", s)]
STAGES = ("data", "embed", "cf", "index", "rank")



@dataclass
class Head:
    gcs: str          # 127.0.0.1:port, for RAY_ADDRESS
    dashboard: str    # http://127.0.0.1:port, for `ray job submit --address`
    token: str
    env: dict[str, str]
    temp_dir: str
    proc: subprocess.Popen

    def client_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **extra}


def _base_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               LTRAY_DATA_HOME=os.environ["LTRAY_DATA_HOME"],
               # The head listens on loopback; without this switch a client turns RAY_ADDRESS=127.0.0.1:port
               # into the default route's address (Ray's get_node_ip_address) and never reaches it.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return env


def _pids_of(head: Head) -> list[int]:
    """Every process of this head: in the session `ray start` opened, or naming its temp dir on the command
    line. The session finds the agents, which retitle themselves (ray::DashboardAgent) and outlived SIGTERM."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, _, _, session = (p / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if state != "Z" and (int(session) == head.proc.pid or head.temp_dir in cmd):  # a zombie is dead
            pids.append(int(p.name))
    return pids


def _stop_head(head: Head) -> None:
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)  # `ray start --block` takes its children down with it
        try:
            # An idle head is gone in 4 s; after jobs it waited out 30 s in every CI run: the sweep below ends it.
            head.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            head.proc.kill()
    deadline = time.monotonic() + 10
    while (pids := _pids_of(head)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


PORT_FLAGS = ("--port", "--dashboard-port", "--node-manager-port", "--object-manager-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
              "--runtime-env-agent-port", "--ray-client-server-port")


PORT_ERRORS = ("address already in use", "used by other components", "is not available", "port is in use")


class PortTaken(RuntimeError):
    """Another process bound one of the picked ports between picking and `ray start` binding it."""


def _start_head(env: dict[str, str], token: str, log_path: Path) -> Head:
    """`ray start --head --block` on distinct free ports, up once its job API answers with the token."""
    temp_dir = tempfile.mkdtemp(prefix="ltj", dir="/tmp")  # short: Ray's unix sockets live under it
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(f"127.0.0.1:{ports['--port']}", f"http://127.0.0.1:{ports['--dashboard-port']}", token, env,
                temp_dir, proc)
    deadline = time.monotonic() + 180
    while proc.poll() is None:
        try:
            r = httpx.get(f"{head.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if r.status_code == 200:
                return head
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(head)
            pytest.fail(f"the head's job API did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)
    _stop(head)
    log = log_path.read_text()
    if any(s in log.lower() for s in PORT_ERRORS):
        raise PortTaken(log)
    raise RuntimeError(f"ray start exited {proc.returncode}:\n{log[-3000:]}")


def _stop(head: Head) -> None:
    _stop_head(head)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    env = _base_env(secrets.token_hex(32))
    for attempt in range(3):
        log_path = tmp_path_factory.mktemp("head") / "ray-start.log"
        try:
            head = _start_head(env, env["RAY_AUTH_TOKEN"], log_path)
            break
        except PortTaken as e:
            if attempt == 2:
                pytest.fail(f"ray start found a port taken three times:\n{str(e)[-3000:]}")
        except RuntimeError as e:
            pytest.fail(str(e))
    try:
        yield head
    finally:
        _stop(head)
    assert not _pids_of(head), "processes of the test head survived"


def _ray(head: Head, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=head.env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _submit(head: Head, job_id: str, entry: list[str]) -> subprocess.CompletedProcess:
    runtime_env = {"env_vars": {k: head.env[k] for k in ("LTRAY_DATA_HOME", "HF_HUB_OFFLINE",
                                                           "TOKENIZERS_PARALLELISM")}}
    return _ray(head, "job", "submit", "--address", head.dashboard, "--submission-id", job_id,
                "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--", "python", *entry)


def _status(head: Head, job_id: str) -> str:
    r = _ray(head, "job", "status", "--address", head.dashboard, job_id, timeout=120)
    text = (r.stdout + r.stderr).lower()  # "Job 'x' succeeded" (2.60) or "...: SUCCEEDED"
    for state in ("succeeded", "failed", "stopped", "running", "pending"):
        if re.search(rf"\b{state}\b", text):
            return state.upper()
    return text


def _logs(head: Head, job_id: str) -> str:
    return _ray(head, "job", "logs", "--address", head.dashboard, job_id, timeout=120).stdout


def _manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------------
def test_head_refuses_requests_without_the_token(ray_head):
    assert httpx.get(f"{ray_head.dashboard}/api/jobs/", timeout=10).status_code in (401, 403)
    bad = httpx.get(f"{ray_head.dashboard}/api/jobs/", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code in (401, 403)


def test_submitted_pipeline_succeeds_and_resubmitting_is_a_no_op(ray_head, tmp_path):
    art = tmp_path / "art"
    first = f"ltray-pipeline-{uuid.uuid4().hex[:8]}"
    r = _submit(ray_head, first, ["jobs/pipeline.py", "--artifacts", str(art), *SETS])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert _status(ray_head, first) == "SUCCEEDED", _logs(ray_head, first)[-4000:]

    m = _manifest(art)
    assert set(STAGES) | {"eval"} <= set(m["stages"])
    assert m["config"]["data"]["synthetic"]["n_items"] == 600 and m["config"]["rank"]["epochs"] == 1
    assert pq.read_metadata(art / "data" / "items.parquet").num_rows == 600
    assert sum(pq.read_metadata(p).num_rows for p in (art / "embed").glob("part-*.parquet")) == 600
    for f in ("cf/als.npz", "index/tail.faiss", "index/full.faiss", "rank/model.safetensors",
              "eval/report.html", "eval/metrics.json"):
        assert (art / f).is_file(), f
    assert 0 <= m["metrics"]["ltray"]["Recall@20"] <= 1
    assert m["stages"]["eval"]["fingerprint"]
    first_logs = _logs(ray_head, first)
    assert "result: " in first_logs and "unchanged, skipped" not in first_logs
    result = json.loads(first_logs.split("result: ", 1)[1].splitlines()[0])
    assert result["fit_pid"] != result["driver_pid"]  # the later stages ran in a Ray task, not the driver

    second = f"ltray-pipeline-{uuid.uuid4().hex[:8]}"
    r = _submit(ray_head, second, ["jobs/pipeline.py", "--artifacts", str(art), *SETS])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert _status(ray_head, second) == "SUCCEEDED"
    logs = _logs(ray_head, second)
    for stage in ("data", "embed", "cf + index", "rank", "eval"):
        assert f"{stage}: unchanged, skipped" in logs, (stage, logs[-3000:])
    after = _manifest(art)
    for stage in (*STAGES, "eval"):
        assert after["stages"][stage]["version"] == m["stages"][stage]["version"], stage


def test_killed_mid_stage_leaves_the_store_and_the_rerun_completes(ray_head, tmp_path):
    """SIGKILL a job's driver while it embeds: the store keeps only what was committed; re-running completes."""
    from ltray.artifacts import ArtifactStore

    art = tmp_path / "art"
    env = ray_head.client_env(RAY_ADDRESS=ray_head.gcs)
    cmd = [sys.executable, "jobs/embed_catalog.py", "--artifacts", str(art), *SETS]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while True:  # mid-stage: data committed, the embed stage's temp folder open
            tmp = list(art.glob(".tmp-embed-*")) if art.exists() else []
            if tmp and (art / "manifest.json").exists() and "data" in _manifest(art)["stages"]:
                break
            assert proc.poll() is None, f"the job ended before it was killed:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "the embed stage never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    m = _manifest(art)
    assert set(m["stages"]) == {"data"}, m["stages"].keys()
    assert not (art / "embed").exists()
    data_version = m["stages"]["data"]["version"]
    store = ArtifactStore(str(art))  # what the next job does first: drop the dead writer's temp folder
    assert not store.has("embed") and not list(art.glob(".tmp-embed-*"))

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert "data: unchanged, skipped" in rerun.stdout
    assert "embed: 600 encoded" in rerun.stdout
    m = _manifest(art)
    assert m["stages"]["data"]["version"] == data_version
    assert m["stages"]["embed"]["count"] == 600

    # The index is built by a Ray task on the cluster, not in the job's driver process.
    build = subprocess.run([sys.executable, "jobs/build_index.py", "--artifacts", str(art), *SETS], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    result = json.loads(build.stdout.split("result: ", 1)[1].splitlines()[0])
    assert result["build_pid"] != result["driver_pid"]
    assert result["tail_index"]["ntotal"] > 0 and result["full_index"]["ntotal"] == 600
    assert {"cf", "index"} <= set(_manifest(art)["stages"])


# ------------------------------------------------------------------------------------------------
# Bad config: in-process (no Ray is started before the check), every entrypoint, every kind of error.
BAD_CASES = {
    "unknown key": (["--set", "data.synthetic.n_itemz=5"], "data.synthetic.n_itemz: Extra inputs are not permitted"),
    "wrong type": (["--set", "rank.epochs=many"], "rank.epochs: Input should be a valid integer"),
    "unreachable uri": (["--artifacts", "s3://ltray-none/run?endpoint_override=127.0.0.1:{port}&scheme=http",
                         "--store-timeout", "2"], "is not reachable"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("job", JOBS)
def test_each_job_fails_with_one_clear_line(job, case, capsys, tmp_path):
    import importlib

    module = importlib.import_module(f"jobs.{job}")
    argv, expected = BAD_CASES[case]
    argv = [a.format(port=free_port()) for a in argv]
    if "--artifacts" not in argv:
        argv += ["--artifacts", str(tmp_path / "art")]
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip()
    # As the CLI prints it: one error line and one hint line.
    assert len(err.splitlines()) == 2 and "Traceback" not in err, err
    line, hint = err.splitlines()
    assert line.startswith(f"error: {job}: ") and expected in line, err
    assert hint.startswith("hint: ")
    assert not (tmp_path / "art" / "manifest.json").exists()


def test_bad_config_exit_code_from_the_command_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rank:\n  epochs: 2\n  lerning_rate: 0.1\n")
    r = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", str(cfg), "--artifacts", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: pipeline: invalid config in {cfg}: rank.lerning_rate: Extra inputs are not permitted",
        "hint: run again with --debug for the traceback"]


def test_waiting_for_gpus_that_never_come_fails_clearly(ray_head, tmp_path):
    """--wait-for-gpus asks the autoscaler and gives up with one line when the GPUs do not appear."""
    env = ray_head.client_env(RAY_ADDRESS=ray_head.gcs)
    r = subprocess.run([sys.executable, "jobs/embed_catalog.py", "--artifacts", str(tmp_path / "art"),
                        "--wait-for-gpus", "1", "--scale-timeout", "3", *SETS], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert "error: embed_catalog: the cluster offers 0 GPU(s) after 3s; --wait-for-gpus asked for 1" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "art" / "embed").exists()


# ------------------------------------------------------------------------------------------------
# The data options: one list for the CLI and the jobs (ltray.config.DATA_OPTIONS).
SHOP = REPO / "examples" / "shop"
SHOP_OPTIONS = ["--item-id-col", "sku", "--user-id-col", "customer", "--ts-col", "when", "--weight-col", "qty",
                "--text-template", "{title}. Genres: {genres}. {description}"]


def test_jobs_take_the_cli_data_options_without_importing_the_cli(tmp_path):
    import typer.main

    from jobs._common import make_parser, parse_job_args
    from ltray.cli import app
    from ltray.config import DATA_OPTIONS

    flags = {o.flag for o in DATA_OPTIONS}
    assert {"--item-id-col", "--text-col", "--user-id-col", "--ts-col", "--weight-col", "--text-template"} <= flags
    cli = typer.main.get_command(app)
    for name in ("run", "fit"):
        cli_flags = {f for p in cli.commands[name].params for f in p.opts}
        assert flags <= cli_flags, (name, flags - cli_flags)
    values = {o.field: f"v-{o.field}" for o in DATA_OPTIONS if o.field != "dataset"}
    argv = [a for o in DATA_OPTIONS if o.field in values for a in (o.flag, values[o.field])]
    args = parse_job_args([*argv, "--artifacts", str(tmp_path)], make_parser("test"))
    assert {k: getattr(args.cfg.data, k) for k in values} == values
    # A job's module graph holds no CLI (issue #17): build_config lives in ltray.config.
    code = ("import sys; sys.path.insert(0, '.'); import jobs.pipeline, jobs.evaluate, jobs.train_ctr, "
            "jobs.embed_catalog, jobs.build_index; assert 'ltray.cli' not in sys.modules, 'imports the CLI'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_data_error_in_a_stage_task_is_the_clis_error_and_hint(ray_head, tmp_path):
    """The data stage runs in a Ray task: its DataError reaches the job as Ray's RayTaskError, whose text is
    the whole remote traceback. The job prints what the task raised, one line, and the hint; the column
    options then map the same files, and the data and embed stages run."""
    env = ray_head.client_env(RAY_ADDRESS=ray_head.gcs)
    files = ["--items", str(SHOP / "items.csv"), "--interactions", str(SHOP / "interactions.csv")]
    cmd = [sys.executable, "jobs/embed_catalog.py", "--artifacts", str(tmp_path / "art"), *files,
           "--set", "embed.max_length=32"]
    bad = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2, (bad.stdout + bad.stderr)[-3000:]
    lines = bad.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert lines[errors[0]] == (f"error: embed_catalog: {SHOP / 'items.csv'}, column 'item_id': missing item_id "
                                "column (found: sku, title, genres, description)")
    assert lines[errors[0] + 1] == "hint: map it with --item-id-col"
    assert not (tmp_path / "art" / "data").exists()

    good = subprocess.run([*cmd, *SHOP_OPTIONS], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, (good.stdout + good.stderr)[-3000:]
    m = _manifest(tmp_path / "art")
    assert m["config"]["data"]["item_id_col"] == "sku" and m["config"]["data"]["ts_col"] == "when"
    assert m["stages"]["data"]["items"] == 48 and m["stages"]["embed"]["count"] == 48
