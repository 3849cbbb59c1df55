"""`python -m ltray._logtee LOG HINT`: copies the CLI's file descriptor 2 (Ray's C++ core worker lines) into
LOG, and prints one `error:` line on its own stderr (the terminal) when a line says the cluster went away.

A separate process because Ray ends the driver with _exit(1) when its raylet dies (no Python code runs
after that line), and with an abort when the GCS stays unreachable: only a process outside can still say so.
Imports nothing from ltray or Ray, to start in milliseconds."""

from __future__ import annotations

import sys

# Ray 2.x's last words before it ends the driver process.
LOST = {
    b"Exiting because the Raylet IPC connection failed": "the local raylet died",
    b"Failed to connect to GCS within": "the GCS could not be reached",
}


def main(log: str, hint: str) -> None:
    said = False
    with open(log, "ab") as f:
        for line in sys.stdin.buffer:
            f.write(line)
            f.flush()
            why = next((w for marker, w in LOST.items() if marker in line), None)
            if why and not said:
                said = True
                sys.stderr.write(f"error: lost the Ray cluster ({why})\nhint: {hint}\n")
                sys.stderr.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
