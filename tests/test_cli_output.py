"""What `ltray run` prints: ltray's own lines, one line naming the Ray cluster, Ray's logs in the run folder;
a lost cluster is one `error:` line. One small end-to-end run (a private cluster, `--address local`, so a
cluster someone else started on this machine is never touched) serves every assertion on the output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ltray import cli
from ltray.raysession import cluster_lost, first_line

REPO = Path(__file__).resolve().parents[1]
LTRAY = REPO / ".venv" / "bin" / "ltray"
SMALL = ["--set", "data.synthetic.n_items=600", "--set", "data.synthetic.n_users=300",
         "--set", "data.synthetic.interactions_per_user=25", "--set", "cf.tune=false", "--set", "rank.epochs=1",
         "--set", "rank.refit_on_all=false", "--set", "eval.tune=false",
         "--set", "embed.num_actors=1"]  # one encoder to load: the run's slowest start on a busy machine
RUN_TIMEOUT_S = 600  # a few minutes on an idle 2-core machine; 5-6 min at load average 20
RAY_LOG_LINE = re.compile(r"^(\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s+(INFO|WARNING|DEBUG|ERROR|E|W|I)\b|\(\w+ pid=)")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The small synthetic `ltray run` as a user runs it, stdout and stderr together as on a terminal."""
    run_dir = tmp_path_factory.mktemp("quiet") / "run"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([str(LTRAY), "run", *SMALL, "--address", "local", "--artifacts", str(run_dir)],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=RUN_TIMEOUT_S, env=env)
    return r, run_dir


@pytest.mark.slow
def test_the_default_run_prints_ltrays_lines_only(small_run):
    r, run_dir = small_run
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout[-3000:]
    assert len(lines) <= 30, f"{len(lines)} lines:\n{r.stdout}"
    ray_lines = [ln for ln in lines if RAY_LOG_LINE.match(ln) or "core_worker" in ln]
    assert not ray_lines, ray_lines
    noise = [ln for ln in lines if "Warning:" in ln or ln.startswith("Traceback")]  # a Python warning, a crash
    assert not noise, noise
    assert any(ln.startswith("report: ") and ln.endswith("report.html") for ln in lines), r.stdout
    assert any(ln.startswith("> eval: Recall@20") for ln in lines), r.stdout
    # Ray's lines went to the run folder, and the first line said where.
    log = run_dir / "logs" / "ray.log"
    assert log.is_file() and "INFO" in log.read_text(encoding="utf-8")


@pytest.mark.slow
def test_address_local_starts_a_private_cluster_and_says_so_once(small_run):
    r, run_dir = small_run
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("> ray: ")]
    assert len(said) == 1, r.stdout
    assert re.fullmatch(r"> ray: started a private local cluster \(\d+ CPUs\); its logs: .*ray\.log", said[0])
    assert str(run_dir / "logs" / "ray.log") in said[0].replace("\n", "")


def test_fd2_goes_to_the_log_and_python_stderr_stays(tmp_path):
    """The C++ core worker writes to file descriptor 2 and Ray's loggers to their handlers: both land in the
    file; ltray's own stderr (rich, warnings, tracebacks) still reaches the terminal."""
    log = tmp_path / "logs" / "ray.log"
    code = f"""
import logging, os, sys, warnings
from pathlib import Path
from ltray.raysession import _logs_to
with _logs_to(Path({str(log)!r})):
    os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:1: from C++\\n")
    logging.getLogger("ray").warning("ray python line")
    logging.getLogger("ray.data").info("ray data line")
    print("ltray line", file=sys.stderr)
    warnings.warn("ltray warning")
os.write(2, b"after\\n")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # fd 2 reaches the file through the tee process, which may still be copying once the run has ended
    # (the run never waits for it): read until its line is there or the deadline passes.
    deadline = time.monotonic() + 60
    while "from C++" not in (text := log.read_text(encoding="utf-8")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "from C++" in text and "ray python line" in text and "ray data line" in text
    assert "ltray line" in r.stderr and "ltray warning" in r.stderr and "after" in r.stderr
    assert "from C++" not in r.stderr and "ray python line" not in r.stderr


def test_a_lost_cluster_is_one_error_line():
    """Whatever Ray raises when its cluster goes away ends as `error:` + `hint:`, exit 2, no traceback."""
    import ray.exceptions

    app = typer.Typer()

    @app.command()
    @cli._errors_as_lines
    def boom(kind: str, debug: bool = False):
        if kind == "system":
            raise ray.exceptions.RaySystemError("System error: GCS unreachable\nmore\nlines")
        raise ray.exceptions.ActorDiedError()

    for kind in ("system", "actor"):
        res = CliRunner().invoke(app, [kind])
        assert res.exit_code == 2, res.output
        out = [ln for ln in res.output.splitlines() if ln.strip()]
        assert out[0].startswith("error: lost the Ray cluster ("), res.output
        assert out[1].startswith("hint: ") and "--address local" in out[1]
        assert len(out) == 2 and "Traceback" not in res.output


def test_only_ray_connection_errors_count_as_the_cluster():
    import ray.exceptions

    assert cluster_lost(ray.exceptions.RaySystemError("x"))
    assert not cluster_lost(ConnectionError("a download failed"))  # not raised inside Ray
    assert not cluster_lost(ValueError("x"))
    assert first_line(RuntimeError("\n  first\nsecond")) == "first"


def test_ray_ending_the_process_still_gets_an_error_line(tmp_path):
    """When the raylet dies Ray's core worker writes one line to fd 2 and calls _exit(1): no Python runs after
    it, so the tee that carries fd 2 into the log prints the error line."""
    log = tmp_path / "logs" / "ray.log"
    code = f"""
import os
from pathlib import Path
from ltray.raysession import _logs_to
with _logs_to(Path({str(log)!r})):
    os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:9: Exiting because the Raylet IPC connection "
                b"failed and the local Raylet is dead. Status: IOError\\n")
    os._exit(1)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == "error: lost the Ray cluster (the local raylet died)", r.stderr
    assert lines[1].startswith(f"hint: Ray's logs: {log};") and len(lines) == 2
    assert "Raylet IPC" in log.read_text(encoding="utf-8")
