"""Where the data lives: ``data/`` unless ``HRLXF_DATA`` names another root."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


class DataRootError(ValueError):
    """HRLXF_DATA names a root this code cannot use."""


def data_root() -> Path:
    """The data root: a local or shared (NFS, a mounted bucket) directory; ``file://`` URLs are paths. An
    object-store URL is refused by name: the stages read and write the root as a file system (a bucket
    mounted with s3fs / gcsfuse works)."""
    text = os.environ.get("HRLXF_DATA", "data")
    url = urlparse(text)
    if url.scheme == "file":
        return Path(url.path)
    if len(url.scheme) > 1 and "://" in text:  # (a one-letter scheme is a Windows drive)
        raise DataRootError(f"HRLXF_DATA={text!r}: a {url.scheme}:// URL is not a data root this code can use; "
                            f"mount it (s3fs, gcsfuse, NFS) and give the mounted directory")
    return Path(text)


def bundles_root() -> Path:
    return data_root() / "bundles"
