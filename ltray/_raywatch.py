"""`python -m ltray._raywatch --parent PID ...`: ends the Ray processes that process PID started, once PID has
ended, however it ended (SIGKILL, the OOM killer, a crash).

Ray ties the processes it starts itself to the driver (PR_SET_PDEATHSIG), but not what the raylet starts:
after a SIGKILLed driver the dashboard agent and the runtime-env agent see the raylet go, then wait on the
dead GCS to report it, and stay for minutes. This process is started by ltray.raysession before ray.init,
in a session of its own (a Ctrl-C or a hang-up of the terminal does not reach it, nor a kill of the CLI's
process group).

Which processes: those descended from PID that started after this one (the CLI's own helpers started before
it, such as ltray._logtee, are left to end by themselves), recorded when the CLI says Ray is up and every
--poll-s after; at the end, also their descendants then alive, and the Ray processes (a `ray::` title or the
session folder on the command line) that hold a file in a session folder the CLI named: children the
raylet started after the last record, orphaned by the time PID ended. A pid counts only with the start time
it was recorded with (pids are reused). SIGTERM, --grace-s, then SIGKILL.

Linux only (reads /proc). Imports nothing from ltray or Ray, to start in milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
import time
from collections import defaultdict

log = logging.getLogger("ltray.raywatch")

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)
_STOPPED_POLL_S = 0.05  # how often the grace period looks whether the processes have gone


def _table() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (parent pid, start time, state)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def _stat(pid: int) -> tuple[int, int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # after "pid (comm) ": the name may hold spaces
    return int(fields[1]), int(fields[19]), fields[0].decode()


def _descendants(roots: set[int], table: dict[int, tuple[int, int, str]]) -> set[Proc]:
    children = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    found, todo = set(), list(roots)
    while todo:
        for kid in children.get(todo.pop(), ()):
            if (kid, table[kid][1]) not in found:
                found.add((kid, table[kid][1]))
                todo.append(kid)
    return found


def _alive(p: Proc, table: dict[int, tuple[int, int, str]]) -> bool:
    st = table.get(p[0])
    return st is not None and st[1] == p[1] and st[2] not in ("Z", "X")  # a zombie has ended


def _in_session(pid: int, folders: set[str]) -> bool:
    """A Ray process of one of these session folders: an option of its command line names the folder (so a
    `tail` of its logs does not count), or it is a `ray::` process (the agents overwrite their command line
    with their title) holding a file in it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return False
    if any(f"={d}/" in cmdline or f"={d}\0" in cmdline for d in folders):
        return True
    if not cmdline.startswith("ray::"):
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(d + "/") for d in folders):
            return True
    return False


class Watch:
    def __init__(self, parent: int):
        self.parent = parent
        self.me = os.getpid()
        table = _table()
        self.born = table[self.me][1]
        self.known: set[Proc] = set()
        self.sessions: set[str] = set()

    def record(self) -> None:
        # By start time, not by what ran before this line: the CLI may have started Ray's first processes by
        # then. The CLI's helpers started before this process (the log tee) are left to end by themselves.
        table = _table()
        self.known |= {p for p in _descendants({self.parent}, table) if p[1] >= self.born and p[0] != self.me}

    def targets(self) -> set[Proc]:
        table = _table()
        alive = {p for p in self.known if _alive(p, table)}
        alive |= _descendants({pid for pid, _ in alive}, table)
        if self.sessions:
            alive |= {(pid, st[1]) for pid, st in table.items()
                      if st[1] >= self.born and pid != self.me and _in_session(pid, self.sessions)}
        return {p for p in alive if p[0] not in (self.me, self.parent) and _alive(p, table)}


def stop(targets: set[Proc], grace_s: float) -> tuple[int, int]:
    """SIGTERM, then SIGKILL for those still there after grace_s; returns (terminated, killed)."""
    for pid, _ in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    left = targets
    while left and time.monotonic() < deadline:
        time.sleep(_STOPPED_POLL_S)
        table = _table()
        left = {p for p in left if _alive(p, table)}
    table = _table()
    left = {p for p in left if _alive(p, table)}  # checked again: a pid may have been reused meanwhile
    for pid, _ in left:
        _signal(pid, signal.SIGKILL)
    return len(targets) - len(left), len(left)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        log.warning("cannot signal pid %d: %s", pid, e)


def watch(parent: int, poll_s: float, grace_s: float) -> None:
    w = Watch(parent)
    pending = b""
    # stdin is a pipe only the parent writes to: EOF says it has ended (or closed it on purpose).
    while os.getppid() == parent:
        ready, _, _ = select.select([0], [], [], poll_s)
        if ready:
            data = os.read(0, 4096)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                cmd, _, arg = line.decode().partition(" ")
                if cmd == "session" and arg:
                    w.sessions.add(arg.rstrip("/"))
        w.record()
    targets = w.targets()
    if targets:
        terminated, killed = stop(targets, grace_s)
        log.info("ltray: pid %d ended; stopped %d processes of its Ray (%d after SIGTERM, %d with SIGKILL)%s",
                 parent, len(targets), terminated, killed,
                 f" [{', '.join(sorted(w.sessions))}]" if w.sessions else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ltray._raywatch")
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--poll-s", type=float, required=True)
    ap.add_argument("--grace-s", type=float, required=True)
    ap.add_argument("--log", help="append what was stopped to this file (else: warnings only, on stderr)")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # it ends by itself once the parent has ended and it has cleaned up
    handler = logging.FileHandler(args.log, encoding="utf-8") if args.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if args.log else logging.WARNING)
    watch(args.parent, args.poll_s, args.grace_s)


if __name__ == "__main__":
    main()
