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
import pyarrow.fs as pafs
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
    """Every file's bytes and every link's target (rglob does not follow links)."""
    return {str(p.relative_to(root)): (b"-> " + os.readlink(p).encode()) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def _temp_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-")))


def _legacy_run(root: Path, payload: str) -> str:
    """A run as the layout before versioned folders left it: ``embed/`` itself holds the committed version."""
    version = "0123456789ab"
    (root / "embed").mkdir(parents=True)
    (root / "embed" / "payload.txt").write_text(payload)
    (root / "embed" / ".version").write_text(version)
    (root / "manifest.json").write_text(json.dumps({"stages": {"embed": {"version": version, "fingerprint": "old"}}}))
    (root / ".lock").touch()  # what the first writer's open adds (empty while no one holds it)
    return version


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_commit_is_visible_with_its_manifest_entry(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    version = _commit(store, "embed", "v1", fingerprint="fp1", model="minilm")
    folder = store.stage_path("embed")
    # One folder per committed version; <stage> links to the one the manifest names.
    assert folder == (tmp_path / "run" / f"embed@{version}").resolve()
    assert (folder / ".version").read_text() == version
    assert os.readlink(tmp_path / "run" / "embed") == f"embed@{version}"
    assert (tmp_path / "run" / "embed" / "payload.txt").read_text() == "v1"
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


def test_a_kill_between_the_two_renames_of_the_earlier_layout_is_undone(tmp_path):
    root = tmp_path / "run"
    version = _legacy_run(root, "good")
    before = _snapshot(root)
    # The state a commit leaves when killed after moving the old stage aside and before
    # renaming the new one in: no stage folder, the old one under .old-, the new one under .tmp-.
    (root / "embed").rename(root / ".old-embed-1a2b3c4d")
    new = root / ".tmp-embed-9f8e7d6c"
    new.mkdir()
    (new / "payload.txt").write_text("new")
    (new / ".version").write_text("never-recorded")
    (new / ".owner").write_text(f"{socket.gethostname()}:{_dead_pid()}")
    assert (ArtifactStore(root, mode="r").stage_path("embed") / "payload.txt").read_text() == "good"
    reopened = ArtifactStore(root)
    assert _temp_entries(root) == []
    assert _snapshot(root) == before
    assert reopened.is_current("embed", "old")
    assert reopened.stage_info("embed")["version"] == version
    assert (reopened.stage_path("embed") / "payload.txt").read_text() == "good"


def test_a_kill_after_the_renames_of_the_earlier_layout_restores_the_recorded_version(tmp_path):
    root = tmp_path / "run"
    _legacy_run(root, "good")
    before = _snapshot(root)
    # The new stage is in place, the old one is still aside, the manifest still names the old one.
    (root / "embed").rename(root / ".old-embed-1a2b3c4d")
    (root / "embed").mkdir()
    (root / "embed" / "payload.txt").write_text("new")
    (root / "embed" / ".version").write_text("never-recorded")
    reopened = ArtifactStore(root)
    assert _snapshot(root) == before
    assert (reopened.stage_path("embed") / "payload.txt").read_text() == "good"


def test_a_stage_folder_of_the_earlier_layout_the_manifest_does_not_name_is_not_trusted(tmp_path):
    root = tmp_path / "run"
    _legacy_run(root, "good")
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
    shutil.rmtree(store.stage_path("embed"))
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
    store = ArtifactStore("mock:///runs/demo", retain_s=0)  # a replaced version goes at the next commit
    assert store.fs is not None and str(store.root).startswith(str(tmp_path / "cache"))

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


# -- versioned folders: what a kill at each step of a commit leaves, and what the next writer does --------

def _stage_dirs(root: Path, stage: str = "embed") -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(f"{stage}@"))


def test_a_commit_killed_before_its_manifest_update_leaves_an_unnamed_version_the_next_writer_drops(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    version = _commit(store, "embed", "good", fingerprint="old")
    before = _snapshot(root)
    # The state after the rename into <stage>@<version> and before the manifest names it.
    orphan = root / "embed@0rphan000000"
    orphan.mkdir()
    (orphan / "payload.txt").write_text("new")
    (orphan / ".version").write_text("0rphan000000")
    reader = ArtifactStore(root, mode="r")
    assert (reader.stage_path("embed") / "payload.txt").read_text() == "good"
    assert orphan.exists()  # a reader never deletes
    ArtifactStore(root)
    assert _snapshot(root) == before
    assert store.stage_info("embed")["version"] == version


def test_a_commit_killed_before_its_link_swap_is_repointed_by_the_next_writer(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root, retain_s=3600)
    old = _commit(store, "embed", "old")
    new = _commit(store, "embed", "new")
    # The manifest names the new version; the link still points at the old one, and a half-made new link
    # (made, never renamed over the old) lies beside it.
    (root / "embed").unlink()
    (root / "embed").symlink_to(f"embed@{old}")
    (root / ".tmp-embed-link-1a2b3c4d").symlink_to(f"embed@{new}")
    # A reader follows the manifest, not the link.
    assert (ArtifactStore(root, mode="r").stage_path("embed") / "payload.txt").read_text() == "new"
    ArtifactStore(root)
    assert os.readlink(root / "embed") == f"embed@{new}"
    assert _temp_entries(root) == []
    assert _stage_dirs(root) == sorted([f"embed@{old}", f"embed@{new}"])  # the old one within its grace


def test_a_replaced_version_stays_for_the_retention_time_after_it_was_replaced(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root, retain_s=3600)
    v1, v2, v3 = (_commit(store, "embed", p) for p in ("one", "two", "three"))
    assert _stage_dirs(root) == sorted(f"embed@{v}" for v in (v1, v2, v3))
    # v1 was replaced two hours ago (when v2 was committed); v2 only now, by v3.
    now = time.time()
    for v, age in ((v1, 7300), (v2, 7200)):
        os.utime(root / f"embed@{v}" / ".version", (now - age, now - age))
    ArtifactStore(root, retain_s=3600)
    assert _stage_dirs(root) == sorted(f"embed@{v}" for v in (v2, v3))
    ArtifactStore(root, retain_s=0)
    assert _stage_dirs(root) == [f"embed@{v3}"]
    assert (store.stage_path("embed") / "payload.txt").read_text() == "three"


def test_a_reader_reads_the_manifest_it_opened_until_that_version_is_dropped(tmp_path):
    root = tmp_path / "run"
    writer = ArtifactStore(root, retain_s=3600)
    v1 = _commit(writer, "embed", "one")
    _commit(writer, "cf", "cf-one")
    reader = ArtifactStore(root, mode="r")
    v2 = _commit(writer, "embed", "two")
    # Opened before the commit: the whole run as it stood then, stage info and files alike.
    assert reader.stage_info("embed")["version"] == v1
    assert (reader.stage_path("embed") / "payload.txt").read_text() == "one"
    assert ArtifactStore(root, mode="r").stage_info("embed")["version"] == v2
    # Once v1 is dropped, the early reader is told so, not handed v2 under v1's name.
    ArtifactStore(root, retain_s=0)
    with pytest.raises(ArtifactError, match=f"version {v1} .*was replaced by version {v2}") as e:
        reader.stage_path("embed")
    assert "open the store again" in e.value.hint
    assert (reader.stage_path("cf") / "payload.txt").read_text() == "cf-one"
    assert (ArtifactStore(root, mode="r").stage_path("embed") / "payload.txt").read_text() == "two"


def test_a_run_of_the_earlier_layout_is_read_then_moved_to_versioned_folders_by_its_next_commit(tmp_path):
    root = tmp_path / "run"
    old = _legacy_run(root, "good")
    assert (ArtifactStore(root, mode="r").stage_path("embed") / "payload.txt").read_text() == "good"
    store = ArtifactStore(root, retain_s=3600)
    assert store.stage_path("embed") == root.resolve() / "embed"  # opening moves nothing
    new = _commit(store, "embed", "next")
    assert os.readlink(root / "embed") == f"embed@{new}"
    assert _stage_dirs(root) == sorted([f"embed@{old}", f"embed@{new}"])  # the old one, for its readers
    assert (root / f"embed@{old}" / "payload.txt").read_text() == "good"
    assert (store.stage_path("embed") / "payload.txt").read_text() == "next"


def test_a_copy_that_followed_the_links_is_tidied_by_its_first_writer(tmp_path):
    src = tmp_path / "run"
    version = _commit(ArtifactStore(src), "embed", "good", fingerprint="fp")
    dest = tmp_path / "copy"
    shutil.copytree(src, dest)  # symlinks=False: embed/ is copied as a second, real folder
    assert not (dest / "embed").is_symlink()
    assert (ArtifactStore(dest, mode="r").stage_path("embed") / "payload.txt").read_text() == "good"
    store = ArtifactStore(dest)
    assert os.readlink(dest / "embed") == f"embed@{version}"
    assert _stage_dirs(dest) == [f"embed@{version}"] and _temp_entries(dest) == []
    assert store.is_current("embed", "fp")


def test_the_lock_names_its_holder_only_while_held_and_a_second_writer_gives_up_naming_it(tmp_path):
    root = tmp_path / "run"
    store = ArtifactStore(root)
    v1 = _commit(store, "embed", "good")
    lock = root / ".lock"
    other = ArtifactStore(root, lock_timeout_s=0.2)
    with store.locked():
        assert lock.read_text() == f"{socket.gethostname()}:{os.getpid()}"
        # Each open file of .lock is its own flock, so a second store in this process waits too.
        with pytest.raises(ArtifactError) as e, other.writing("embed") as w:
            (w / "payload.txt").write_text("refused")
        assert str(lock) in str(e.value) and f"pid {os.getpid()}" in str(e.value)
        with pytest.raises(ArtifactError, match=r"\.lock is held by"):
            other.update_manifest(note="x")
    assert lock.read_text() == ""
    assert _temp_entries(root) == [] and _stage_dirs(root) == [f"embed@{v1}"]
    assert (store.stage_path("embed") / "payload.txt").read_text() == "good"
    _commit(other, "embed", "after")  # free again


def test_a_remote_writer_waits_for_a_live_lease_and_takes_an_expired_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LTRAY_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore("mock:///runs/demo", lock_timeout_s=0.5)
    v1 = _commit(store, "embed", "v1")
    assert store.fs.get_file_info("runs/demo/.lease").type == pafs.FileType.NotFound  # given back

    def lease(owner: str, expires_in: float) -> None:
        with store.fs.open_output_stream("runs/demo/.lease") as f:
            f.write(json.dumps({"owner": owner, "expires_at": time.time() + expires_in}).encode())

    lease("otherhost:4242:abcd", 300)
    with pytest.raises(ArtifactError, match=r"runs/demo/\.lease is held by otherhost:4242:abcd until") as e:
        _commit(store, "embed", "v2")
    assert "runs out by itself" in e.value.hint
    uploads = store.fs.get_file_info(pafs.FileSelector("runs/demo/embed"))
    assert [i.base_name for i in uploads] == [f"v-{v1}"]  # the refused upload is deleted
    assert (store.stage_path("embed") / "payload.txt").read_text() == "v1"
    lease("otherhost:4242:abcd", -1)  # its writer died: the lease ran out
    _commit(store, "embed", "v2")
    assert (store.stage_path("embed") / "payload.txt").read_text() == "v2"
    assert store.fs.get_file_info("runs/demo/.lease").type == pafs.FileType.NotFound


def test_shown_path_is_the_stable_link_of_a_local_run(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    with store.writing("eval") as w:
        (w.path / "report.html").write_text("one")
    first = store.shown_path("eval")
    assert first == store.root / "eval" and (first / "report.html").read_text() == "one"
    assert store.stage_path("eval") != first  # programs read the versioned folder
    with store.writing("eval") as w:
        (w.path / "report.html").write_text("two")
    assert store.shown_path("eval") == first and (first / "report.html").read_text() == "two"
