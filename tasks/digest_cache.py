"""The digest cache: the sha256 of a file already read, kept while the file stays the same.

Fingerprinting a data root reads every byte of it. A digest is kept in this process and in one SQLite file on
disk, keyed by the file's absolute path and its inode, size, mtime and ctime, so a second ``hrlxf`` process
reads only the files that changed since (`tasks.fingerprint.file_digest` asks `recall`, then `remember`).

The cache lives off the data root (`digest_cache_path`: ``$XDG_CACHE_HOME/hrlxf/digests.sqlite``, or
``$HRLXF_DIGEST_CACHE``, "off" for none): SQLite's WAL needs a local filesystem and a data root may be on NFS.
Any error with it turns it off for the process; deleting it costs one more read of every file.

A digest is kept only for a file whose mtime and ctime were `SETTLED_NS` (2 s) old when it was read: a file
rewritten with the same size within the filesystem's timestamp granularity would otherwise keep its old digest
(git's "racily clean" files). Such a file is read again every time.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

#: a digest is remembered (in this process and in the digest cache) only for a file whose mtime and ctime were
#: this long before it was read: a file rewritten with the same size within the filesystem's timestamp
#: granularity would otherwise keep its old digest (git's "racily clean" files). Such a file is read again.
SETTLED_NS = 2_000_000_000
#: what file_digest did in this process: files read (and their bytes), digests found in the digest cache
stats = {"read": 0, "bytes": 0, "cached": 0}

_digests: dict[tuple, str] = {}  # this process's: (path, inode, size, mtime_ns, ctime_ns) -> sha256
_UNSET = object()
_cache_setting: Any = _UNSET  # use_digest_cache()
_store: _DigestStore | None = None


class _DigestStore:
    """The persistent digest cache: one SQLite file (WAL: readers and one writer at a time, across processes),
    one row per file path with the stat it was hashed at. Any error turns it off for this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pending: dict[str, tuple] = {}  # path -> row, not written yet
        self.touched: list[str] = []  # paths found today, to mark as seen
        self.today = int(time.time() // 86400)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        atexit.register(self.flush_quietly)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, ino INTEGER, size INTEGER, "
                        "mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT NOT NULL, seen INTEGER)")
        self.db.execute("DELETE FROM digests WHERE seen < ?", (self.today - 60,))  # files not read for 60 days

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except sqlite3.Error:
            pass

    def get(self, key: tuple) -> str | None:
        with self.lock:
            row = self.pending.get(key[0])
            if row is not None:
                return row[5] if tuple(row[1:5]) == key[1:] else None
            row = self.db.execute("SELECT ino, size, mtime_ns, ctime_ns, sha256, seen FROM digests WHERE path = ?",
                                  (key[0],)).fetchone()
            if row is None or tuple(row[:4]) != key[1:]:
                return None
            if row[5] != self.today:
                self.touched.append(key[0])
            return row[4]

    def put(self, key: tuple, digest: str) -> None:
        """Remember a digest (written with the next `flush`: one transaction for many files)."""
        with self.lock:
            self.pending[key[0]] = (*key, digest, self.today)
        if len(self.pending) >= 1024:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            rows, touched, self.pending, self.touched = list(self.pending.values()), self.touched, {}, []
            if (rows or touched) and self.pid == os.getpid():
                self.db.execute("BEGIN IMMEDIATE")  # one transaction for all
                try:
                    self.db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    self.db.executemany("UPDATE digests SET seen = ? WHERE path = ?", [(self.today, p) for p in touched])
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise


def digest_cache_path() -> Path | None:
    """Where the digest cache is: `use_digest_cache`'s, else ``$HRLXF_DIGEST_CACHE`` ("off": none), else
    ``$XDG_CACHE_HOME/hrlxf/digests.sqlite`` (``~/.cache/hrlxf/digests.sqlite``).

    One cache per user and machine serves every data root: a row is keyed by the file's absolute path and
    names its inode, size, mtime and ctime, so a moved or copied root is read once more and two roots never
    mix. It stays off the data root on purpose: SQLite's WAL needs a local filesystem, a data root may be on
    NFS. Deleting it costs one more read of every file."""
    if _cache_setting is not _UNSET:
        return _cache_setting
    env = os.environ.get("HRLXF_DIGEST_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hrlxf" / "digests.sqlite"


def use_digest_cache(path: Path | str | None) -> None:
    """Keep file digests in the SQLite file ``path`` from now on in this process (None: in memory only)."""
    global _cache_setting, _store
    _cache_setting = Path(path) if path is not None else None
    _store = None


def _digest_store() -> _DigestStore | None:
    global _store, _cache_setting
    path = digest_cache_path()
    if path is None:
        return None
    if _store is None or _store.path != path or _store.pid != os.getpid():  # (a forked child opens its own)
        try:
            _store = _DigestStore(path)
        except (sqlite3.Error, OSError):
            _cache_setting, _store = None, None  # an unwritable or broken cache: go on without one
    return _store


def flush_digests() -> None:
    """Write the digests remembered since the last flush to the digest cache (`units` does after each artifact)."""
    global _cache_setting
    if _store is not None:
        try:
            _store.flush()
        except sqlite3.Error:
            _cache_setting = None


def recall(key: tuple) -> str | None:
    """The digest kept for a file as it is now, ``key`` = (absolute path, inode, size, mtime_ns, ctime_ns):
    from this process, else from the digest cache (counted in ``stats["cached"]``); None when there is none."""
    global _cache_setting
    digest = _digests.get(key)
    if digest is not None:
        return digest
    store = _digest_store()
    if store is not None:
        try:
            digest = store.get(key)
        except sqlite3.Error:
            _cache_setting = None
    if digest is not None:
        stats["cached"] += 1
        _digests[key] = digest
    return digest


def remember(key: tuple, digest: str, read_at: int, after: os.stat_result) -> None:
    """Keep the digest of a file read at ``read_at`` (ns) as it was at ``key`` (see `recall`), unless it
    changed while it was read (``after``: its stat then) or had changed `SETTLED_NS` before."""
    global _cache_setting
    if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != key[1:] \
            or read_at - max(key[3], key[4]) <= SETTLED_NS:
        return
    _digests[key] = digest
    store = _digest_store()
    if store is not None:
        try:
            store.put(key, digest)
        except sqlite3.Error:
            _cache_setting = None
