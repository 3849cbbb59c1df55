"""A store read while it is written: real writer and reader processes on one run folder at the same time.

Every read must come whole from a version the reader's manifest named; writers serialise on the run's
lock (a second one waits, then gives up naming the holder); a writer SIGKILLed anywhere in a commit
leaves a store the next writer repairs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ltray.artifacts import ArtifactError, ArtifactStore

REPO = Path(__file__).resolve().parents[1]
FILES = ("a.txt", "b.txt", "c.txt")  # a stage of several files: a read between them spans a commit
RUN_S = 6.0  # how long writers commit and readers read at once
RETAIN_S = 2.0  # short, so replaced versions are dropped while readers run
READY_S = 60.0  # how long a child process may take to start (imports on a loaded machine)

# Children start their timed loops together: each says it is ready (imports done), then waits for "go".
_PRELUDE = textwrap.dedent("""
    import time
    from pathlib import Path

    def start_together(out, go):
        Path(out + ".ready").touch()
        while not Path(go).exists():
            time.sleep(0.01)
""")

# A writer commits its stages over and over; every file of a version holds that version's token, which
# the manifest entry records too. It writes the last version it committed per stage to its result file.
_WRITER = _PRELUDE + textwrap.dedent("""
    import json, sys, time, uuid
    from ltray.artifacts import ArtifactStore
    root, stages, seconds, retain, out, go = sys.argv[1], sys.argv[2].split(","), *map(float, sys.argv[3:5]), *sys.argv[5:7]
    files = {files!r}
    store = ArtifactStore(root, retain_s=retain)
    start_together(out, go)
    last, n, end = {{}}, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for stage in stages:
            token = f"{{stage}}-{{n}}-{{uuid.uuid4().hex[:6]}}"
            with store.writing(stage) as w:
                for name in files:
                    (w / name).write_text(token * 200)
                w.info["token"] = token
            last[stage] = store.stage_info(stage)["version"]
        n += 1
    with open(out, "w") as f:
        json.dump({{"rounds": n, "last": last}}, f)
""").format(files=FILES)

# A reader opens the store, reads every stage file by file, and checks each file and the folder's
# .version against what its manifest named; every other open it keeps the store a while and reads again
# (the version it opened, though commits went on meanwhile).
_READER = _PRELUDE + textwrap.dedent("""
    import json, sys, time
    from ltray.artifacts import ArtifactStore
    root, stages, seconds, out, go = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), *sys.argv[4:6]
    files = {files!r}
    start_together(out, go)
    reads, bad, errors, versions, i = 0, [], [], set(), 0
    def check(store, stage):
        info = store.stage_info(stage)
        path = store.stage_path(stage)
        got = set()
        for name in files:
            got.add((path / name).read_text())
            time.sleep(0.002)  # widen the window a commit may fall into
        folder_version = (path / ".version").read_text()
        versions.add(info["version"])
        if got == {{info["token"] * 200}} and folder_version == info["version"]:
            return True
        return (stage, info["version"], folder_version, info["token"], sorted(g[:40] for g in got))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i += 1
        try:
            store = ArtifactStore(root, mode="r")
            for again in range(1 + i % 2):
                if again:
                    time.sleep(0.2)
                for stage in stages:
                    result = check(store, stage)
                    reads += 1
                    if result is not True:
                        bad.append(result)
        except Exception as e:
            errors.append(repr(e))
    with open(out, "w") as f:
        json.dump({{"reads": reads, "bad": bad[:5], "n_bad": len(bad), "errors": errors[:5],
                   "n_errors": len(errors), "versions": len(versions)}}, f)
""").format(files=FILES)

# Holds the writers' lock, says so, and sleeps (until killed, or for argv[3] seconds).
_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ltray.artifacts import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    with store.locked():
        Path(sys.argv[2]).write_text("held")
        time.sleep(float(sys.argv[3]))
""")


def _python(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    return out


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_S
    while not path.exists():
        assert proc.poll() is None, f"the child ended before it was ready:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the child never got ready"
        time.sleep(0.02)


def _seed(root: Path, stages: tuple[str, ...]) -> None:
    """One committed version of each stage, so readers have a run to open from the start."""
    store = ArtifactStore(root)
    for stage in stages:
        with store.writing(stage) as w:
            for name in FILES:
                (w / name).write_text(f"{stage}-seed" * 200)
            w.info["token"] = f"{stage}-seed"


def _consistent(root: Path) -> dict:
    """A writer's open repairs the store; then every named version is whole and linked, and no debris is left."""
    store = ArtifactStore(root)
    manifest = store.manifest()
    for stage, entry in manifest["stages"].items():
        path = store.stage_path(stage)
        assert path.name == f"{stage}@{entry['version']}"
        assert os.readlink(root / stage) == path.name
        assert {(path / f).read_text() for f in FILES} == {entry["token"] * 200}, stage
    named = {f"{s}@{e['version']}" for s, e in manifest["stages"].items()}
    leftovers = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == [], {n: sorted(q.name for q in (root / n).iterdir()) if (root / n).is_dir() else "file"
                             for n in leftovers}
    assert (root / ".lock").read_text() == ""  # no one holds it
    return {"named": named, "dirs": {p.name for p in root.iterdir() if "@" in p.name}}


def test_readers_only_ever_read_a_committed_version_while_two_writers_commit(tmp_path):
    """Two writer processes commit (one stage in common) and two readers read, all at once, for RUN_S."""
    root = tmp_path / "run"
    writers = {"w1": ("embed", "cf"), "w2": ("embed", "index")}
    stages = ("embed", "cf", "index")
    _seed(root, stages)
    go = tmp_path / "go"
    procs = {name: _python(_WRITER, root, ",".join(st), RUN_S, RETAIN_S, tmp_path / f"{name}.json", go)
             for name, st in writers.items()}
    procs |= {f"r{i}": _python(_READER, root, ",".join(stages), RUN_S, tmp_path / f"r{i}.json", go)
              for i in (1, 2)}
    for name, proc in procs.items():
        _wait_for(tmp_path / f"{name}.json.ready", proc)
    go.touch()  # all at once, for RUN_S
    for proc in procs.values():
        _finish(proc, timeout=READY_S + RUN_S + 60)
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}

    for name in ("r1", "r2"):
        r = results[name]
        assert r["n_errors"] == 0, r["errors"]
        assert r["n_bad"] == 0, r["bad"]  # never a mix of versions, never a file of another version
        assert r["reads"] >= 30, r  # it did read all along
        assert r["versions"] >= 5, r  # ... across many commits
    for name in writers:
        assert results[name]["rounds"] >= 5, results[name]
    # The lock kept every manifest update: each stage only one writer commits names that writer's last.
    state = _consistent(root)
    assert state["named"] >= {f"cf@{results['w1']['last']['cf']}", f"index@{results['w2']['last']['index']}"}
    # Replaced versions were dropped as the run went on, not kept for ever.
    rounds = sum(results[w]["rounds"] for w in writers)
    assert len([d for d in state["dirs"] if d.startswith("embed@")]) < rounds


def test_a_second_writer_waits_for_the_lock_then_gives_up_naming_the_holder(tmp_path):
    root = tmp_path / "run"
    _seed(root, ("embed",))
    before = ArtifactStore(root).stage_info("embed")["version"]
    early = ArtifactStore(root, lock_timeout_s=0.5)  # opened before the holder took the lock
    ready = tmp_path / "ready"
    holder = _python(_HOLDER, root, ready, 120)
    try:
        _wait_for(ready, holder)
        t0 = time.monotonic()
        with pytest.raises(ArtifactError) as opening:
            ArtifactStore(root, lock_timeout_s=0.5)  # a writer's open recovers, under the lock
        assert time.monotonic() - t0 >= 0.5  # it waited first
        assert str(root.resolve() / ".lock") in str(opening.value)
        assert f"pid {holder.pid}" in str(opening.value)
        with pytest.raises(ArtifactError, match=f"held by pid {holder.pid}"), early.writing("embed") as w:
            (w / "a.txt").write_text("refused")
        assert early.stage_info("embed")["version"] == before
        assert not list(root.glob(".tmp-*"))  # the refused stage's temp folder is gone
        # A killed holder frees the lock at once: the next writer opens and commits.
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    store = ArtifactStore(root, lock_timeout_s=5)
    with store.writing("embed") as w:
        for name in FILES:
            (w / name).write_text("after-kill" * 200)
        w.info["token"] = "after-kill"
    assert store.stage_info("embed")["version"] != before
    _consistent(root)


def test_a_second_writer_waits_out_a_short_hold(tmp_path):
    root = tmp_path / "run"
    _seed(root, ("embed",))
    store = ArtifactStore(root)
    ready = tmp_path / "ready"
    hold_s = 1.5
    holder = _python(_HOLDER, root, ready, hold_s)
    try:
        _wait_for(ready, holder)
        t0 = time.monotonic()
        with store.writing("embed") as w:  # the default timeout outlasts the hold
            for name in FILES:
                (w / name).write_text("waited" * 200)
            w.info["token"] = "waited"
        waited = time.monotonic() - t0
    finally:
        _finish(holder, timeout=60)
    assert waited >= hold_s / 2, waited  # it did wait for the holder (which was ready part of hold_s)
    assert (store.stage_path("embed") / "a.txt").read_text() == "waited" * 200
    _consistent(root)


_KILL_ROUNDS = 6  # kills at random points of a writer committing in a loop


def test_a_writer_killed_at_random_points_of_its_commits_leaves_a_store_the_next_writer_repairs(tmp_path):
    """SIGKILL a writer committing in a tight loop (tiny stages: most of its time is commits) at random
    moments; after each kill a reader still reads whole versions, and the next writer's open repairs."""
    root = tmp_path / "run"
    stages = ("embed", "cf")
    _seed(root, stages)
    rng = random.Random(19)
    for round_ in range(_KILL_ROUNDS):
        versions = {s: e["version"] for s, e in ArtifactStore(root).manifest()["stages"].items()}
        proc = _python(_WRITER, root, ",".join(stages), 600, RETAIN_S, tmp_path / "never.json", root)
        try:
            deadline = time.monotonic() + READY_S
            # Started committing: a stage's version moved on.
            while all(ArtifactStore(root, mode="r").stage_info(s)["version"] == v for s, v in versions.items()):
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "the writer never committed"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.3))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # Before any repair: a reader reads whole, named versions.
        reader = ArtifactStore(root, mode="r")
        for stage in stages:
            token = reader.stage_info(stage)["token"]
            assert {(reader.stage_path(stage) / f).read_text() for f in FILES} == {token * 200}, round_
        _consistent(root)


SMALL_FIT = ["data.synthetic.n_items=600", "data.synthetic.n_users=300", "data.synthetic.interactions_per_user=25",
             "cf.iterations=8", "rank.epochs=2", "rank.batch_size=256", "rank.refit_on_all=false", "cf.tune=false",
             "cf.mix=0.5"]  # conftest's small_config, the run serve_artifacts holds


@pytest.mark.slow
def test_recommend_answers_from_committed_versions_while_fit_rewrites_the_run(serve_artifacts, tmp_path):
    """`ltray fit` re-commits the run (a new ranker seed) while this process keeps loading the run and
    recommending from it: every answer comes from a version some manifest named, and none fails."""
    import shutil

    from ltray.recommend import load_recommender

    run = tmp_path / "run"
    shutil.copytree(serve_artifacts, run, symlinks=True)
    before = ArtifactStore(run, mode="r").manifest()["stages"]["rank"]["version"]
    users = list(load_recommender(run).models.user_ids[:5])
    overrides = [a for o in [*SMALL_FIT, "rank.seed=7"] for a in ("--set", o)]
    fit = subprocess.Popen([str(REPO / ".venv" / "bin" / "ltray"), "fit", *overrides, "--address", "local",
                            "--artifacts", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        while fit.poll() is None:
            rec = load_recommender(run)
            for u in users:
                assert len(rec.recommend(u, k=10, explain=False)) == 10
            seen.append(rec.version)
    finally:
        out = fit.communicate(timeout=600)[0]
    assert fit.returncode == 0, out[-3000:]
    after = ArtifactStore(run, mode="r").manifest()["stages"]["rank"]["version"]
    assert after != before and len(seen) >= 3, (before, after, len(seen))
    assert set(seen) <= {before, after}, set(seen)  # whole versions only, each one a manifest named
    assert load_recommender(run).version == after
