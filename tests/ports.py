"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. Every socket stays bound until all are picked: one bound and closed at a
    time, the kernel may hand the same port out twice (a CI run once gave Ray's GCS and its runtime-env
    agent the same one)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]
