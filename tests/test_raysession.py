"""A Ray that ltray starts is private to the process that starts it: it listens on loopback only, and none of
its processes outlive that process, however that process ends (SIGKILL included).

The processes of a session are found from the process that started it (its descendants, by pid and start
time), never by name across the machine: other Ray clusters may run here at the same time."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

import psutil  # isort: skip
from ltray import raysession

REPO = Path(__file__).resolve().parents[1]
LTRAY = REPO / ".venv" / "bin" / "ltray"
SMALL = ["--set", "data.synthetic.n_items=600", "--set", "data.synthetic.n_users=300",
         "--set", "data.synthetic.interactions_per_user=25", "--set", "cf.tune=false",
         "--set", "embed.num_actors=1"]
RAY_UP_TIMEOUT_S = 300  # `ltray fit` until its Ray is up: seconds when idle, minutes at load average 40+
# The watchdog acts as soon as its parent has gone: SIGTERM, at most WATCH_GRACE_S, SIGKILL; the rest is
# slack for a loaded machine. Before the watchdog, the agents were still there after 30 s (issue #19).
GONE_WITHIN_S = 15
LISTEN_SETTLE_S = 5.0  # the dashboard agent opens its HTTP port a moment after ray.init returns


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (is_running compares the start time too, so a reused pid does not count)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> tuple[float, list[psutil.Process]]:
    t0 = time.monotonic()
    while (left := _running(procs)) and time.monotonic() - t0 < timeout_s:
        time.sleep(0.1)
    return time.monotonic() - t0, left


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {p.name()} (parent {p.ppid()})")
        except psutil.Error:
            out.append(str(p.pid))
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # gRPC's IPv6 sockets show 127.0.0.1 as ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def _read_until(proc: subprocess.Popen, prefix: str, timeout_s: float) -> tuple[str, list[str]]:
    """The first line of proc's output that starts with prefix (and the lines before it)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:  # a dead process ends the loop; a hung one is ended by pytest's own timeout
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return line.rstrip("\n"), seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no line starting with {prefix!r}:\n" + "\n".join(seen[-40:]))


@pytest.fixture
def reap():
    """Processes a test started: ended by pid when the test ends, whatever it asserted."""
    procs: list[psutil.Process] = []
    yield procs
    for p in _running(procs):
        try:
            p.kill()
        except psutil.Error:
            pass


# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sigkilled_cli_leaves_no_process_of_its_ray(tmp_path, reap):
    cli = subprocess.Popen([str(LTRAY), "fit", *SMALL, "--address", "local", "--artifacts", str(tmp_path / "run")],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    reap.append(psutil.Process(cli.pid))
    try:
        _read_until(cli, "> ray: started a private local cluster", RAY_UP_TIMEOUT_S)
        session = _tree(cli.pid)
        reap.extend(session)
        names = {p.name() for p in session}
        # What leaked before: the agents the raylet starts (the raylet itself dies with the CLI).
        raylets = [p for p in session if p.name() == "raylet"]
        assert len(raylets) == 1, _describe(session)
        agents = [p for p in session if p.ppid() == raylets[0].pid and p.name().startswith("ray::")]
        assert len(agents) >= 2, _describe(session)
        assert {"gcs_server"} <= names, _describe(session)
    finally:
        cli.kill()  # SIGKILL: no atexit, no ray.shutdown
        cli.wait()
    took, left = _wait_gone(session, GONE_WITHIN_S)
    assert not left, f"still running {GONE_WITHIN_S}s after the SIGKILL: {_describe(left)}"
    print(f"\nall {len(session)} processes of the killed CLI's Ray gone {took:.1f}s after its SIGKILL")


def test_a_private_ray_listens_on_loopback_only_and_ends_with_its_process(reap):
    code = textwrap.dedent("""
        import sys
        import ray
        from ltray.raysession import start_private

        start_private(num_cpus=1, include_dashboard=False, log_to_driver=False)
        @ray.remote
        def pid():
            import os
            return os.getpid()
        ray.get(pid.remote())  # a worker process listens too
        print("up", ray._private.worker._global_node.node_ip_address, flush=True)
        sys.stdin.read()  # until the test closes stdin: then a normal exit, ray.shutdown included
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    reap.append(psutil.Process(driver.pid))
    line, _ = _read_until(driver, "up ", RAY_UP_TIMEOUT_S)
    assert _loopback(line.split()[1]), line

    listening: dict[tuple[str, int], str] = {}
    deadline = time.monotonic() + LISTEN_SETTLE_S
    while time.monotonic() < deadline:
        session = _tree(driver.pid)
        reap.extend(p for p in session if p not in reap)
        for p in session:
            try:
                conns = p.net_connections(kind="inet")
                name = p.name()
            except psutil.Error:
                continue
            listening.update({(c.laddr.ip, c.laddr.port): name for c in conns if c.status == psutil.CONN_LISTEN})
        time.sleep(0.5)
    assert any(name == "gcs_server" for name in listening.values()), listening  # the check saw Ray's ports
    assert any(name == "raylet" for name in listening.values()), listening
    exposed = {addr: name for addr, name in listening.items() if not _loopback(addr[0])}
    assert not exposed, f"listening beyond loopback: {exposed}"

    # A normal end: ray.shutdown at exit ends what Ray started itself; the watchdog what is left.
    session = _tree(driver.pid)
    driver.stdin.close()
    assert driver.wait(timeout=RAY_UP_TIMEOUT_S) == 0
    took, left = _wait_gone(session, GONE_WITHIN_S)
    assert not left, f"still running {GONE_WITHIN_S}s after a normal exit: {_describe(left)}"


def test_the_watchdog_ends_what_was_started_after_it_not_before(tmp_path, reap):
    """Without Ray, in a second: the CLI's helpers started before the watchdog (the log tee) are left alone;
    processes started after it are ended, also an orphan it never recorded that holds a file in the session
    folder (an agent the raylet started just before the CLI died)."""
    session_dir = tmp_path / "session_x"
    (session_dir / "logs").mkdir(parents=True)
    sleeper = "import time; time.sleep(300)"
    # An orphan titled like Ray's agents, holding a log file of the session open.
    agent = (f"import time; f = open({str(session_dir / 'logs' / 'agent.log')!r}, 'a'); "
             f"print('ready', flush=True); time.sleep(300)")
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        from ltray import raysession

        before = subprocess.Popen([sys.executable, "-c", {sleeper!r}])
        time.sleep(0.1)  # start times count in clock ticks (10 ms): a tick apart at least
        raysession._start_watchdog(None)
        after = subprocess.Popen([sys.executable, "-c", {sleeper!r}])
        raysession._tell_watchdog("session {session_dir}")
        time.sleep(0.5)  # the watchdog records `after` on the session line
        # Started after that record, by a process that exits at once: an orphan the watchdog never saw.
        spawner = subprocess.run(["bash", "-c", 'exec -a "ray::FakeAgent" "$0" -c "$1" >/dev/null 2>&1 & echo $!',
                                  sys.executable, {agent!r}], stdout=subprocess.PIPE, text=True)
        print("pids", before.pid, after.pid, raysession._watchdog.pid, spawner.stdout.strip(), flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env())
    reap.append(psutil.Process(parent.pid))
    line, _ = _read_until(parent, "pids ", 60)
    before, after, watchdog, orphan = (psutil.Process(int(p)) for p in line.split()[1:])
    reap.extend([before, after, watchdog, orphan])
    deadline = time.monotonic() + 10
    while not any(f.path.startswith(str(session_dir)) for f in orphan.open_files()):
        assert time.monotonic() < deadline, "the fake agent did not open its log"
        time.sleep(0.05)
    assert orphan.ppid() != parent.pid and orphan.cmdline()[0] == "ray::FakeAgent"

    parent.kill()
    parent.wait()
    took, left = _wait_gone([after, orphan, watchdog], GONE_WITHIN_S)
    assert not left, _describe(left)
    assert _running([before]) == [before]  # started before the watchdog: not its to end


def test_which_addresses_start_a_private_ray(monkeypatch):
    assert raysession.starts_private("local")
    for address in ("auto", "10.0.0.5:6379", "ray://10.0.0.5:10001"):
        assert not raysession.starts_private(address), address
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what `ray job submit` sets for a job's driver
    assert not raysession.starts_private(None)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert raysession.starts_private(None)


def test_a_timed_out_node_start_is_tried_again_and_other_errors_are_not():
    """Ray's fixed 30 s node registration wait runs out on a loaded 2-core machine; nothing else is retried."""
    calls, cleanups = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Exception("The current node timed out during startup. This could happen because ...")
        return "ctx"

    assert raysession.retry_start(flaky, lambda: cleanups.append(1), attempts=3) == "ctx"
    assert (len(calls), len(cleanups)) == (3, 2)

    calls.clear()
    with pytest.raises(Exception, match="timed out during startup"):
        raysession.retry_start(flaky, lambda: None, attempts=2)
    assert len(calls) == 2

    def broken():
        calls.append(1)
        raise ValueError("no such address")

    calls.clear()
    with pytest.raises(ValueError):
        raysession.retry_start(broken, lambda: None, attempts=3)
    assert len(calls) == 1
