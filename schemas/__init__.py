"""Versioned schemas of the files the pipeline writes (JSON Schema / Arrow)."""

from __future__ import annotations

import json
from importlib import resources


def load(name: str) -> dict:
    """A schema shipped in this package, e.g. ``load("audit")``."""
    return json.loads(resources.files(__package__).joinpath(f"{name}.schema.json").read_text())
