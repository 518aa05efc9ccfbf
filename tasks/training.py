"""What every offline training stage shares: reading a table safely, a split by world,
and one Lightning fit with checkpoints, resume, early stopping and a NaN guard.

Lightning is imported only here and in the stage modules; the runtime agent
never needs it (it loads plain state dicts from a bundle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch


class TrainingDataError(ValueError):
    """Training cannot start on this table: the message says why and what is needed."""


class DivergedError(RuntimeError):
    """The loss went non-finite; the last good checkpoint is kept."""


#: classes the stages never imitate (a random baseline is not an expert)
NOT_EXPERTS = ("SyncRandomStdAgent",)


@dataclass
class FitConfig:
    """How long and how to fit; the same for every stage."""

    max_epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2  # of the worlds, not of the rows: checkpoint selection and early stopping
    test_fraction: float = 0.1  # of the worlds: held out of training and of every selection; the reported metrics
    seed: int = 0  # of the split (every training stage must use the same split: `flows.stages` checks it)
    min_train_rows: int = 200
    min_val_rows: int = 20

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0 - self.val_fraction:
            raise ValueError(f"test_fraction must be in [0, 1 - val_fraction), got {self.test_fraction}")
        for name in ("max_epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# ---------------------------------------------------------------------------- tables


def table_files(lake: Path, table: str) -> list[Path]:
    files = sorted((Path(lake) / table).glob("*/*.parquet"))
    if not files:
        raise TrainingDataError(f"{Path(lake) / table}: no Parquet files (run `hrlxf tables` first)")
    return files


REBUILT_BY_TABLES = "`hrlxf tables` rebuilds it from its converted world"


def read_schema(f: Path, rebuild: str = REBUILT_BY_TABLES) -> pa.Schema:
    """A table file's schema; a file that is not Parquet (truncated, overwritten) is named with how to rebuild it."""
    try:
        return pq.read_schema(f)
    except (OSError, pa.ArrowInvalid) as e:
        raise TrainingDataError(f"{f}: not a readable Parquet file ({e}); {rebuild}") from None


def read_tables(files: list[Path], columns: list[str] | None = None, how: str = "vertical",
                rebuild: str = REBUILT_BY_TABLES) -> pl.DataFrame:
    """The rows of per-world table files, scanned lazily (only ``columns`` are read); every file's footer is
    read first so that a corrupt one is named instead of failing somewhere inside the scan."""
    for f in files:
        read_schema(f, rebuild)
    scans = [pl.scan_parquet(f) for f in files]
    if columns is not None:
        scans = [s.select(columns) for s in scans]
    return pl.concat(scans, how=how).collect()


def check_schema(files: list[Path], expected: pa.Schema, version: str) -> None:
    """Every file has the code's schema version and every column with its type; the error names the column."""
    for f in files:
        schema = read_schema(f)
        got = (schema.metadata or {}).get(b"version", b"?").decode()
        if got != version:
            raise TrainingDataError(f"{f}: table version {got}, this code reads version {version} (rebuild with `hrlxf tables`)")
        for want in expected:
            if want.name not in schema.names:
                raise TrainingDataError(f"{f}: column {want.name!r} missing (schema version {version} expects it)")
            have = schema.field(want.name).type
            if have != want.type:
                raise TrainingDataError(f"{f}: column {want.name!r} is {have}, expected {want.type}")


def expert_agents(lake: Path, min_relative_score: float = 1.0) -> pl.DataFrame:
    """(run_id, world_id, agent_id, agent_class, n_lines) of the agents worth imitating.

    A class is kept when its mean score in the data is at least
    ``min_relative_score`` x the mean of all agents (0 keeps every class but
    the random baseline): imitating the weaker half teaches the weaker half.
    """
    files = sorted((Path(lake) / "events").glob("*/*/agents.parquet"))
    if not files:
        raise TrainingDataError(f"{Path(lake) / 'events'}: no agents tables (run `hrlxf events` first)")
    agents = read_tables(files, ["run_id", "world_id", "agent_id", "agent_class", "n_lines", "score"], "vertical_relaxed",
                         rebuild="`hrlxf events` converts its raw world again")
    agents = agents.filter(~pl.col("agent_class").is_in(NOT_EXPERTS))
    overall = agents["score"].mean() or 0.0
    by_class = agents.group_by("agent_class").agg(pl.col("score").mean().alias("class_score"))
    keep = by_class.filter(pl.col("class_score") >= min_relative_score * overall)["agent_class"]
    return agents.filter(pl.col("agent_class").is_in(keep)).select("run_id", "world_id", "agent_id", "agent_class", "n_lines")


def expert_worlds(lake: Path, table: str, columns: list[str], experts: pl.DataFrame, keep: pl.Expr | None = None,
                  goal_hat: bool = True) -> Iterator[pl.DataFrame]:
    """One world at a time, in the lake's order: the ``columns`` of ``table`` for the agents in ``experts``,
    the rows ``keep`` selects, in the file's order, joined to the world's goal_hat (``goal_hat``). A training
    builds its arrays from these, so that it holds one world's table, not the lake's (`RowStore`).

    After the last world, rows without goal_hat (the backfill has not run) or no row at all are a
    TrainingDataError that says so."""
    keys = ["run_id", "world_id", "agent_id", "step"]
    goals = {(f.parent.name, f.name): f for f in table_files(lake, "goal_hat")} if goal_hat else {}
    missing, found = 0, False
    for f in table_files(lake, table):
        df = read_tables([f], columns).join(experts, on=keys[:3], how="inner", maintain_order="left")
        if keep is not None:
            df = df.filter(keep)
        if df.is_empty():
            continue
        if goal_hat:
            goal = goals.get((f.parent.name, f.name))
            if goal is not None:
                df = df.join(read_tables([goal], rebuild="`hrlxf train backfill` rebuilds it"), on=keys, how="left",
                             maintain_order="left")
            missing += len(df) if goal is None else int(df["goal_hat"].is_null().sum())
            if missing:
                continue  # the training fails below
        found = True
        yield df
    if missing:
        raise TrainingDataError(f"{Path(lake) / 'goal_hat'}: {missing} {table} rows have no goal_hat (run the backfill stage)")
    if not found:
        raise TrainingDataError(f"{Path(lake) / table}: no rows of expert agents (are the agents tables of "
                                f"`hrlxf events` there?)")


def world_position(world_key: str, seed: int) -> float:
    """A world's stable place in [0, 1) (hash of run/world): the split and the cross-fitting folds read it,
    so the rows of one world never sit on two sides."""
    h = hashlib.blake2b(f"{seed}:{world_key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def is_validation_world(world_key: str, fraction: float, seed: int) -> bool:
    return world_position(world_key, seed) < fraction


@dataclass(frozen=True)
class Split:
    """Row masks of one split by world: train (fitted), val (checkpoint selection), test (never seen by either)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def world_split(df: pl.DataFrame, fit: FitConfig) -> Split:
    """The split every training stage uses: [0, test) test, [test, test + val) validation, the rest train."""
    keys = (df["run_id"] + "/" + df["world_id"]).to_list()
    pos = np.asarray([world_position(k, fit.seed) for k in keys])
    test = pos < fit.test_fraction
    val = ~test & (pos < fit.test_fraction + fit.val_fraction)
    train = ~test & ~val
    if not val.any() or not train.any():  # tiny data: at least one world on each of train and val
        worlds = sorted(set(k for k, t in zip(keys, test) if not t))
        if len(worlds) < 2:
            raise TrainingDataError(f"need rows from at least 2 worlds outside the test split to hold one out for "
                                    f"validation, got {len(worlds)}")
        held = np.asarray([k == worlds[0] for k in keys])
        val, train = held & ~test, ~held & ~test
    return Split(train, val, test)


def split_counts(split: Split, keys: pl.DataFrame) -> dict[str, Any]:
    """Worlds and rows per part, and a digest of which worlds are where (equal across stages: one split)."""
    world = (keys["run_id"] + "/" + keys["world_id"]).to_numpy()
    out: dict[str, Any] = {}
    h = hashlib.blake2b(digest_size=8)
    for part in ("train", "val", "test"):
        mask = getattr(split, part)
        worlds = sorted(set(world[mask]))
        out[part] = {"worlds": len(worlds), "rows": int(mask.sum())}
        h.update(f"{part}:{','.join(worlds)};".encode())
    out["digest"] = h.hexdigest()
    return out


def require_rows(what: str, n_train: int, n_val: int, fit: FitConfig) -> None:
    if n_train < fit.min_train_rows or n_val < fit.min_val_rows:
        raise TrainingDataError(
            f"{what}: {n_train} training and {n_val} validation rows; need at least {fit.min_train_rows} and "
            f"{fit.min_val_rows} (collect more worlds, e.g. `hrlxf collect --profile default`)"
        )


def list_array(df: pl.DataFrame, column: str, width: int) -> np.ndarray:
    """A fixed-width list column as a float32 (N, width) array."""
    s = df[column]
    if isinstance(s.dtype, pl.List):
        s = s.list.to_array(width)
    return s.to_numpy().astype(np.float32, copy=False).reshape(len(df), width)


# ---------------------------------------------------------------------------- fitting


class RowStore:
    """Arrays of many worlds' rows, added world by world and then joined end to end: in memory, or (with a
    ``directory``) saved there and joined into memory-mapped ``.npy`` files, so that memory holds one world's
    rows at a time and the joined arrays are files the kernel pages in and out (the reference's 18 M micro
    rows are 14 GB). A saved world is kept as its files, not as open maps: a lake of thousands of worlds
    would otherwise hold an open file per array and world (the usual limit is 1,024)."""

    def __init__(self, directory: Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self.parts: list[dict[str, np.ndarray]] = []  # in memory
        self.saved: list[tuple[Path, int]] = []  # in the directory: (the world's folder, its rows)
        self.layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}  # dtype and row shape of each array

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        """One world's arrays (every one with the same rows, and the same row shapes as the other worlds';
        a dtype that differs from the first world's is cast to it, in memory as in files)."""
        first = next(iter(arrays.values()))
        if not self.layout:
            self.layout = {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()}
        shapes = {k: v.shape[1:] for k, v in arrays.items()}
        if shapes != {k: shape for k, (_, shape) in self.layout.items()}:
            raise ValueError(f"a world's arrays differ in shape from the first world's: {shapes}")
        arrays = {k: v.astype(self.layout[k][0], copy=False) for k, v in arrays.items()}
        if self.directory is None:
            self.parts.append(arrays)
            return
        part = self.directory / f"part-{len(self.saved):06d}"
        part.mkdir(parents=True, exist_ok=True)
        for k, v in arrays.items():
            np.save(part / f"{k}.npy", v)
        self.saved.append((part, len(first)))

    def joined(self) -> dict[str, np.ndarray]:
        """Every world's rows in the order added; in a directory, one ``<name>.npy`` per array (each world's
        files are opened one at a time and deleted once copied in)."""
        if not self.layout:
            raise ValueError("no rows were added")
        if self.directory is None:
            return {k: np.concatenate([p[k] for p in self.parts]) for k in self.layout}
        n = sum(rows for _, rows in self.saved)
        out = {k: np.lib.format.open_memmap(self.directory / f"{k}.npy", mode="w+", dtype=dtype, shape=(n, *shape))
               for k, (dtype, shape) in self.layout.items()}
        at = 0
        for part, rows in self.saved:
            for k in out:
                out[k][at:at + rows] = np.load(part / f"{k}.npy")
            at += rows
            shutil.rmtree(part)
        self.saved = []
        for v in out.values():
            v.flush()
        return out


@contextmanager
def row_files(out: Path) -> Iterator[Path]:
    """``out/.arrays``, where a training memory-maps its rows (`RowStore`): emptied first, deleted when the
    training ends, however it ends (a failed training would otherwise leave gigabytes in its partial output)."""
    store = Path(out) / ".arrays"
    shutil.rmtree(store, ignore_errors=True)
    try:
        yield store
    finally:
        shutil.rmtree(store, ignore_errors=True)  # mapped files stay readable until unmapped


class Batches(torch.utils.data.Dataset):
    """Rows of arrays (numpy, memory-mapped or not, or tensors) indexed a whole batch at a time (a per-row
    Dataset costs more than the step). Nothing is copied: ``rows`` picks this set's rows and a batch is
    gathered when it is asked for, so a table's train and validation sets cost no more memory than the table."""

    def __init__(self, *arrays: np.ndarray | torch.Tensor, rows: np.ndarray | None = None):
        if len({len(a) for a in arrays}) != 1:
            raise ValueError("all tensors need the same number of rows")
        self.arrays = arrays
        self.rows = np.arange(len(arrays[0])) if rows is None else np.asarray(rows)

    @classmethod
    def of(cls, arrays: tuple[np.ndarray, ...], rows: np.ndarray) -> "Batches":
        """The rows ``rows`` (a boolean mask or indices) of ``arrays``."""
        rows = np.asarray(rows)
        return cls(*arrays, rows=np.flatnonzero(rows) if rows.dtype == bool else rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, ...]:
        sel = self.rows[idx]
        return tuple(a[torch.from_numpy(np.asarray(sel))] if isinstance(a, torch.Tensor)
                     else torch.from_numpy(np.ascontiguousarray(a[sel])) for a in self.arrays)


@dataclass
class FitResult:
    best_path: str
    last_path: str
    epochs: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint a run resumed from, relative to its output directory


def seed_everything(seed: int) -> None:
    import lightning.pytorch as pl_

    pl_.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _callbacks(out: Path, fit: FitConfig, history: list[dict[str, float]]) -> list[Any]:
    import lightning.pytorch as L

    class History(L.Callback):
        """Per-epoch metrics for the curves saved with the bundle, on disk after every epoch (a killed run keeps them)."""

        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            if trainer.sanity_checking:
                return
            row = {k: float(v) for k, v in trainer.callback_metrics.items()}
            row["epoch"] = int(trainer.current_epoch)
            history[:] = [h for h in history if h["epoch"] < row["epoch"]] + [row]
            _write_json(out / "history.json", history)

    class NanGuard(L.Callback):
        """Stop on a non-finite loss before a bad step reaches a checkpoint."""

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None and not torch.isfinite(loss).all():
                raise DivergedError(f"non-finite training loss at epoch {trainer.current_epoch}, batch {batch_idx}")

    ckpt = L.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min",
                                       save_last=True, save_top_k=1, enable_version_counter=False)
    stop = L.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=fit.patience, check_finite=True)
    return [ckpt, stop, History(), NanGuard()]


def fit_module(module: Any, train: torch.utils.data.Dataset, val: torch.utils.data.Dataset, fit: FitConfig, out: Path,
               progress: bool = True) -> FitResult:
    """Fit ``module`` (a LightningModule logging ``val_loss``), resuming from ``out/checkpoints/last.ckpt``.

    A killed run restarts at its last finished epoch. A non-finite loss raises
    DivergedError and leaves the last good checkpoint in place.
    """
    import lightning.pytorch as L

    fit.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(fit.seed)
    history_file = out / "history.json"
    history: list[dict[str, float]] = json.loads(history_file.read_text()) if history_file.exists() else []
    callbacks = _callbacks(out, fit, history)
    last = out / "checkpoints" / "last.ckpt"
    resume = str(last) if last.exists() else None
    if resume is None:
        history.clear()
    g = torch.Generator().manual_seed(fit.seed)
    train_loader = torch.utils.data.DataLoader(
        train, batch_size=None,
        sampler=torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(train, generator=g), fit.batch_size, False),
    )
    val_loader = torch.utils.data.DataLoader(
        val, batch_size=None,
        sampler=torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(val), max(fit.batch_size, 1024), False),
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=fit.max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
        enable_progress_bar=progress, enable_model_summary=False, deterministic="warn", default_root_dir=str(out),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
    ckpt = callbacks[0]
    best = ckpt.best_model_path or str(last)
    best_loss = float(ckpt.best_model_score) if ckpt.best_model_score is not None else math.nan
    # resumed_from goes into metrics.json (and a bundle's manifest): relative to ``out``, which is renamed into place
    return FitResult(best_path=best, last_path=str(last), epochs=int(trainer.current_epoch), best_val_loss=best_loss,
                     history=list(history), resumed_from=last.relative_to(out).as_posix() if resume else None)


def loss_module(net: torch.nn.Module, loss: Callable[[torch.nn.Module, Any], Any], fit: FitConfig) -> Any:
    """The thin LightningModule every stage trains: ``net`` (as ``.net``) on ``loss(net, batch)``.

    ``loss`` returns the loss, or a dict with ``"loss"`` and parts that are logged as ``val_<part>``.
    """
    import lightning.pytorch as L

    class LossModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def _parts(self, batch: Any) -> dict[str, torch.Tensor]:
            out = loss(self.net, batch)
            return out if isinstance(out, dict) else {"loss": out}

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            parts = self._parts(batch)
            self.log("train_loss", parts["loss"], on_step=False, on_epoch=True)
            return parts["loss"]

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            parts = self._parts(batch)
            self.log("val_loss", parts["loss"], on_epoch=True, prog_bar=True)
            for name, value in parts.items():
                if name != "loss":
                    self.log(f"val_{name}", value, on_epoch=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)

    return LossModule()


def load_best(module: Any, result: FitResult) -> Any:
    """The module's weights from the best checkpoint (Lightning stores them under ``state_dict``)."""
    state = torch.load(result.best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_plain))
    os.replace(tmp, path)


def _plain(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    raise TypeError(f"not JSON: {type(x).__name__}")


def write_stage_output(out: Path, weights: dict[str, dict[str, torch.Tensor]], metrics: dict[str, Any]) -> None:
    """The stage's deliverables: plain state dicts (what a bundle holds) and metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    for name, state in weights.items():
        tmp = out / f".{name}.pt.tmp"
        torch.save({k: v.detach().clone() for k, v in state.items()}, tmp)
        os.replace(tmp, out / f"{name}.pt")
    _write_json(out / "metrics.json", metrics)
