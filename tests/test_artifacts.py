"""The artifact store: atomic stage writes that survive exceptions, kills and half-done commits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ltray.artifacts import ArtifactError, ArtifactStore, fingerprint_of

REPO = Path(__file__).resolve().parents[1]


def _commit(store: ArtifactStore, stage: str, payload: str, fingerprint: str | None = None, **info) -> str:
    with store.writing(stage, fingerprint=fingerprint, **info) as w:
        (w / "payload.txt").write_text(payload)
        np.save(w / "vectors.npy", np.full((3, 2), len(payload), dtype=np.float32))
        w.info["rows"] = 3
    return store.stage_info(stage)["version"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temp_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-")))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_commit_is_visible_with_its_manifest_entry(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    version = _commit(store, "embed", "v1", fingerprint="fp1", model="minilm")
    folder = store.stage_path("embed")
    assert folder == (tmp_path / "run" / "embed").resolve()
    assert (folder / "payload.txt").read_text() == "v1"
    assert np.load(folder / "vectors.npy", allow_pickle=False).shape == (3, 2)
    entry = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["embed"]
    assert entry["version"] == version and entry["fingerprint"] == "fp1"
    assert entry["model"] == "minilm" and entry["rows"] == 3 and entry["seconds"] >= 0
    assert not (folder / ".owner").exists()  # the writer's bookkeeping does not ship with the stage
    assert _temp_entries(tmp_path / "run") == []


def test_an_exception_inside_writing_keeps_the_previous_stage(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    version = _commit(store, "embed", "good")
    before = _snapshot(root)
    with pytest.raises(RuntimeError, match="encoder blew up"), store.writing("embed", fingerprint="new") as w:
        (w / "payload.txt").write_text("half")
        raise RuntimeError("encoder blew up")
    assert _snapshot(root) == before  # manifest and stage byte for byte
    assert _temp_entries(root) == []
    assert store.stage_info("embed")["version"] == version
    assert (store.stage_path("embed") / "payload.txt").read_text() == "good"


def test_an_interrupt_inside_writing_is_cleaned_up_too(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt), store.writing("cf") as w:
        (w / "als.npz").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not store.has("cf")
    assert not (tmp_path / "run").exists()  # the run's first write failed: no empty run folder is left


def test_a_failed_first_write_leaves_no_stage(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    with pytest.raises(ValueError), store.writing("rank"):
        raise ValueError("bad")
    assert not store.has("rank")
    with pytest.raises(ArtifactError) as e:
        store.stage_path("rank")
    assert "rank" in str(e.value) and "ltray rank" in str(e.value)


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ltray.artifacts import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    with store.writing("embed", fingerprint="new") as w:
        (w / "payload.txt").write_text("half written")
        Path(sys.argv[2]).write_text(str(w.path))
        time.sleep(120)
""")


def test_a_killed_stage_leaves_the_store_intact_and_the_next_open_cleans_up(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    version = _commit(store, "embed", "good", fingerprint="old")
    before = _snapshot(root)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(root), str(ready)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the writer died before it was ready"
            assert time.monotonic() < deadline, "the writer never got ready"
            time.sleep(0.05)
        tmp = Path(ready.read_text())
        assert (tmp / "payload.txt").read_text() == "half written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()  # reaped, so its pid is really gone
    assert proc.returncode == -signal.SIGKILL
    # Right after the kill: the half-written temp folder is there, and nothing else changed.
    assert tmp.exists() and tmp.name.startswith(".tmp-embed-")
    assert {k: v for k, v in _snapshot(root).items() if not k.startswith(".tmp-")} == before
    assert store.is_current("embed", "old") and not store.is_current("embed", "new")
    # The next open drops the stale temp folder and reads the previous version.
    reopened = ArtifactStore(root)
    assert not tmp.exists()
    assert _temp_entries(root) == []
    assert _snapshot(root) == before
    assert reopened.stage_info("embed")["version"] == version
    assert (reopened.stage_path("embed") / "payload.txt").read_text() == "good"


def test_a_temp_folder_of_a_live_writer_is_left_alone(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    with store.writing("index") as w:
        (w / "tail.faiss").write_bytes(b"x")
        ArtifactStore(root)  # another open while this process is still writing
        assert w.path.exists()
    assert store.has("index")


def test_a_kill_between_the_two_renames_is_undone(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    version = _commit(store, "embed", "good", fingerprint="old")
    before = _snapshot(root)
    # The state a commit leaves when killed after moving the old stage aside and before
    # renaming the new one in: no stage folder, the old one under .old-, the new one under .tmp-.
    (root / "embed").rename(root / ".old-embed-1a2b3c4d")
    new = root / ".tmp-embed-9f8e7d6c"
    new.mkdir()
    (new / "payload.txt").write_text("new")
    (new / ".version").write_text("never-recorded")
    (new / ".owner").write_text(f"{socket.gethostname()}:{_dead_pid()}")
    reopened = ArtifactStore(root)
    assert _temp_entries(root) == []
    assert _snapshot(root) == before
    assert reopened.is_current("embed", "old")
    assert reopened.stage_info("embed")["version"] == version
    assert (reopened.stage_path("embed") / "payload.txt").read_text() == "good"


def test_a_kill_after_the_renames_but_before_the_manifest_restores_the_recorded_version(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    _commit(store, "embed", "good", fingerprint="old")
    before = _snapshot(root)
    # The new stage is in place, the old one is still aside, the manifest still names the old one.
    (root / "embed").rename(root / ".old-embed-1a2b3c4d")
    (root / "embed").mkdir()
    (root / "embed" / "payload.txt").write_text("new")
    (root / "embed" / ".version").write_text("never-recorded")
    reopened = ArtifactStore(root)
    assert _snapshot(root) == before
    assert (reopened.stage_path("embed") / "payload.txt").read_text() == "good"


def test_a_stage_folder_the_manifest_does_not_name_is_not_trusted(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    _commit(store, "embed", "good", fingerprint="old")
    # The commit finished its renames and the old copy was dropped, but the manifest update never ran.
    (root / "embed" / ".version").write_text("never-recorded")
    reopened = ArtifactStore(root)
    assert not reopened.has("embed")
    assert not reopened.is_current("embed", "old")
    with pytest.raises(ArtifactError):
        reopened.stage_path("embed")
    # Writing the stage again makes it whole.
    _commit(reopened, "embed", "again", fingerprint="old")
    assert reopened.is_current("embed", "old")


def test_a_stale_manifest_temp_file_is_removed_a_fresh_one_kept(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    store.update_manifest(metrics={"recall@10": 0.1})
    stale = root / ".tmp-manifest.json-0000aaaa"
    stale.write_text("{")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = root / ".tmp-manifest.json-0000bbbb"
    fresh.write_text("{")
    ArtifactStore(root)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a writer that is alive right now
    assert store.manifest()["metrics"] == {"recall@10": 0.1}


def test_is_current_follows_the_fingerprint(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    fp_a = fingerprint_of({"model": "minilm", "max_length": 128})
    fp_b = fingerprint_of({"model": "minilm", "max_length": 256})
    assert fp_a != fp_b and fp_a == fingerprint_of({"max_length": 128, "model": "minilm"})
    assert not store.is_current("embed", fp_a)
    _commit(store, "embed", "a", fingerprint=fp_a)
    assert store.is_current("embed", fp_a) and not store.is_current("embed", fp_b)
    _commit(store, "embed", "b", fingerprint=fp_b)
    assert store.is_current("embed", fp_b) and not store.is_current("embed", fp_a)
    assert not store.is_current("cf", fp_b)
    # A manifest entry whose folder is gone is not current.
    shutil.rmtree(tmp_path / "run" / "embed")
    assert not store.is_current("embed", fp_b)


def test_update_manifest_merges_sections_and_records_versions(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    store.update_manifest(config={"data": {"dataset": "synthetic"}}, metrics={"a": 1})
    created = store.manifest()["created_at"]
    store.update_manifest(metrics={"b": 2}, dataset="synthetic")
    m = ArtifactStore(tmp_path / "run").manifest()
    assert m["metrics"] == {"a": 1, "b": 2}
    assert m["config"] == {"data": {"dataset": "synthetic"}}
    assert m["dataset"] == "synthetic" and m["created_at"] == created
    assert "numpy" in m["packages"] and "pyarrow" in m["packages"]
    _commit(store, "data", "x")
    assert set(store.manifest()["stages"]) == {"data"}
    assert store.manifest()["metrics"] == {"a": 1, "b": 2}  # a commit keeps the other sections


def test_a_corrupt_manifest_is_reported_not_ignored(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "manifest.json").write_text("{not json")
    store = ArtifactStore(root)  # opening works, so the user can see and fix it
    with pytest.raises(ArtifactError, match="manifest.json"):
        store.manifest()


def test_file_uri_is_the_same_local_store(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root.as_uri())
    assert store.root == root.resolve()
    _commit(store, "eval", "report", fingerprint="f")
    assert (root / "eval" / "payload.txt").read_text() == "report"
    plain = ArtifactStore(root)
    assert plain.is_current("eval", "f")
    assert (plain.stage_path("eval") / "payload.txt").read_text() == "report"


def test_a_remote_filesystem_uri_commits_and_reads_back(tmp_path, monkeypatch):
    # pyarrow's in-memory filesystem exercises the remote path: stage locally, upload, move, download.
    monkeypatch.setenv("LTRAY_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore("mock:///runs/demo")
    assert store.fs is not None and str(store.root).startswith(str(tmp_path / "cache"))
    import pyarrow.fs as pafs

    def remote_versions() -> list[str]:
        infos = store.fs.get_file_info(pafs.FileSelector("runs/demo/embed", allow_not_found=True))
        return sorted(i.base_name for i in infos)

    v1 = _commit(store, "embed", "v1", fingerprint="f1")
    assert remote_versions() == [f"v-{v1}"]
    assert (store.stage_path("embed") / "payload.txt").read_text() == "v1"
    # A failed write uploads nothing and leaves v1 committed.
    with pytest.raises(RuntimeError), store.writing("embed", fingerprint="f2") as w:
        (w / "payload.txt").write_text("half")
        raise RuntimeError("boom")
    assert remote_versions() == [f"v-{v1}"] and store.is_current("embed", "f1")
    # An upload killed before its manifest update is an orphan version: ignored, then dropped.
    store.fs.create_dir("runs/demo/embed/v-orphan")
    assert (store.stage_path("embed") / "payload.txt").read_text() == "v1"
    v2 = _commit(store, "embed", "v2", fingerprint="f2")
    assert remote_versions() == [f"v-{v2}"]
    assert store.is_current("embed", "f2") and not store.is_current("embed", "f1")
    # The local cache is refreshed for the new version.
    assert (store.stage_path("embed") / "payload.txt").read_text() == "v2"
    assert store.manifest()["stages"]["embed"]["fingerprint"] == "f2"
    with pytest.raises(ArtifactError):
        store.stage_path("cf")


def test_an_unreachable_uri_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="not reachable"):
        ArtifactStore("nosuchscheme://bucket/run")
