"""Where the data lives: ``data/`` unless ``HRLXF_DATA`` names another root."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("HRLXF_DATA", "data"))


def bundles_root() -> Path:
    return data_root() / "bundles"
