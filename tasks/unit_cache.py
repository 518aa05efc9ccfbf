"""What the lake's per-world units have built: a Prefect result record per (recipe, input content).

The pipeline's one way of knowing that something is done is a Prefect cache record keyed by what made it:
a stage's record (`tasks.fingerprint.StageInputsPolicy`) and, inside the stages that work world by world
(events, each table, backfill), one record per unit of work. A unit's key is the sha256 of its recipe
(what it is, its config and the version of the code that makes its bytes: `recipe`, on modules kept apart
from the mappers so that an edit to those re-keys nothing) and the content digests of its
inputs (the raw world, the converted world, the macro file, the planner); its record lists the files it
wrote with their digests. A unit is skipped only when its record exists and every file it names still has
that digest; otherwise it runs again and overwrites them. So a changed config or code, a changed input
world, a file deleted, truncated or written over by hand are each rebuilt, and nothing else is.

Records are JSON in Prefect's own result-record format, through Prefect's `ResultStore`, in
``DATA/prefect/results`` beside the stages' (the lake is ``DATA/lake``), so they live with the data, not
on the host that ran the unit. Paths in records are relative to the lake.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tasks.fingerprint import canonical, digest_of


def recipe(name: str, modules: Iterable[str], config: Any = None) -> str:
    """The digest of what decides a unit's outputs besides its inputs: its name, config and code version
    (`tasks.code_version` of ``modules``: an edit to code they do not import changes nothing)."""
    from tasks.code_version import code_version

    code = code_version(list(modules))["digest"]
    return hashlib.sha256(canonical({"unit": name, "config": config, "code": code}).encode()).hexdigest()


def unit_key(recipe_digest: str, unit: str, *inputs: str) -> str:
    """A unit's cache key: its recipe, its name (``run/world``: its outputs name it, so two worlds of the same
    content are two units) and the content digests of its inputs, in order."""
    return hashlib.sha256(canonical({"recipe": recipe_digest, "unit": unit, "inputs": list(inputs)}).encode()).hexdigest()


@dataclass(frozen=True)
class UnitCache:
    """The unit records of one lake (``<lake>/../prefect/results``: ``DATA/prefect/results`` for ``DATA/lake``,
    even when ``DATA/lake`` is a symlink)."""

    lake: Path

    @property
    def root(self) -> Path:
        return Path(self.lake).absolute().parent / "prefect" / "results"

    @functools.cached_property
    def _store(self) -> Any:
        from prefect.filesystems import LocalFileSystem
        from prefect.results import ResultStore
        from prefect.serializers import JSONSerializer

        return ResultStore(result_storage=LocalFileSystem(basepath=str(self.root)), serializer=JSONSerializer(),
                           cache_result_in_memory=False)

    def done(self, key: str) -> dict | None:
        """The record of ``key`` if every file it names still has its recorded digest, else None."""
        if not (self.root / key).is_file():  # where Prefect's local result storage keeps it (`exists` reads it)
            return None
        try:
            record = self._store.read(key).result
        except Exception as e:  # noqa: BLE001 - an unreadable record is none: the unit runs again, said once
            logging.getLogger(__name__).warning("unit record %s unreadable, its unit runs again: %s: %s", key[:16],
                                                type(e).__name__, e)
            return None
        lake = Path(self.lake)
        try:
            intact = all(digest_of(lake / rel) == d for rel, d in record["outputs"].items())  # gone: OSError
        except (OSError, KeyError, TypeError, AttributeError):
            intact = False
        return record if intact else None

    def save(self, key: str, outputs: dict[str, str], **summary: Any) -> None:
        """Record that the unit of ``key`` wrote ``outputs`` ({path relative to the lake: digest})."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._store.write(obj={"outputs": outputs, **summary}, key=key)


def sweep(root: Path, keep: set[str], suffix: str = ".parquet") -> list[str]:
    """Delete the per-world outputs ``<root>/<run>/<world><suffix>`` whose input world (``run/world``) is not
    in ``keep`` any more (a world quarantined or removed upstream); returns what it deleted."""
    gone = []
    for p in sorted(Path(root).glob(f"*/*{suffix}")):
        if p.name.startswith(".") or p.parent.name.startswith("."):
            continue
        unit = f"{p.parent.name}/{p.name.removesuffix(suffix)}"
        if unit not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(unit)
    return gone
