"""An object-store data root (``HRLXF_DATA=s3://bucket/prefix``, any fsspec protocol): the store holds the data,
and each host works in a mirror of it.

Every stage reads and writes the data root as a file system (Parquet scans, torch checkpoints, directories
renamed into place), which an object store is not. So a pipeline run (`flows.pipeline.run_pipeline`)
1. takes the store's lease, ``.hrlxf-run.lease``, an object created only if absent: this is also the check that
   the store answers, so an unreachable store or a missing bucket fails before any world starts, naming the URL;
   a second run on the same store, from any host, refuses and names the holder (an expired lease is taken over);
2. pulls into its mirror (`hrlxf_agent.paths.mirror_of`) what changed in the store since it last synced;
3. runs the stages on the mirror as on any local root;
4. pushes back what it changed or deleted, also when a stage failed, so that a rerun on another host resumes;
5. releases the lease.

The units played on Dask workers (collect's worlds, the evaluation's units) push their own outputs as they end,
from the worker, into the store (a world's ``DONE`` last), and the run pulls them: a world is done when the
store has its ``DONE``, wherever it was played. A worker works in its own mirror (``HRLXF_MIRROR`` in its
environment): a job names its paths in the submitting host's mirror, and `StoreRoot.here` moves them.

The mirror's sync state is ``.hrlxf-sync.json``: per file, its size and mtime when last synced and the store's
version of it (ETag) then. A pull takes a file the store changed since; a push sends a file the mirror changed
since (and deletes in the store what the mirror deleted, if the store still has the version synced). A file both
changed (or one the mirror never synced that differs from the store's) takes the store's version on a pull, and
the mirror's is kept beside it as ``.<name>.conflict-<time>``, with a warning. A file with no state whose bytes
already match the store's ETag (a single-part MD5) is recorded, not copied. Neither the local run lock, the sync
state, Prefect's local home (``prefect/home``, a SQLite database), conflict copies nor temporary files are synced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hrlxf_agent.paths import DataRootError, mirror_of, store_url

LEASE = ".hrlxf-run.lease"
RUN_LOCK = ".hrlxf-run.lock"  # one run per directory (`flows.pipeline.holding`): this host's, never synced
SYNC_STATE = ".hrlxf-sync.json"
LOCAL_ONLY = (RUN_LOCK, SYNC_STATE, LEASE)
#: a lease a run did not renew for this long is taken over (its run died without releasing it)
LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0
#: written after every other file of a push (and deleted before them): a directory with it is complete
MARKERS = ("DONE",)

log = logging.getLogger(__name__)
_SYNCING = threading.Lock()  # one pull, push or forget at a time in a process (they rewrite the sync state)


class DataRootBusy(RuntimeError):
    """Another pipeline run holds the data root."""


class StoreError(RuntimeError):
    """The object store cannot be used: unreachable, no such bucket, no permission."""


def _local_only(rel: str) -> bool:
    parts = rel.split("/")
    return (rel in LOCAL_ONLY or rel == "prefect/home" or rel.startswith("prefect/home/")
            or any(p.endswith(".tmp") or ".tmp-" in p or ".conflict-" in p for p in parts))


def _within(rel: str, under: str) -> bool:
    return not under or rel.startswith(under.rstrip("/") + "/")


def _files(root: Path, under: str = "") -> dict[str, Path]:
    """Every synced file under ``root / under`` by its path relative to ``root``, through symlinked directories
    (a mirror's lake may be one) too."""
    out = {}
    for top, dirs, names in os.walk(root / under, followlinks=True):
        for name in names:
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            if not _local_only(rel) and path.is_file():
                out[rel] = path
    return out


def _md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _version(info: dict[str, Any]) -> str:
    """The store's version of a file: its ETag (S3, GCS), else its size and modification time."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if tag:
        return str(tag).strip('"')
    return f"{info.get('size')}:{info.get('LastModified') or info.get('mtime') or info.get('updated')}"


def _ordered(rels: list[str]) -> tuple[list[str], list[str]]:
    """(other files, markers): markers go last into the store and first out of it."""
    return ([r for r in rels if r.rsplit("/", 1)[-1] not in MARKERS],
            [r for r in rels if r.rsplit("/", 1)[-1] in MARKERS])


@dataclass(frozen=True)
class StoreRoot:
    """An object-store data root and the mirror of the host that made the jobs (their paths are under it)."""

    url: str
    mirror: str

    @property
    def fs(self) -> Any:
        return self._fs()[0]

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url)  # fsspec's instance cache: one client per process
        except (ImportError, ValueError) as e:
            raise DataRootError(f"HRLXF_DATA={self.url!r}: {e}") from None

    def remote(self, rel: str) -> str:
        return f"{self._fs()[1].rstrip('/')}/{rel}" if rel else self._fs()[1].rstrip("/")

    def here(self, path: str | Path) -> Path:
        """``path`` (in the submitting host's mirror) in this process's mirror of the same store; a path outside
        the data root (a bundle given by its own path) is itself."""
        try:
            return mirror_of(self.url) / Path(path).relative_to(self.mirror)
        except ValueError:
            return Path(path)

    def rel(self, path: str | Path) -> str:
        return Path(path).absolute().relative_to(mirror_of(self.url)).as_posix()

    # ----------------------------------------------------------------------------- the lease

    @contextmanager
    def leased(self, who: dict[str, Any]) -> Iterator[Any]:
        """Hold the store's lease while the block runs, renewed every `RENEW_SECONDS` while it is still this run's.
        Yields ``check()``, which raises `StoreError` once the lease is lost (another run took it over after this
        one could not renew it for `LEASE_SECONDS`): the caller checks before it writes into the store."""
        fs, path = self.fs, self.remote(LEASE)
        self._take(fs, path, who)
        stop, lost = threading.Event(), threading.Event()

        def ours() -> bool:
            held = json.loads(fs.cat(path))
            return {k: held.get(k) for k in who} == who

        def renew() -> None:
            renewed = time.monotonic()
            while not stop.wait(RENEW_SECONDS):
                try:
                    if not ours():
                        lost.set()
                        log.error("%s: the lease is another run's now: %s", self.url, fs.cat(path).decode())
                        return
                    fs.pipe(path, json.dumps({**who, "expires": time.time() + LEASE_SECONDS}).encode())
                    renewed = time.monotonic()
                except Exception as e:  # the next renewal tries again, while the lease lasts
                    log.warning("%s: the lease was not renewed (%s: %s)", self.url, type(e).__name__, e)
                    if time.monotonic() - renewed > LEASE_SECONDS:
                        lost.set()
                        return

        def check() -> None:
            if lost.is_set():
                raise StoreError(f"{self.url}: this run lost the store's lease (not renewed for {LEASE_SECONDS:.0f} s, "
                                 f"or taken over); its mirror {self.mirror} keeps what it made")

        thread = threading.Thread(target=renew, name="store-lease", daemon=True)
        thread.start()
        try:
            yield check
        finally:
            stop.set()
            thread.join()
            try:
                if not lost.is_set() and ours():
                    fs.rm(path)
            except Exception:  # (unreachable now: the lease expires by itself)
                pass

    def _take(self, fs: Any, path: str, who: dict[str, Any]) -> None:
        doc = json.dumps({**who, "expires": time.time() + LEASE_SECONDS}).encode()
        try:
            for _ in range(2):
                try:
                    fs.pipe(path, doc, mode="create")
                    return
                except FileExistsError:
                    pass
                try:
                    held = json.loads(fs.cat(path))
                except FileNotFoundError:
                    continue  # released meanwhile
                except (json.JSONDecodeError, UnicodeDecodeError):
                    held = {}  # an unreadable lease holds nothing
                if not isinstance(held, dict):
                    held = {}
                if float(held.get("expires", 0)) > time.time():
                    holder = {k: v for k, v in held.items() if k != "expires"}
                    raise DataRootBusy(f"{self.url} is held by another pipeline run: {json.dumps(holder)} (its lease "
                                       f"runs to {time.strftime('%H:%M:%S', time.gmtime(held['expires']))} UTC); wait "
                                       f"for it to end, or give this run another data root (HRLXF_DATA)")
                fs.rm(path)  # expired: its run died without releasing it
        except (DataRootError, DataRootBusy):
            raise
        except Exception as e:
            raise StoreError(f"HRLXF_DATA={self.url!r}: the store cannot be used: {type(e).__name__}: {e}") from None
        raise DataRootBusy(f"{self.url}: another run took the lease at the same time; try again")

    # ----------------------------------------------------------------------------- sync

    def _listing(self, under: str = "") -> dict[str, dict[str, Any]]:
        root = self.remote("")
        try:
            found = self.fs.find(self.remote(under), detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(root) + 1:]: info for name, info in found.items()
                if info.get("type", "file") == "file" and not _local_only(name[len(root) + 1:])}

    def _state(self) -> dict[str, dict[str, Any]]:
        path = Path(self.mirror) / SYNC_STATE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable (%s); every file is compared with the store by its bytes", path, e)
            return {}

    def _save_state(self, state: dict[str, dict[str, Any]]) -> None:
        path = Path(self.mirror) / SYNC_STATE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, path)

    @staticmethod
    def _entry(path: Path, version: str) -> dict[str, Any]:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": version}

    @staticmethod
    def _unchanged(path: Path, entry: dict[str, Any] | None) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return entry is not None and (st.st_size, st.st_mtime_ns) == (entry["size"], entry["mtime_ns"])

    @staticmethod
    def _same_bytes(path: Path, info: dict[str, Any]) -> bool:
        tag = _version(info)
        return (path.is_file() and path.stat().st_size == info.get("size") and len(tag) == 32
                and "-" not in tag and _md5(path) == tag)

    def pull(self, under: str = "") -> dict[str, int]:
        """Take into the mirror what the store changed since the last sync (under ``under``, relative)."""
        with _SYNCING:
            return self._pull(under)

    def _pull(self, under: str) -> dict[str, int]:
        local = Path(self.mirror)
        remote, state = self._listing(under), self._state()
        fetch, deleted, conflicts = [], 0, []
        for rel, info in remote.items():
            entry, path = state.get(rel), local / rel
            if entry is not None and entry["version"] == _version(info):
                continue  # the store has what was synced: the mirror's own change (if any) stands
            if self._same_bytes(path, info):
                state[rel] = self._entry(path, _version(info))
                continue
            if path.is_file() and not self._unchanged(path, entry):  # changed on both sides: the store's wins
                kept = path.with_name(f".{path.name}.conflict-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(path, kept)
                conflicts.append(str(kept))
            fetch.append(rel)
        if conflicts:
            log.warning("%s: %d files changed both here and in the store; the store's are taken, this mirror's kept "
                        "beside them: %s", self.url, len(conflicts), ", ".join(conflicts[:5]))
        others, markers = _ordered([r for r in state if r not in remote and _within(r, under)])
        for rel in markers + others:
            path = local / rel
            if self._unchanged(path, state[rel]):  # deleted in the store, unchanged here: delete it here too
                path.unlink()
                deleted += 1
                for parent in path.parents:  # and the directories it leaves empty
                    if parent == local or any(parent.iterdir()):
                        break
                    parent.rmdir()
            del state[rel]
        others, markers = _ordered(fetch)
        for batch in (others, markers):
            if batch:
                tmps = [str(local / f"{rel}.tmp-pull") for rel in batch]
                for t in tmps:
                    Path(t).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get([self.remote(r) for r in batch], tmps)
                for rel, tmp in zip(batch, tmps):
                    os.replace(tmp, local / rel)
                    state[rel] = self._entry(local / rel, _version(remote[rel]))
        self._save_state(state)
        return {"pulled": len(fetch), "deleted": deleted, "conflicts": len(conflicts),
                "bytes": sum(remote[r].get("size") or 0 for r in fetch)}

    def push(self, under: str = "") -> dict[str, int]:
        """Send the store what the mirror changed since the last sync; delete there what the mirror deleted (under
        ``under``, relative)."""
        with _SYNCING:
            return self._push(under)

    def _push(self, under: str) -> dict[str, int]:
        local = Path(self.mirror)
        remote, state = self._listing(under), self._state()
        files = _files(local, under)
        send = []
        for rel, path in files.items():
            entry, info = state.get(rel), remote.get(rel)
            if self._unchanged(path, entry):
                continue  # not changed here since the sync (a newer one in the store is the next pull's)
            if info is not None and self._same_bytes(path, info):
                state[rel] = self._entry(path, _version(info))
            else:
                send.append(rel)
        gone = [rel for rel in state if rel not in files and _within(rel, under)]
        drop = [rel for rel in gone if rel in remote and _version(remote[rel]) == state[rel]["version"]]
        others, markers = _ordered(drop)
        for batch in (markers, others):
            if batch:
                self.fs.rm([self.remote(r) for r in batch])
        for rel in gone:
            del state[rel]
        self._upload(local, send)
        after = self._listing(under) if send else remote
        for rel in send:
            state[rel] = self._entry(files[rel], _version(after[rel]))
        self._save_state(state)
        return {"pushed": len(send), "deleted": len(drop), "bytes": sum(files[r].stat().st_size for r in send)}

    def _upload(self, root: Path, rels: list[str]) -> None:
        others, markers = _ordered(rels)
        for batch in (others, markers):
            if batch:
                self.fs.put([str(root / r) for r in batch], [self.remote(r) for r in batch])

    def send(self, paths: list[Path]) -> None:
        """Upload files of this process's mirror, markers last (a worker's unit; `push` keeps the sync state)."""
        self._upload(mirror_of(self.url), [self.rel(p) for p in paths])

    def send_tree(self, directory: Path) -> None:
        self.send(list(_files(Path(directory)).values()))

    def forget(self, rel: str, state: bool = True) -> None:
        """Delete a directory of the store (its markers first), and its files' sync state in this mirror (a
        directory redone from scratch: what the store had of it must not count, even if the new bytes match)."""
        names = list(self._listing(rel))
        others, markers = _ordered(names)
        for batch in (markers, others):
            if batch:
                self.fs.rm([self.remote(r) for r in batch])
        if state and Path(self.mirror).is_dir():
            prefix = rel.rstrip("/") + "/"
            with _SYNCING:
                self._save_state({k: v for k, v in self._state().items() if not k.startswith(prefix)})

    def fetch_tree(self, directory: Path) -> None:
        """Download a directory of the store into this process's mirror if it is not there (a worker's input)."""
        directory = Path(directory)
        if directory.exists() or not directory.is_relative_to(mirror_of(self.url)):
            return
        rel = self.rel(directory)
        listing = self._listing(rel)
        if not listing:
            raise FileNotFoundError(f"{self.url}/{rel}: not in the store")
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        for r in listing:
            (tmp / Path(r).relative_to(rel)).parent.mkdir(parents=True, exist_ok=True)
        self.fs.get([self.remote(r) for r in listing], [str(tmp / Path(r).relative_to(rel)) for r in listing])
        try:
            os.replace(tmp, directory)
        except OSError:
            if not directory.is_dir():
                raise
            shutil.rmtree(tmp)  # another unit of this mirror fetched it meanwhile


def data_store() -> StoreRoot | None:
    """The object-store root HRLXF_DATA names, with this host's mirror; None for a local or shared directory."""
    url = store_url()
    return StoreRoot(url, str(mirror_of(url))) if url else None
