"""Start or join Ray for a CLI command, say which in one line, and keep Ray's own logs out of the terminal.

By default Ray's Python loggers, Ray Data's progress dumps and the C++ core worker's lines (written straight
to file descriptor 2) go to a log file in the run folder; Python's ``sys.stderr`` keeps the terminal, so
ltray's lines, warnings and tracebacks stay visible. ``verbose`` leaves everything as Ray sets it up.

A Ray that ltray starts here (``start_private``; ``start_or_join`` when there is nothing to join) is private to
this process: it listens on loopback only, and a watchdog (ltray._raywatch) ends its processes once this
process has ended, however it ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ltray.errors import LtrayError

LOG_NAME = "logs/ray.log"  # inside the run folder
# Ray's loggers that print to the terminal themselves (propagate=False); the rest propagate to "ray".
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
_current_log: Path | None = None  # for the CLI's error hint

# The watchdog of a private Ray: how often it re-reads the process table for new Ray processes (about 20 ms
# of CPU each on a busy 2-core machine; the processes started with Ray are recorded as soon as it is up),
# and how long a leftover Ray process gets between SIGTERM and SIGKILL (as Ray's own reaper: the agents
# left after a SIGKILLed driver are blocked on the dead GCS and have not ended on SIGTERM in 2 s anyway).
WATCH_POLL_S = 5.0
WATCH_GRACE_S = 1.0
# Ray waits a fixed 30 s for a new node to register; a busy 2-core machine can miss that once.
START_ATTEMPTS = 3
_watchdog: subprocess.Popen | None = None  # one per process, kept until it ends

logger = logging.getLogger(__name__)


class ClusterError(LtrayError, RuntimeError):
    """Ray could not start or join a cluster (the CLI prints it as one line with its hint)."""


def describe_address(address: str | None) -> str | None:
    """What ray.init gets: None (join the cluster `ray start` or RAY_ADDRESS names, else start one),
    'local', 'auto', or an address as given. Raises ValueError for an empty one."""
    if address is None:
        return None
    address = address.strip()
    if not address:
        raise ValueError("--address is empty: use local, auto, host:port or ray://host:port")
    return address


@contextlib.contextmanager
def ray_session(address: str | None, log_file: Path | None, verbose: bool) -> Iterator[None]:
    """Ray started or joined for the body of a command (kept for the process, as ray.init always was).

    Quiet (not verbose, with a log_file): Ray's logs go to log_file until the body ends."""
    import ray

    address = describe_address(address)
    quiet = not verbose and log_file is not None
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_logs_to(log_file))
        if not ray.is_initialized():
            # log_to_driver=False: workers' prints stay in Ray's session logs (as before this change).
            try:
                ctx = start_or_join(address, watch_log=log_file if quiet else None, log_to_driver=False,
                                    include_dashboard=False)
            except Exception as e:  # a plain Exception (start-up timeout), ConnectionError, ValueError...
                verb = {None: "start or join", "local": "start"}.get(address, "join")
                raise ClusterError(f"could not {verb} a Ray cluster ({type(e).__name__}: {first_line(e)})",
                                   hint=_hint(log_file if quiet else None)) from e
            logger.info("%s", _joined_or_started(ctx, address, log_file if quiet else None))
        if quiet:
            stack.enter_context(_quiet_ray_data())
        yield


def starts_private(address: str | None) -> bool:
    """Whether ray.init(address) would start a Ray in this process rather than join one: 'local', or no
    address while neither RAY_ADDRESS nor a `ray start` on this machine names a cluster."""
    if address == "local":
        return True
    if address is not None:
        return False
    from ray._private.services import canonicalize_bootstrap_address  # ray.init's own lookup

    return canonicalize_bootstrap_address(None) is None


def start_or_join(address: str | None = None, watch_log: Path | None = None, **init_kwargs):
    """ray.init(address, **init_kwargs), except that a Ray it would start is a private one (start_private)."""
    import ray

    if starts_private(address):
        return start_private(watch_log=watch_log, **init_kwargs)
    return ray.init(address=address, **init_kwargs)


def start_private(watch_log: Path | None = None, **init_kwargs):
    """Start a Ray for this process only: ray.init(address="local", **init_kwargs) on the loopback address,
    and ended with this process.

    Loopback: Ray takes the address of the default route as the node's on Linux, and its GCS, raylet, workers
    and agents (the metrics export port included) then listen on it or on every address; with 127.0.0.1 they
    listen on loopback only (Ray's own default on macOS and Windows).
    Ended with this process: Ray ends the processes it starts directly when the driver dies, not the agents
    the raylet starts; the watchdog ends them all (watch_log: where it says what it stopped)."""
    import ray

    _start_watchdog(watch_log)

    def start():
        with _loopback_node():
            return ray.init(address="local", **init_kwargs)

    ctx = retry_start(start, cleanup=ray.shutdown)
    node = ray._private.worker._global_node
    _tell_watchdog(f"session {node.get_session_dir_path()}")
    if not _is_loopback(node.node_ip_address):  # a Ray upgrade may drop the switch _loopback_node sets
        logger.warning("the private Ray listens on %s, not on loopback only", node.node_ip_address)
    return ctx


def retry_start(start, cleanup, attempts: int = START_ATTEMPTS):
    """start(), again after cleanup() when Ray's node start-up timed out; any other error at once."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            logger.warning("Ray's node did not start in time (a busy machine?); trying again (%d of %d)",
                           attempt + 1, attempts)
            cleanup()


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray's node address is 127.0.0.1 while this is entered: the switch ray._private.services
    .get_node_ip_address reads (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read once at import; an explicit
    _node_ip_address="127.0.0.1" is turned back into the default route's address)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _start_watchdog(log: Path | None) -> None:
    global _watchdog
    if _watchdog is not None and _watchdog.poll() is None:
        return
    if not sys.platform.startswith("linux"):  # it reads /proc
        logger.debug("no watchdog for the private Ray on %s", sys.platform)
        return
    cmd = [sys.executable, "-m", "ltray._raywatch", "--parent", str(os.getpid()),
           "--poll-s", str(WATCH_POLL_S), "--grace-s", str(WATCH_GRACE_S)]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--log", str(log)]
    # Its own session: a Ctrl-C or hang-up of the terminal, or a kill of this process group, leaves it to
    # clean up. Its stdin is a pipe only this process writes to: EOF says this process has ended.
    _watchdog = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL if log is not None else None,
                                 start_new_session=True, close_fds=True)


def _tell_watchdog(line: str) -> None:
    if _watchdog is None or _watchdog.poll() is not None:
        return
    try:
        _watchdog.stdin.write(line.encode() + b"\n")
        _watchdog.stdin.flush()
    except OSError as e:
        logger.warning("the Ray watchdog is gone (%s): a SIGKILL of this process may leave Ray's agents", e)


def _joined_or_started(ctx, address: str | None, log_file: Path | None) -> str:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    node = getattr(ray._private.worker, "_global_node", None)  # None for a ray:// client
    if node is not None and node.head:
        what = f"started a private local cluster ({cpus} CPUs)"
    else:
        where = getattr(ctx, "address_info", {}).get("gcs_address") or address or "?"
        what = f"joined the cluster at {where} ({cpus} CPUs)"
    return f"ray: {what}" + (f"; its logs: {log_file}" if log_file else "")


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """One progress bar per dataset on a terminal (no bar per operator); none when stdout is not one,
    where Ray Data would log every operator's progress every 10 s."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_operator_progress_bars, ctx.enable_progress_bars
    ctx.enable_operator_progress_bars = False
    ctx.enable_progress_bars = saved[1] and sys.stdout.isatty()
    try:
        yield
    finally:
        ctx.enable_operator_progress_bars, ctx.enable_progress_bars = saved


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Ray's Python loggers and file descriptor 2 into `path`; sys.stderr stays on the terminal."""
    global _current_log
    import ray  # noqa: F401  (sets up the 'ray' logger's console handler on import)
    import ray.data  # noqa: F401  (and 'ray.data''s: both are replaced below)

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)  # ray.data logs DEBUG to Ray's session folder; INFO is enough here
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)s -- "
                                           "%(message)s"))
    saved = {}
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        consoles = [h for h in lg.handlers if _is_console(h)]
        if name != "ray" and not consoles:
            continue  # it propagates to "ray" (or only writes Ray's own files)
        saved[name] = list(lg.handlers)
        for h in consoles:
            lg.removeHandler(h)
        lg.addHandler(handler)

    # The C++ core worker writes its ERROR lines to fd 2 itself: point fd 2 at a pipe into the file (through
    # ltray._logtee, which also says so when those lines are Ray's last before it ends this process), and
    # give Python a new stderr on a copy of the terminal's descriptor.
    sys.stderr.flush()
    tee = subprocess.Popen([sys.executable, "-m", "ltray._logtee", str(path), _hint(path)],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # its stderr: the terminal
    old_stderr, term_fd = sys.stderr, os.dup(2)
    sys.stderr = open(term_fd, "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=False)
    os.dup2(tee.stdin.fileno(), 2)
    _current_log = path
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(term_fd, 2)
        sys.stderr.close()
        sys.stderr = old_stderr
        os.close(term_fd)
        tee.stdin.close()  # the tee ends once no process writes to the pipe (it never holds up this one)
        for name, handlers in saved.items():
            lg = logging.getLogger(name)
            lg.removeHandler(handler)
            for h in handlers:
                if h not in lg.handlers:
                    lg.addHandler(h)
        handler.close()
        _current_log = None


def _is_console(h: logging.Handler) -> bool:
    """A handler writing to the terminal: Ray's PlainRayHandler and plain stream handlers (not files)."""
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def _hint(log_file: Path | None) -> str:
    return (f"Ray's logs: {log_file}; " if log_file else "") + (
        "run again (--address local for a private cluster), or with --debug for the traceback")


def lost_cluster_message(e: BaseException) -> tuple[str, str]:
    """One line and a hint for a cluster that failed or went away mid-run."""
    return f"lost the Ray cluster ({type(e).__name__}: {first_line(e)})", _hint(_current_log)


def cluster_lost(e: BaseException) -> bool:
    """Whether `e` says the Ray cluster failed or went away (not a bug in a task's code)."""
    if isinstance(e, ConnectionError):  # Ray raises the builtin when the GCS cannot be reached
        return _raised_in_ray(e)
    exc = sys.modules.get("ray.exceptions")
    if exc is None:
        return False
    kinds = tuple(getattr(exc, n) for n in ("RaySystemError", "RayActorError", "LocalRayletDiedError",
                                            "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                                            "RpcError", "AuthenticationError") if hasattr(exc, n))
    return isinstance(e, kinds)


def first_line(e: BaseException, limit: int = 240) -> str:
    """Ray's messages span many lines (often a remote traceback): the first non-empty one, cut."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raised_in_ray(e: BaseException) -> bool:
    """Whether Ray's own code raised `e` (a ConnectionError from a download is not about the cluster)."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "ray":
            return True
        tb = tb.tb_next
    return False
