"""The artifact store: one run = one folder, a folder per committed stage version, and a manifest.

A stage writes into a temp folder and is renamed, whole, into ``<stage>@<version>/``; the manifest
(``manifest.json``, replaced atomically) names the version each stage trusts, and ``<stage>`` is a
relative link to that folder, for people and scripts. A committed version folder is never changed,
so a reader that resolved a stage reads one version even while a writer commits the next: it reads
what the manifest named, never a mix and never a half-renamed folder. A superseded version stays on
disk for ``retain_s`` (an hour by default) after it was replaced, for the readers that resolved it;
the next writer drops it after that. A folder the manifest does not name is not trusted.

Writers commit under a lock: ``<run>/.lock`` (``fcntl.flock``; it names the holder's host:pid while
held) guards recovery and each commit's rename + manifest update + link swap. A second writer waits
for it, up to ``lock_timeout_s``, then gets an ``ArtifactError`` naming the lock and its holder. The
kernel frees the lock of a killed writer at once; the next writer's open repairs what it left.

The root is a local path or any URI that ``pyarrow.fs`` accepts (``s3://``, ``gs://``, ``file://``).
Object stores cannot rename a folder, so a remote stage is uploaded under ``<stage>/v-<version>/`` and
committed by the manifest write (one object, replaced whole). Remote writers take a lease instead of
a lock: ``.lease`` (JSON: owner, expires_at) written and read back before each manifest update. It is
best effort (object stores offer no compare-and-swap: two writers racing within a moment can both
win), and a killed writer's lease holds others off until it expires (``LEASE_S``). Reads download the
committed version into a local cache, one folder per version.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import pyarrow.fs as pafs

from ltray.errors import LtrayError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"  # local writers' lock file (flock); holds host:pid of the holder while held
LEASE = ".lease"  # remote writers' lease object (JSON: owner, expires_at)
LOCK_TIMEOUT_S = 60.0  # how long a writer waits for another's commit (a commit holds it for milliseconds)
RETAIN_S = 3600.0  # how long a superseded version stays for the readers that resolved it before the commit
LEASE_S = 300.0  # a remote lease's life: a killed writer's lease holds other writers off at most this long
_STALE_S = 3600.0  # a temp folder (or an unnamed remote upload) this old with no live owner is garbage
_POLL_S = 0.05  # a waiting writer's retry interval on a local lock
_LEASE_POLL_S = 1.0  # ... on a remote lease (each try is a request)
_LEASE_SETTLE_S = 0.2  # between writing a lease and reading it back: a writer racing us shows up by then
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"  # a stage moved aside by a commit of the layout before versioned folders
_OWNER = ".owner"  # host:pid of the process writing a temp folder, as the layout before tagged names kept it
_VERSION = ".version"  # the version a stage folder was committed as; its mtime is the commit time
_AT = "@"  # <stage>@<version>: a committed version's folder
_TRACKED_PACKAGES = (
    "ltray", "ray", "torch", "transformers", "faiss-cpu", "faiss-gpu", "implicit",
    "numpy", "pandas", "pyarrow", "scikit-learn",
)


class ArtifactError(LtrayError, RuntimeError):
    """A missing, incomplete or unreachable artifact."""


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

    ``mode="w"`` (a writer: the pipeline, jobs) recovers from a killed commit on open (under the lock)
    and creates the local folder on its first write, so a run that fails before writing leaves no
    folder behind. ``mode="r"`` (a reader: ``ltray recommend``, Serve) needs a committed run: it raises
    an ``ArtifactError`` naming the path when there is no manifest, never creates anything, never
    recovers, and reads the run as the manifest stood when it opened (all stages from one manifest,
    however many commits follow; open the store again to see them). ``retain_s``: how long a replaced
    version stays for readers; ``lock_timeout_s``: how long a writer waits for another's commit.
    """

    def __init__(self, uri: str | Path, mode: str = "w", *, retain_s: float = RETAIN_S,
                 lock_timeout_s: float = LOCK_TIMEOUT_S):
        if mode not in ("r", "w"):
            raise ValueError(f"ArtifactStore mode must be 'r' or 'w', not {mode!r}")
        self.uri = str(uri)
        self.mode = mode
        self.retain_s = retain_s
        self.lock_timeout_s = lock_timeout_s
        self._pinned: dict[str, Any] | None = None  # a reader's manifest, read once at open
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
            self._pinned = self._require_manifest()
        elif self.root.is_dir():
            self._recover()

    def _require_manifest(self) -> dict[str, Any]:
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
        return self._parse_manifest(text)

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

    # -- the writers' lock ----------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's writer lock, as recovery and each commit do (other writers wait meanwhile).

        Local: ``fcntl.flock`` on ``<run>/.lock``. Remote: the ``.lease`` object (best effort). After
        ``lock_timeout_s`` of waiting: an ``ArtifactError`` naming the lock and its holder.
        """
        self._writable()
        if self.fs is None:
            self.root.mkdir(parents=True, exist_ok=True)
            with _flock(self.root / LOCK, self.lock_timeout_s):
                yield
        else:
            with self._lease():
                yield

    @contextlib.contextmanager
    def _lease(self) -> Iterator[None]:
        me = f"{_me()}:{uuid.uuid4().hex[:8]}"  # two stores in one process are two owners
        deadline = time.monotonic() + self.lock_timeout_s
        waited = False
        while True:
            held = self._read_lease()
            if held is None or held.get("owner") == me or held.get("expires_at", 0) < time.time():
                self._write_text(LEASE, json.dumps({"owner": me, "expires_at": time.time() + LEASE_S}))
                time.sleep(_LEASE_SETTLE_S)
                held = self._read_lease() or {}
                if held.get("owner") == me:
                    break
            if time.monotonic() >= deadline:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.get("expires_at", 0)))
                raise ArtifactError(
                    f"{self.uri}/{LEASE} is held by {held.get('owner')} until {until}: another writer is "
                    f"committing to this run (waited {self.lock_timeout_s:g}s)",
                    hint="wait for that writer to finish; a killed writer's lease runs out by itself")
            if not waited:
                log.info("%s: waiting for the lease held by %s", self.uri, held.get("owner"))
                waited = True
            time.sleep(_LEASE_POLL_S)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if (self._read_lease() or {}).get("owner") == me:
                    self.fs.delete_file(f"{self._remote_root}/{LEASE}")

    def _read_lease(self) -> dict[str, Any] | None:
        text = self._read_text(LEASE)
        try:
            held = json.loads(text) if text else None
        except json.JSONDecodeError:
            return None  # a lease cut off mid-write holds no one
        return held if isinstance(held, dict) else None

    # -- recovery -------------------------------------------------------------
    def _recover(self) -> None:
        """Repair what a killed writer left: drop unnamed versions, stale temp folders and old copies.

        Under the lock, so no commit is in flight: a ``<stage>@<version>`` folder the manifest does not
        name and that is newer than the named one is a commit that died before its manifest update;
        ``<stage>`` is pointed at the named version. A ``.old-<stage>-*`` folder is a stage moved aside
        by a commit of the earlier layout (no versioned folders): it goes back into place when the stage
        is missing or holds a version the manifest never recorded.
        """
        if self.fs is not None:  # the local cache: only temp folders of dead writers to drop
            self._drop_stale_temps()
            return
        with self.locked():
            self._drop_stale_temps()
            try:
                text = self._read_text(MANIFEST)
                stages = self._parse_manifest(text).get("stages", {}) if text is not None else None
            except ArtifactError:
                stages = None  # a broken manifest is reported on first use, not here
            if stages is None:
                return  # without the manifest no version can be told from an orphan: keep them all
            for p in sorted(self.root.iterdir()):
                if p.name.startswith(_OLD_PREFIX):
                    self._recover_old(p, stages)
            for stage, entry in stages.items():
                final = self.root / f"{stage}{_AT}{entry.get('version')}"
                if final.is_dir():
                    self._point(stage, final)
            for stage in sorted({p.name.split(_AT, 1)[0] for p in self._version_dirs()}):
                self._prune_local(stage, (stages.get(stage) or {}).get("version"))

    def _drop_stale_temps(self) -> None:
        for p in sorted(self.root.iterdir()):
            if not p.name.startswith(_TMP_PREFIX):
                continue
            if p.is_symlink():  # a link swap killed between its two steps (under the lock: none is live)
                p.unlink(missing_ok=True)
            elif _stale(p):
                _remove(p)

    def _recover_old(self, p: Path, stages: dict[str, Any]) -> None:
        stage = p.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
        trusted = (stages.get(stage) or {}).get("version")
        final = self.root / stage
        if p.is_symlink() or (self.root / f"{stage}{_AT}{trusted}").is_dir():
            _remove(p)  # the named version has its own folder: this copy is not needed
            return
        if final.is_dir() and not final.is_symlink() and _version_of(final) != trusted \
                and _version_of(p) == trusted:
            shutil.rmtree(final)
        if not final.exists() and not final.is_symlink():
            log.info("%s: put %s back as %s (a commit was killed between its renames)", self.root, p.name, stage)
            p.rename(final)
        else:
            _remove(p)

    def _version_dirs(self) -> list[Path]:
        return [p for p in self.root.iterdir()
                if _AT in p.name and not p.name.startswith(".") and p.is_dir() and not p.is_symlink()]

    # -- manifest -------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The run's manifest: a reader's is the one it opened; a writer reads the current one."""
        if self._pinned is not None:
            return copy.deepcopy(self._pinned)
        return self._current_manifest()

    def _current_manifest(self) -> dict[str, Any]:
        text = self._read_text(MANIFEST)
        return {"stages": {}} if text is None else self._parse_manifest(text)

    def _parse_manifest(self, text: str) -> dict[str, Any]:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{self.uri}/{MANIFEST} is not valid JSON: {e}") from e

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the manifest (dict sections key by key), under the writers' lock."""
        self._writable()
        with self.locked():
            return self._merge_manifest(**fields)

    def _merge_manifest(self, **fields: Any) -> dict[str, Any]:
        m = self._current_manifest()
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
            try:
                return p.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        path = f"{self._remote_root}/{name}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")

    def _write_text(self, name: str, text: str) -> None:
        if self.fs is None:
            self.root.mkdir(parents=True, exist_ok=True)  # a writer's folder appears with its first write
            tmp = self.root / _temp_name(name)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.root / name)
            return
        with self.fs.open_output_stream(f"{self._remote_root}/{name}") as f:
            f.write(text.encode("utf-8"))

    # -- stages ---------------------------------------------------------------
    def stage_info(self, stage: str) -> dict[str, Any] | None:
        return self.manifest().get("stages", {}).get(stage)

    def served_version(self) -> str:
        """The version a run answers with: its rank stage's (Serve's replicas, the Ingress and
        `load_recommender` compare it)."""
        return (self.stage_info("rank") or {}).get("version", "unversioned")

    def has(self, stage: str) -> bool:
        info = self.stage_info(stage)
        if info is None:
            return False
        if self.fs is None:
            return self._local_stage(stage, info) is not None
        remote = self._remote_stage(stage, info.get("version"))
        return self.fs.get_file_info(remote).type == pafs.FileType.Directory

    def _local_stage(self, stage: str, info: dict[str, Any]) -> Path | None:
        """The local folder holding the version the manifest names, or None."""
        trusted = info.get("version")
        folder = self.root / f"{stage}{_AT}{trusted}"
        legacy = self.root / stage
        # Twice: a writer may move a folder of the earlier layout to its versioned name between two looks.
        for _ in range(2):
            if folder.is_dir():
                return folder
            # A run written before versioned folders: the stage folder itself, if the manifest names it.
            if legacy.is_dir() and not legacy.is_symlink() and _version_of(legacy) in (None, trusted):
                return legacy
            if self.mode == "r":
                # A writer of that layout is between its renames: the committed version sits aside.
                for old in self.root.glob(f"{_OLD_PREFIX}{stage}-*"):
                    if old.is_dir() and not old.is_symlink() and _version_of(old) == trusted:
                        return old
        return None

    def _remote_stage(self, stage: str, version: str | None) -> str:
        return f"{self._remote_root}/{stage}/v-{version}"

    def is_current(self, stage: str, fingerprint: str) -> bool:
        info = self.stage_info(stage)
        return bool(info) and info.get("fingerprint") == fingerprint and self.has(stage)

    def stage_path(self, stage: str) -> Path:
        """A local folder holding the committed stage (downloaded for remote stores).

        The folder of one version (``<stage>@<version>``), never changed once committed: read every file
        of the stage from it, not from the ``<stage>`` link, which the next commit re-points.
        """
        info = self.stage_info(stage)
        if not self.has(stage):
            self._raise_missing(stage, info)
        if self.fs is None:
            folder = self._local_stage(stage, info)
            if folder is None:  # dropped between the two looks
                self._raise_missing(stage, info)
            return folder
        version = info.get("version")
        local = self.root / f"{stage}{_AT}{version}"
        if not local.is_dir():
            # Download beside, rename in whole: another process on this machine may read the cache.
            tmp = self.root / _temp_name(f"{stage}{_AT}{version}")
            tmp.mkdir(parents=True)
            try:
                pafs.copy_files(self._remote_stage(stage, version), str(tmp),
                                source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
                tmp.rename(local)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not local.is_dir():  # not another process's download winning the rename
                    raise
            self._prune_cache(stage, version)
        return local

    def shown_path(self, stage: str) -> Path:
        """Where a person finds the committed stage: the ``<stage>`` link of a local run (a stable name
        that follows each commit), else the local copy `stage_path` gives. Programs read `stage_path`."""
        folder = self.stage_path(stage)
        link = self.root / stage
        return link if self.fs is None and link.resolve() == folder.resolve() else folder

    def _raise_missing(self, stage: str, info: dict[str, Any] | None) -> NoReturn:
        now = None
        if info is not None and self._pinned is not None:
            with contextlib.suppress(ArtifactError, OSError):
                now = (self._current_manifest().get("stages", {}).get(stage) or {}).get("version")
        if now and now != info.get("version"):
            raise ArtifactError(
                f"stage '{stage}' version {info.get('version')} of {self.uri}, the one this reader opened, "
                f"was replaced by version {now} and dropped after the retention time",
                hint="open the store again to read the new version")
        raise ArtifactError(
            f"stage '{stage}' is not in the artifact store {self.uri}; run `ltray {stage}` "
            f"(or `ltray fit`) first"
        )

    @contextlib.contextmanager
    def writing(self, stage: str, fingerprint: str | None = None, **info: Any) -> Iterator[StageWriter]:
        """Write a stage into a temp folder; commit it on success, drop it on error."""
        self._writable()
        created = not self.root.exists()
        tmp = self.root / _temp_name(stage)  # its name says whose it is: no moment without an owner
        tmp.mkdir(parents=True)
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

        def entry() -> dict[str, Any]:
            return {
                "version": version,
                "fingerprint": fingerprint,
                "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.perf_counter() - t0, 3),
                **info,
                **writer.info,
            }

        try:
            if self.fs is None:
                self._commit_local(stage, tmp, version, entry)
            else:
                self._commit_remote(stage, tmp, version, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when the commit went through

    def _commit_local(self, stage: str, tmp: Path, version: str, entry: Callable[[], dict[str, Any]]) -> None:
        final = self.root / f"{stage}{_AT}{version}"
        with self.locked():
            (tmp / _VERSION).write_text(version)  # written under the lock: its mtime is the commit time
            tmp.rename(final)
            try:
                self._merge_manifest(stages={stage: entry()})
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)  # never named: no reader can have it
                raise
            # Committed. A kill from here on leaves the link or old versions to the next writer's open.
            self._point(stage, final)
            self._prune_local(stage, version)

    def _point(self, stage: str, final: Path) -> None:
        """Make ``<stage>`` a relative link to ``final`` (atomically: a new link renamed over the old)."""
        link = self.root / stage
        if link.is_symlink() and os.readlink(link) == final.name:
            return
        if link.exists() and not link.is_symlink():
            # A stage folder of the earlier layout moves to its versioned name (dropped once replaced for
            # retain_s); a copy that followed the link, of a version that has its folder, just goes.
            aside = self.root / f"{stage}{_AT}{_version_of(link) or 'unversioned-' + uuid.uuid4().hex[:8]}"
            if aside.exists():  # the same version is there already: this is a copy
                aside = self.root / _temp_name(f"{stage}-copy")
            link.rename(aside)
            if aside.name.startswith(_TMP_PREFIX):
                shutil.rmtree(aside, ignore_errors=True)
        new = self.root / _temp_name(f"{stage}-link")
        new.symlink_to(final.name)
        os.replace(new, link)

    def _prune_local(self, stage: str, current: str | None) -> None:
        stamps = {p.name.split(_AT, 1)[1]: _stamp(p) for p in self._version_dirs()
                  if p.name.split(_AT, 1)[0] == stage}
        for version in _droppable(stamps, current, time.time(), self.retain_s, orphan_grace_s=0.0):
            log.debug("%s: dropped %s%s%s (superseded)", self.root, stage, _AT, version)  # housekeeping
            shutil.rmtree(self.root / f"{stage}{_AT}{version}", ignore_errors=True)

    def _commit_remote(self, stage: str, tmp: Path, version: str, entry: Callable[[], dict[str, Any]]) -> None:
        # Upload a new version beside the committed one; the manifest update commits it.
        dest = self._remote_stage(stage, version)
        (tmp / _VERSION).write_text(version)
        named = False
        try:
            self.fs.create_dir(dest, recursive=True)
            # The stamp first: an upload in flight is then never mistaken for an old unnamed one.
            with self.fs.open_output_stream(f"{dest}/{_VERSION}") as f:
                f.write(version.encode())
            pafs.copy_files(str(tmp), dest, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
            with self.locked():
                self._merge_manifest(stages={stage: entry()})
                named = True
                self._prune_remote(stage, version)
        except BaseException:
            if not named:  # no reader can have it: do not leave it to the stale grace
                with contextlib.suppress(OSError):
                    self.fs.delete_dir(dest)
            raise
        with contextlib.suppress(OSError):  # the upload is this version's local cache
            tmp.rename(self.root / f"{stage}{_AT}{version}")
        self._prune_cache(stage, version)

    def _prune_remote(self, stage: str, current: str) -> None:
        """Delete the versions of a remote stage that no reader may still need (and killed uploads)."""
        selector = pafs.FileSelector(f"{self._remote_root}/{stage}", allow_not_found=True)
        with contextlib.suppress(OSError):
            stamps: dict[str, float | None] = {}
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("v-"):
                    marker = self.fs.get_file_info(f"{info.path}/{_VERSION}")
                    ok = marker.type == pafs.FileType.File and marker.mtime is not None
                    stamps[info.base_name[2:]] = marker.mtime.timestamp() if ok else None
            # Another writer's upload in flight is unnamed and fresh: it stays for the stale grace.
            for version in _droppable(stamps, current, time.time(), self.retain_s, orphan_grace_s=_STALE_S):
                self.fs.delete_dir(self._remote_stage(stage, version))

    def _prune_cache(self, stage: str, current: str) -> None:
        """Drop this machine's cached downloads of a remote stage's other versions after the grace."""
        for p in self._version_dirs():
            name, version = p.name.split(_AT, 1)
            if name == stage and version != current and time.time() - p.stat().st_mtime > self.retain_s:
                shutil.rmtree(p, ignore_errors=True)


class StageWriter:
    """What a stage gets while writing: its temp folder and a dict for manifest stats."""

    def __init__(self, stage: str, path: Path):
        self.stage = stage
        self.path = path
        self.info: dict[str, Any] = {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _droppable(stamps: dict[str, float | None], current: str | None, now: float, retain_s: float,
               orphan_grace_s: float) -> list[str]:
    """The versions of a stage (version -> commit time, None when unknown) that may be deleted.

    Kept: the current one; one it replaced, until ``retain_s`` after it was replaced (the commit time
    of the next newer version); one newer than the current (never named: a commit that died before its
    manifest update, or remotely an upload in flight) for ``orphan_grace_s``. One with no stamp was
    never a whole commit.
    """
    current_t = stamps.get(current)
    known = sorted(t for t in stamps.values() if t is not None)
    drop = []
    for version, t in stamps.items():
        if version == current:
            continue
        if t is None:
            drop.append(version)
        elif current_t is None or t > current_t:
            if now - t > orphan_grace_s:
                drop.append(version)
        else:
            replaced_at = next((s for s in known if s > t), current_t)
            if now - replaced_at > retain_s:
                drop.append(version)
    return sorted(drop)


@contextlib.contextmanager
def _flock(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for up to ``timeout_s``; the file names the holder meanwhile."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise ArtifactError(
                        f"{path} is held by {holder}: another writer is committing to this run "
                        f"(waited {timeout_s:g}s)",
                        hint="wait for that writer to finish, or stop it (a killed writer frees the lock at once)",
                    ) from None
                if not waited:
                    log.info("%s: waiting for the writer lock held by %s", path, holder)
                    waited = True
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me().encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an idle lock names no one
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        host, pid = path.read_text().rsplit(":", 1)
    except (OSError, ValueError):
        return "another process"  # between its lock and its name
    return f"pid {pid} on {host}"


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_HOST_ID = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_name(label: str) -> str:
    """``.tmp-<label>-<host id>.<pid>-<random>``: the owner is in the name, there from the mkdir on."""
    return f"{_TMP_PREFIX}{label}-{_HOST_ID}.{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_of(p: Path) -> tuple[bool, int] | None:
    """(on this host?, pid) of the process writing temp entry ``p``; None when it does not say."""
    with contextlib.suppress(OSError, ValueError):
        host, pid = (p / _OWNER).read_text().rsplit(":", 1)
        return host == socket.gethostname(), int(pid)
    parts = p.name[len(_TMP_PREFIX):].rsplit("-", 2)
    if len(parts) == 3:
        host, _, pid = parts[1].partition(".")
        if pid.isdigit():
            return host == _HOST_ID, int(pid)
    return None


def _remove(p: Path) -> None:
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def _stale(p: Path, grace_s: float = _STALE_S) -> bool:
    """A temp entry whose writer is gone (same host, dead pid) or, when that cannot be told, that is old."""
    owner = _owner_of(p)
    if owner is None or not owner[0]:
        return time.time() - p.stat().st_mtime > grace_s
    try:
        os.kill(owner[1], 0)
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


def _stamp(folder: Path) -> float | None:
    try:
        return (folder / _VERSION).stat().st_mtime
    except OSError:
        return None


def default_artifacts_dir(dataset: str | None) -> str:
    return str(Path("artifacts") / (dataset or "custom"))

