"""The artifact store: one run = one folder, a sub-folder per stage, and a manifest.

A stage writes into a temp folder beside its final place and renames it in on
success, so a failed or killed stage leaves the previous good artifacts as they
were. ``manifest.json`` is replaced atomically too and is the record of what is
committed: a stage folder with no manifest entry is not trusted.

The root is a local path or any URI that ``pyarrow.fs`` accepts (``s3://``,
``gs://``, ``file://``). Object stores cannot rename a folder, so a remote stage
is uploaded under ``<stage>/v-<version>/`` and committed by the manifest write
(one object, replaced whole); older versions are deleted after it. Reads
download the committed version into a local cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_OWNER = ".owner"  # host:pid of the process writing a temp folder
_VERSION = ".version"  # the version a stage folder was committed as
_TRACKED_PACKAGES = (
    "ltray", "ray", "torch", "transformers", "faiss-cpu", "faiss-gpu", "implicit",
    "numpy", "pandas", "pyarrow", "scikit-learn",
)


class ArtifactError(RuntimeError):
    """A missing, incomplete or unreachable artifact."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def package_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_of(obj: Any) -> str:
    """A short stable hash of any JSON-able object (configs, input hashes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class ArtifactStore:
    """A run folder. ``writing(stage)`` commits atomically; ``stage_path`` reads.

    ``mode="w"`` (a writer: the pipeline, jobs) recovers from a killed commit on open and creates the
    local folder on its first write, so a run that fails before writing leaves no folder behind.
    ``mode="r"`` (a reader: ``ltray recommend``, Serve) needs a committed run: it raises an
    ``ArtifactError`` naming the path when there is no manifest, never creates anything, and never
    recovers (recovery moves folders; only a writer may do that).
    """

    def __init__(self, uri: str | Path, mode: str = "w"):
        if mode not in ("r", "w"):
            raise ValueError(f"ArtifactStore mode must be 'r' or 'w', not {mode!r}")
        self.uri = str(uri)
        self.mode = mode
        if _is_local(self.uri):
            path = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
            self.root = Path(path).expanduser().resolve()
            self.fs = None
            self._remote_root = None
        else:
            try:
                self.fs, self._remote_root = pafs.FileSystem.from_uri(self.uri)
            except Exception as e:  # pyarrow raises several types for bad URIs
                raise ArtifactError(f"artifact store {self.uri} is not reachable: {e}") from e
            digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
            self.root = Path(os.environ.get("LTRAY_CACHE", "~/.cache/ltray")).expanduser() / "store" / digest
            if mode == "w":
                with contextlib.suppress(OSError):  # object stores have no folders; local-like ones need it
                    self.fs.create_dir(self._remote_root, recursive=True)
                self.root.mkdir(parents=True, exist_ok=True)  # the local cache, not the store
        if mode == "r":
            self._require_manifest()
        elif self.root.is_dir():
            self._recover()

    def _require_manifest(self) -> None:
        """A reader opens committed runs only: say which path holds none, and create nothing."""
        where = str(self.root) if self.fs is None else self.uri
        if self.fs is None and not self.root.exists():
            raise ArtifactError(f"no run folder at {where}: it does not exist",
                                hint="check --artifacts, or fit one first with `ltray fit --artifacts DIR`")
        try:
            text = self._read_text(MANIFEST)
        except OSError as e:  # pyarrow: no such bucket, refused connection, no credentials
            raise ArtifactError(f"artifact store {self.uri} is not reachable: {e}") from e
        if text is None:
            raise ArtifactError(f"{where} is not an ltray run: it holds no {MANIFEST}",
                                hint="check --artifacts, or fit one first with `ltray fit --artifacts DIR`")

    def require(self, *stages: str) -> None:
        """Raise one ArtifactError naming every stage a reader needs that the run has not committed."""
        missing = [s for s in stages if not self.has(s)]
        if missing:
            found = [s for s in self.manifest().get("stages", {}) if self.has(s)]
            raise ArtifactError(
                f"{self.uri} is not a fitted run: stage{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"missing (committed: {', '.join(found) or 'none'})",
                hint=f"run `ltray fit --artifacts {self.uri}` (with the same data options) first")

    def _writable(self) -> None:
        if self.mode != "w":
            raise ArtifactError(f"{self.uri} was opened read-only")

    # -- recovery -------------------------------------------------------------
    def _recover(self) -> None:
        """Undo a commit that was killed between its renames; drop stale temp folders and files.

        A stage folder carries the version it was committed as (``.version``); the manifest entry
        names the version it trusts. A ``.old-<stage>-*`` folder is the previous good stage moved
        aside by a commit: it goes back into place when the stage is missing or holds a version
        the manifest never recorded (the commit died before its manifest update).
        """
        try:
            stages = self.manifest().get("stages", {}) if self.fs is None else {}
        except ArtifactError:
            stages = {}  # a broken manifest is reported on first use, not here
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(_OLD_PREFIX) and p.is_dir() and self.fs is None:
                stage = p.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
                final = self.root / stage
                trusted = (stages.get(stage) or {}).get("version")
                if final.exists() and _version_of(final) != trusted and _version_of(p) == trusted:
                    shutil.rmtree(final)
                if not final.exists():
                    p.rename(final)
                else:
                    shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(_TMP_PREFIX) and _stale(p):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    # -- manifest -------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        text = self._read_text(MANIFEST)
        if text is None:
            return {"stages": {}}
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{self.uri}/{MANIFEST} is not valid JSON: {e}") from e

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        self._writable()
        m = self.manifest()
        for k, v in fields.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k].update(v)
            else:
                m[k] = v
        m.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        m["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        m["packages"] = package_versions()
        self._write_text(MANIFEST, json.dumps(m, indent=2, sort_keys=True, default=str))
        return m

    def _read_text(self, name: str) -> str | None:
        if self.fs is None:
            p = self.root / name
            return p.read_text(encoding="utf-8") if p.exists() else None
        path = f"{self._remote_root}/{name}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")

    def _write_text(self, name: str, text: str) -> None:
        if self.fs is None:
            self.root.mkdir(parents=True, exist_ok=True)  # a writer's folder appears with its first write
            tmp = self.root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.root / name)
            return
        with self.fs.open_output_stream(f"{self._remote_root}/{name}") as f:
            f.write(text.encode("utf-8"))

    # -- stages ---------------------------------------------------------------
    def stage_info(self, stage: str) -> dict[str, Any] | None:
        return self.manifest().get("stages", {}).get(stage)

    def has(self, stage: str) -> bool:
        if self.stage_info(stage) is None:
            return False
        if self.fs is None:
            return self._local_stage(stage) is not None
        remote = self._remote_stage(stage, self.stage_info(stage).get("version"))
        return self.fs.get_file_info(remote).type == pafs.FileType.Directory

    def _local_stage(self, stage: str) -> Path | None:
        """The local folder holding the version the manifest names, or None."""
        trusted = (self.stage_info(stage) or {}).get("version")
        folder = self.root / stage
        # A folder whose version the manifest does not name is from a commit that never finished.
        version = _version_of(folder)
        if folder.is_dir() and (version is None or version == trusted):
            return folder
        if self.mode == "r":
            # A writer is between its renames: the committed version sits aside as .old-<stage>-*.
            for old in self.root.glob(f"{_OLD_PREFIX}{stage}-*"):
                if old.is_dir() and _version_of(old) == trusted:
                    return old
        return None

    def _remote_stage(self, stage: str, version: str | None) -> str:
        return f"{self._remote_root}/{stage}/v-{version}"

    def is_current(self, stage: str, fingerprint: str) -> bool:
        info = self.stage_info(stage)
        return bool(info) and info.get("fingerprint") == fingerprint and self.has(stage)

    def stage_path(self, stage: str) -> Path:
        """A local folder holding the committed stage (downloaded for remote stores)."""
        if not self.has(stage):
            raise ArtifactError(
                f"stage '{stage}' is not in the artifact store {self.uri}; run `ltray {stage}` "
                f"(or `ltray fit`) first"
            )
        if self.fs is None:
            return self._local_stage(stage) or self.root / stage
        local = self.root / stage
        version = self.stage_info(stage).get("version")
        marker = local / ".version"
        if not (marker.exists() and marker.read_text() == str(version)):
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            pafs.copy_files(self._remote_stage(stage, version), str(local),
                            source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            marker.write_text(str(version))
        return local

    @contextlib.contextmanager
    def writing(self, stage: str, fingerprint: str | None = None, **info: Any) -> Iterator[StageWriter]:
        """Write a stage into a temp folder; commit it on success, drop it on error."""
        self._writable()
        created = not self.root.exists()
        tmp = self.root / f"{_TMP_PREFIX}{stage}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        (tmp / _OWNER).write_text(f"{socket.gethostname()}:{os.getpid()}")
        writer = StageWriter(stage, tmp)
        t0 = time.perf_counter()
        try:
            yield writer
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if created:  # the run's first write failed: leave no empty run folder behind
                with contextlib.suppress(OSError):
                    self.root.rmdir()
            raise
        version = uuid.uuid4().hex[:12]
        (tmp / _VERSION).write_text(version)
        self._commit(stage, tmp, version)
        entry = {
            "version": version,
            "fingerprint": fingerprint,
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - t0, 3),
            **info,
            **writer.info,
        }
        self.update_manifest(stages={stage: entry})
        if self.fs is not None:
            self._drop_remote_versions(stage, keep=version)

    def _commit(self, stage: str, tmp: Path, version: str) -> None:
        final = self.root / stage
        if self.fs is None:
            old = self.root / f"{_OLD_PREFIX}{stage}-{uuid.uuid4().hex[:8]}"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            (final / _OWNER).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
            return
        # Remote: upload a new version beside the committed one; the manifest update commits it.
        dest = self._remote_stage(stage, version)
        (tmp / _OWNER).unlink(missing_ok=True)
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(tmp), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        shutil.rmtree(tmp, ignore_errors=True)

    def _drop_remote_versions(self, stage: str, keep: str) -> None:
        """Delete the versions of a remote stage the manifest no longer names (and killed uploads)."""
        selector = pafs.FileSelector(f"{self._remote_root}/{stage}", allow_not_found=True)
        with contextlib.suppress(OSError):
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.Directory and info.base_name != f"v-{keep}":
                    self.fs.delete_dir(info.path)


class StageWriter:
    """What a stage gets while writing: its temp folder and a dict for manifest stats."""

    def __init__(self, stage: str, path: Path):
        self.stage = stage
        self.path = path
        self.info: dict[str, Any] = {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _stale(p: Path, grace_s: float = 3600.0) -> bool:
    """A temp folder whose writer is gone (same host, dead pid) or that is old."""
    owner = p / _OWNER
    try:
        host, pid = owner.read_text().rsplit(":", 1)
    except (OSError, ValueError):
        return time.time() - p.stat().st_mtime > grace_s
    if host != socket.gethostname():
        return time.time() - p.stat().st_mtime > grace_s
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _version_of(folder: Path) -> str | None:
    try:
        return (folder / _VERSION).read_text().strip()
    except OSError:
        return None


def default_artifacts_dir(dataset: str | None) -> str:
    return str(Path("artifacts") / (dataset or "custom"))

