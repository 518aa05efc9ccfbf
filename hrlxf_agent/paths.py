"""Where the data lives: ``data/`` unless ``HRLXF_DATA`` names another root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse


class DataRootError(ValueError):
    """HRLXF_DATA names a root this code cannot use."""


def store_url() -> str | None:
    """The object-store URL HRLXF_DATA names (``s3://bucket/prefix``, any fsspec protocol but ``file``), or None."""
    text = os.environ.get("HRLXF_DATA", "data")
    scheme = urlparse(text).scheme
    # (a one-letter scheme is a Windows drive)
    return text.rstrip("/") if len(scheme) > 1 and scheme != "file" and "://" in text else None


def mirror_of(url: str) -> Path:
    """This host's working copy of an object-store root (`tasks.store`): ``HRLXF_MIRROR``, else
    ``$XDG_CACHE_HOME/hrlxf/mirror/<scheme>-<digest of the URL>`` (``~/.cache`` by default)."""
    if os.environ.get("HRLXF_MIRROR"):
        return Path(os.environ["HRLXF_MIRROR"]).resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "hrlxf" / "mirror" / f"{urlparse(url).scheme}-{hashlib.sha256(url.encode()).hexdigest()[:12]}").resolve()


def data_root() -> Path:
    """The data root the stages read and write: a local or shared (NFS) directory, a ``file://`` URL, or, for an
    object-store URL, this host's mirror of it (the pipeline's runs pull the store into it and push back,
    `tasks.store`)."""
    text = os.environ.get("HRLXF_DATA", "data")
    url = store_url()
    if url is not None:
        return mirror_of(url)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(text)


def bundles_root() -> Path:
    return data_root() / "bundles"
