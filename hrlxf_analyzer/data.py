"""Read-only access to a data root for the analyzer: small pure functions returning polars frames or dicts.

Parquet is scanned lazily (filter and select before collecting) so a page reads only the rows it draws.
A world is addressed by a *spec* string: ``lake:<run_id>/<world_id>`` (a collection world already in the
lake) or ``raw:<dir>`` (a paired world of an evaluation or audit, kept in the tracker's raw format; ``dir``
relative to the data root). Raw worlds are converted with the project's own code (`tasks.events`,
`tasks.micro`) into a private cache outside the data root, once per server: the data root stays untouched.
Whatever is missing raises `DataMissing` whose message says which command makes it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from hrlxf_agent.heuristics import GlobalMonitor, heuristic_goal
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import Snapshot
from hrlxf_models.planner import bucket_edges

HRL_CLASS = "LitaAgentHRL"
GOAL_KEYS = ("q_buy", "p_buy", "q_sell", "p_sell")
VIOLATIONS = ("unsafe_buy", "unsafe_sell", "illegal", "off_grid")


class DataMissing(Exception):
    """What a page needs is not in the data root (or is unusable); the message says why and what makes it."""


@dataclass(frozen=True)
class World:
    """Where one world's tables are: event tables, the micro table (q_safe / b_free per round), raw logs."""

    spec: str
    events: Path
    micro: Path | None
    raw: Path | None
    title: str


# ---------------------------------------------------------------------------------------------- worlds


class Store:
    """The data root plus a private cache of converted paired worlds (memoised, thread-safe)."""

    def __init__(self, root: Path, cache: Path | None = None):
        self.root = Path(root)
        self._cache = cache
        self._lock = threading.Lock()
        self._memo: dict[str, World] = {}

    @property
    def cache(self) -> Path:
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="hrlxf-analyze-"))
        return self._cache

    def world(self, spec: str) -> World:
        """Resolve a world spec; raw worlds (and lake worlds without a micro table) are converted once."""
        kind, _, rest = (spec or "").partition(":")
        if kind == "lake" and rest.count("/") == 1:
            return self._lake_world(spec, *rest.split("/"))
        if kind == "raw" and rest:
            return self._raw_world(spec, rest)
        raise DataMissing(f"bad world {spec!r}: expected lake:<run_id>/<world_id> or raw:<directory>")

    def _lake_world(self, spec: str, run_id: str, world_id: str) -> World:
        events = self.root / "lake" / "events" / run_id / world_id
        if not events.is_dir():  # converted worlds only: a directory is renamed into place once whole
            reason = quarantine_reason(self.root, run_id, world_id)
            if reason:
                raise DataMissing(f"world {run_id}/{world_id} is quarantined: {reason}")
            raise DataMissing(f"world {run_id}/{world_id} is not in {self.root / 'lake' / 'events'} "
                              "(run `hrlxf collect` then `hrlxf tables`)")
        micro = self.root / "lake" / "micro" / run_id / f"{world_id}.parquet"
        raw = self.root / "raw" / run_id / world_id
        if not micro.exists():
            micro = self._micro(spec, events)
        return World(spec, events, micro, raw if raw.exists() else None, f"{run_id}/{world_id}")

    def _raw_world(self, spec: str, rel: str) -> World:
        raw = Path(rel) if Path(rel).is_absolute() else self.root / rel
        if not (raw / "world.json").exists():
            raise DataMissing(f"no tracked world at {raw} (evaluations and audits keep their worlds' logs since "
                              "`hrlxf evaluate` / `hrlxf audit` record them: run them again to get them)")
        if not (raw / "DONE").exists():
            raise DataMissing(f"the world at {raw} is not complete (no DONE): it crashed or is still being played")
        with self._lock:
            if spec in self._memo:
                return self._memo[spec]
        from tasks.convert import BadWorld, world_tables, write_world

        events = self.cache / _key(spec) / "events"
        if not events.is_dir():
            try:
                rows = world_tables(raw.name, raw.parent.name, raw)
            except BadWorld as e:
                raise DataMissing(f"the world at {raw} cannot be read: {e}") from None
            write_world(events, rows)
        world = World(spec, events, self._micro(spec, events), raw, f"{raw.parent.name}/{raw.name}")
        with self._lock:
            self._memo[spec] = world
        return world

    def _micro(self, spec: str, events: Path) -> Path:
        """The micro rows of a converted world (the project's `micro_rows`), written once into the cache."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from hrlxf_agent.state import FeatureSpec
        from tasks.micro import micro_rows, micro_schema

        out = self.cache / _key(spec) / "micro.parquet"
        if not out.exists():
            fspec = FeatureSpec()
            tmp = out.with_suffix(".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(micro_rows(events, fspec), schema=micro_schema(fspec)), tmp)
            tmp.replace(out)
        return out


def _key(spec: str) -> str:
    return hashlib.sha1(spec.encode()).hexdigest()[:16]


def raw_spec(root: Path, directory: Path) -> str:
    """The spec of a raw world directory (relative to the root when it lies inside)."""
    try:
        return f"raw:{Path(directory).resolve().relative_to(Path(root).resolve())}"
    except ValueError:
        return f"raw:{Path(directory).resolve()}"


def _scan(events: Path, table: str) -> pl.LazyFrame:
    path = events / f"{table}.parquet"
    if not path.exists():
        raise DataMissing(f"{path} is missing (run `hrlxf tables`)")
    return pl.scan_parquet(path)


def agents(world: World) -> pl.DataFrame:
    """The tracked factories of a world (id, class, level, score)."""
    return (_scan(world.events, "agents").select("agent_id", "agent_class", "level", "n_lines", "n_steps", "score")
            .sort("agent_id").collect())


def morning(world: World, agent_id: str, step: int) -> Snapshot:
    """The agent's morning Snapshot of that day, as logged."""
    rows = (_scan(world.events, "days").filter((pl.col("agent_id") == agent_id) & (pl.col("step") == step))
            .select("snapshot_json").collect())
    if rows.height == 0:
        raise DataMissing(f"no morning snapshot of {agent_id} on day {step} in {world.title}")
    return Snapshot.from_dict(json.loads(rows["snapshot_json"][0]))


def agent_days(world: World, agent_id: str) -> pl.DataFrame:
    """Day by day: end-of-day balance, input stock and shortfall (the world's records), the morning's
    output stock and storage cost per unit (the Snapshot), and the contracts signed / executed that day."""
    daily = (_scan(world.events, "daily").filter(pl.col("agent_id") == agent_id)
             .select("step", "balance", "inventory_input", "shortfall_quantity").collect())
    days = _scan(world.events, "days").filter(pl.col("agent_id") == agent_id).select("step", "snapshot_json").collect()
    snaps = [Snapshot.from_dict(json.loads(s)) for s in days["snapshot_json"]]
    mornings = pl.DataFrame({"step": days["step"], "inventory_output": [s.inventory_output for s in snaps],
                             "storage_cost": [s.storage_cost for s in snaps]},
                            schema={"step": pl.Int64, "inventory_output": pl.Int64, "storage_cost": pl.Float64})
    mine = (_scan(world.events, "contracts").filter((pl.col("seller") == agent_id) | (pl.col("buyer") == agent_id))
            .select("signed_at", "executed_at").collect())

    def per_day(column: str, name: str) -> pl.DataFrame:
        return (mine.filter(pl.col(column).is_not_null() & (pl.col(column) >= 0))  # -1 / null: did not happen
                .group_by(pl.col(column).alias("step")).agg(pl.len().cast(pl.Int64).alias(name)))

    out = daily.join(mornings, on="step", how="full", coalesce=True).join(paid(world, agent_id), on="step", how="left")
    for column, name in (("signed_at", "signed"), ("executed_at", "executed")):
        out = out.join(per_day(column, name), on="step", how="left").with_columns(pl.col(name).fill_null(0))
    return out.sort("step")


def paid(world: World, agent_id: str) -> pl.DataFrame:
    """Storage cost and shortfall penalty paid each day (scml's ufun, in world.json since the collection
    kept them); null for older worlds, which recorded only the Snapshot's per-unit rate."""
    series: dict[str, list] = {}
    if world.raw is not None and (world.raw / "world.json").exists():
        series = json.loads((world.raw / "world.json").read_text()).get("daily", {}).get(agent_id, {})
    n = len(series.get("storage_cost", []))
    return pl.DataFrame({"step": list(range(n)), "storage_paid": series.get("storage_cost", []),
                         "shortfall_paid": series.get("shortfall_penalty", [])[:n]},
                        schema={"step": pl.Int64, "storage_paid": pl.Float64, "shortfall_paid": pl.Float64})


def l1_bounds(snap: Snapshot) -> dict[str, Any]:
    """L1's bounds of a Snapshot (the project's one shield): q_safe per delivery day, b_free."""
    b = SafetyShield().bounds(snap)
    return {"q_safe_buy": [float(x) for x in b.q_safe_buy], "q_safe_sell": [float(x) for x in b.q_safe_sell],
            "b_free": float(b.b_free)}


@lru_cache(maxsize=64)
def _plans(path: Path, mtime: float) -> dict[int, dict[str, Any]]:
    out = {}
    with path.open() as f:
        for line in f:
            if '"day_snapshot"' in line and '"plan"' in line:
                e = json.loads(line)
                if isinstance(e.get("plan"), dict):
                    out[int(e["step"])] = e["plan"]
    return out


def plans(world: World, agent_id: str) -> dict[int, dict[str, Any]]:
    """Our agent's goal of each day (the tracker's ``plan`` note), {} when the log has none."""
    path = world.raw / "events" / f"{agent_id}.jsonl" if world.raw is not None else None
    if path is None or not path.exists():
        return {}
    return _plans(path, path.stat().st_mtime)


def committed(world: World, agent_id: str, snap: Snapshot) -> dict[str, list[float]]:
    """What the agent signed that day per delivery bucket (buy, sell): the monitor's own ``committed_today``
    on the morning Snapshot plus the day's deals (`tasks.micro.with_deals`)."""
    from tasks.micro import with_deals

    deals = (_scan(world.events, "outcomes")
             .filter((pl.col("agent_id") == agent_id) & (pl.col("step") == snap.step) & pl.col("success"))
             .select("partner", "agreement_q", "agreement_t", "agreement_p").collect())
    buy = set(snap.buy_partners)
    done = [(r["partner"] in buy, r["agreement_t"] - snap.step, r["agreement_q"], r["agreement_p"])
            for r in deals.iter_rows(named=True) if r["partner"] in buy or r["partner"] in snap.sell_partners]
    monitor = GlobalMonitor()
    monitor.reset(snap, heuristic_goal(snap))
    cb, cs = monitor.committed_today(with_deals(snap, done))
    return {"buy": [float(x) for x in cb], "sell": [float(x) for x in cs]}


def bucket_labels(horizon: int) -> list[str]:
    return [f"[{lo},{hi}]" for lo, hi in bucket_edges(horizon)]


def goal_table(world: World, agent_id: str, step: int) -> pl.DataFrame | None:
    """Per bucket: L2's goal and the rule goal (game units) against what was signed that day; None without a plan."""
    plan = plans(world, agent_id).get(step)
    if plan is None:
        return None
    snap = morning(world, agent_id, step)
    done = committed(world, agent_id, snap)
    goal, rule = plan["goal"], plan["rule_goal"]
    return pl.DataFrame({
        "bucket": bucket_labels(snap.horizon),
        "goal_q_buy": goal["q_buy"], "rule_q_buy": rule["q_buy"], "committed_buy": done["buy"], "goal_p_buy": goal["p_buy"],
        "goal_q_sell": goal["q_sell"], "rule_q_sell": rule["q_sell"], "committed_sell": done["sell"],
        "goal_p_sell": goal["p_sell"],
    }).with_columns(pl.lit(plan.get("source", "?")).alias("source"))


# ---------------------------------------------------------------------------------------------- negotiations

_OFFERS = ["in_q", "in_t", "in_p", "op", "out_q", "out_t", "out_p"]


def threads(world: World, agent_id: str, step: int) -> pl.DataFrame:
    """The agent's negotiation threads of a day: partner, side, decisions, and whether it ended in a deal."""
    d = (_scan(world.events, "decisions").filter((pl.col("agent_id") == agent_id) & (pl.col("step") == step))
         .group_by("partner").agg(pl.col("is_buy").first(), pl.len().alias("decisions"), pl.col("seq").min().alias("first_seq"))
         .collect())
    o = (_scan(world.events, "outcomes").filter((pl.col("agent_id") == agent_id) & (pl.col("step") == step))
         .group_by("partner").agg(pl.col("success").any().alias("deal")).collect())
    return d.join(o, on="partner", how="left").sort("first_seq").drop("first_seq")


def days_with_threads(world: World, agent_id: str) -> list[int]:
    return (_scan(world.events, "decisions").filter(pl.col("agent_id") == agent_id).select("step").unique()
            .sort("step").collect()["step"].to_list())


def replay(world: World, agent_id: str, step: int, partner: str) -> pl.DataFrame:
    """Every decision of the agent in one thread, round by round: the partner's offer (in_*), the op, the agent's
    offer (out_*), and L1's room then: q_safe for each offer's delivery day (room_in / room_out) and b_free."""
    keys = (pl.col("agent_id") == agent_id) & (pl.col("step") == step) & (pl.col("partner") == partner)
    d = (_scan(world.events, "decisions").filter(keys)
         .select("seq", "round", "batch", "kind", "rel_time", "negotiation_id", "is_buy", *_OFFERS).collect())
    if d.height == 0:
        raise DataMissing(f"{agent_id} made no decision with {partner} on day {step} in {world.title}")
    if world.micro is not None and world.micro.exists():
        m = pl.scan_parquet(world.micro).filter(keys).select("seq", pl.col("q_safe").cast(pl.List(pl.Float64)), "b_free").collect()
    else:
        m = pl.DataFrame(schema={"seq": pl.Int64, "q_safe": pl.List(pl.Float64), "b_free": pl.Float64})
    out = d.join(m, on="seq", how="left").sort("seq")

    def room(t: str) -> pl.Expr:
        k = pl.col(t) - step
        return pl.when(k.is_between(0, pl.col("q_safe").list.len() - 1)).then(pl.col("q_safe").list.get(k, null_on_oob=True))

    return out.with_columns(room("in_t").alias("room_in"), room("out_t").alias("room_out"))


def outcome(world: World, agent_id: str, step: int, partner: str) -> dict[str, Any] | None:
    """How the thread ended (success and agreement), None if no end was logged."""
    o = (_scan(world.events, "outcomes")
         .filter((pl.col("agent_id") == agent_id) & (pl.col("step") == step) & (pl.col("partner") == partner))
         .select("success", "agreement_q", "agreement_t", "agreement_p").collect())
    if o.height == 0:
        return None
    deal = o.filter(pl.col("success"))
    return (deal if deal.height else o).row(0, named=True)


def batch(world: World, agent_id: str, batch_id: int) -> pl.DataFrame:
    """Every thread the agent decided in one call (same ``batch`` id)."""
    return (_scan(world.events, "decisions").filter((pl.col("agent_id") == agent_id) & (pl.col("batch") == batch_id))
            .select("partner", "is_buy", "round", "negotiation_id", *_OFFERS).sort("partner").collect())


# ---------------------------------------------------------------------------------------------- collections


def collections(root: Path) -> list[dict[str, Any]]:
    """Each collection run's summary.json (worlds done / failed, events per agent type, failures)."""
    from tasks.events import converted

    lake: dict[str, list[str]] = {}
    for world in converted(Path(root) / "lake" / "events"):
        lake.setdefault(world.parent.name, []).append(world.name)
    return [{"run_id": path.parent.name, "summary": _json(path), "lake_worlds": lake.get(path.parent.name, [])}
            for path in sorted(Path(root).glob("raw/*/summary.json"))]


def quarantine(root: Path) -> pl.DataFrame:
    path = Path(root) / "lake" / "events" / "quarantine.parquet"
    if not path.exists():
        return pl.DataFrame(schema={"run_id": pl.String, "world_id": pl.String, "reason": pl.String})
    return pl.scan_parquet(path).select("run_id", "world_id", "reason").collect()


def quarantine_reason(root: Path, run_id: str, world_id: str) -> str | None:
    q = quarantine(root).filter((pl.col("run_id") == run_id) & (pl.col("world_id") == world_id))
    return q["reason"][0] if q.height else None


def _json(path: Path) -> dict[str, Any]:
    return _json_cached(Path(path), Path(path).stat().st_mtime)


@lru_cache(maxsize=128)
def _json_cached(path: Path, mtime: float) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataMissing(f"{path} is unreadable: {e}") from None


# ---------------------------------------------------------------------------------------------- evaluations


def evaluations(root: Path) -> list[Path]:
    """Every paired evaluation report under reports/ (tournament reports have no paired table)."""
    return [p for p in sorted(Path(root).glob("reports/**/evaluation.json")) if _json(p).get("mode", "paired") == "paired"]


def evaluation(root: Path, rel: str) -> tuple[Path, dict[str, Any]]:
    path = Path(root) / rel
    if path.name != "evaluation.json" or not path.exists():
        raise DataMissing(f"no evaluation at {rel!r} (run `hrlxf evaluate`)")
    return path, _json(path)


def paired_table(doc: dict[str, Any]) -> pl.DataFrame:
    """Candidate - reference per pair: mean, 95% interval, wins / losses, and which side of 0 it lies."""
    from tasks.stats import excludes_zero

    rows = [{"a": p["a"], "b": p["b"], "n": p.get("n"), "mean": p.get("mean"),
             "lo": (p.get("ci95") or [None, None])[0], "hi": (p.get("ci95") or [None, None])[1],
             "half_width": p.get("half_width"), "wins": p.get("wins"), "losses": p.get("losses"),
             "ties": p.get("ties"), "side": excludes_zero(p)} for p in doc.get("paired", [])]
    schema = {"a": pl.String, "b": pl.String, "n": pl.Int64, "mean": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
              "half_width": pl.Float64, "wins": pl.Int64, "losses": pl.Int64, "ties": pl.Int64, "side": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def candidate_table(doc: dict[str, Any]) -> pl.DataFrame:
    """Per candidate: score, decisions, unsafe / illegal counts and the thesis' metrics (``metrics``)."""
    rows = []
    for label, a in doc.get("agents", {}).items():
        score = a.get("score") or {}
        rows.append({"candidate": label, "agent": a.get("agent"), "worlds": a.get("worlds"), "score": score.get("mean"),
                     "score_hw": score.get("half_width"), "decisions": a.get("decisions"),
                     "unsafe_any": a.get("unsafe_any"), "illegal": a.get("illegal"), "off_grid": a.get("off_grid"),
                     **{k: float(v) for k, v in (a.get("metrics") or {}).items() if isinstance(v, (int, float))}})
    return pl.DataFrame(rows)


def eval_worlds(root: Path, path: Path, doc: dict[str, Any]) -> tuple[Path | None, pl.DataFrame]:
    """The evaluation's worlds dir (None for reports written before it was recorded) and, per (world, candidate),
    the score, the error and the spec of its tracked world (null when its logs were not kept)."""
    from tasks.candidates import Candidate

    rel = doc.get("worlds_dir")
    worlds_dir = (path.parent / rel).resolve() if rel else None
    keys = {c["label"]: Candidate(label=c["label"], spec=c.get("spec", c["label"]), agent=c.get("agent", "")).key()
            for c in doc.get("candidates", [])}
    plays = {c["label"]: c.get("agent") for c in doc.get("candidates", [])}
    rows = []
    for r in doc.get("per_world", []):
        unit = r.get("unit") or keys.get(r["candidate"], r["candidate"])  # rows named by content since schema 3
        raw = worlds_dir / f"w{r['world']:03d}" / unit if worlds_dir else None
        rows.append({"world": r["world"], "seed": r.get("seed"), "candidate": r["candidate"],
                     "agent": plays.get(r["candidate"]), "score": r.get("score"),
                     "error": r.get("error"),
                     "world_spec": raw_spec(root, raw) if raw is not None and (raw / "DONE").exists() else None})
    schema = {"world": pl.Int64, "seed": pl.Int64, "candidate": pl.String, "agent": pl.String, "score": pl.Float64,
              "error": pl.String, "world_spec": pl.String}
    return worlds_dir, pl.DataFrame(rows, schema=schema).sort("world", "candidate")


# ---------------------------------------------------------------------------------------------- audit


def audit_dir(root: Path) -> Path:
    return Path(root) / "reports" / "audit"


def audit_doc(root: Path) -> dict[str, Any]:
    path = audit_dir(root) / "audit.json"
    if not path.exists():
        raise DataMissing(f"no audit in {audit_dir(root)} (run `hrlxf audit`)")
    return _json(path)


def audit_decisions(root: Path, agent: str | None = None, violation: str | None = None,
                    world: int | None = None) -> pl.DataFrame:
    """The audit's unsafe / illegal decisions, filtered, each with the spec of its tracked world (the replay link)."""
    path = audit_dir(root) / "decisions.parquet"
    if not path.exists():
        raise DataMissing(f"{path} is missing (run `hrlxf audit`: it writes every unsafe or illegal decision there)")
    lf = pl.scan_parquet(path)
    if agent:
        lf = lf.filter(pl.col("agent") == agent)
    if world is not None:
        lf = lf.filter(pl.col("world") == world)
    if violation == "illegal":
        lf = lf.filter(pl.col("illegal").is_not_null())
    elif violation in VIOLATIONS:
        lf = lf.filter(pl.col(violation))
    df = lf.select("world", "seed", "agent", "agent_id", "step", "kind", "partner", "is_buy", "op", "q", "t", "p",
                   "unsafe_buy", "unsafe_sell", "illegal", "off_grid").sort("world", "agent", "step").collect()
    worlds = audit_dir(root) / "worlds"
    specs = {(w, a): raw_spec(root, worlds / f"w{w:03d}" / a) for w, a in df.select("world", "agent").unique().iter_rows()
             if (worlds / f"w{w:03d}" / a / "DONE").exists()}
    return df.with_columns(pl.Series("world_spec", [specs.get((w, a)) for w, a in df.select("world", "agent").iter_rows()],
                                     dtype=pl.String))


# ---------------------------------------------------------------------------------------------- training


def _scalars(d: dict[str, Any], prefix: str = "", depth: int = 2) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if k in ("config", "history"):
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and depth > 1:
            out.update(_scalars(v, f"{prefix}{k}.", depth - 1))
    return out


def model_metrics(root: Path) -> dict[str, dict[str, float]]:
    """Each trained model's numeric metrics (``models/*/metrics.json``, flattened two levels)."""
    return {p.parent.name: _scalars(_json(p)) for p in sorted(Path(root).glob("models/*/metrics.json"))}


def histories(root: Path) -> pl.DataFrame:
    """Every loss curve (``models/**/history.json``) in long form: model, part, epoch, metric, value."""
    models = Path(root) / "models"
    rows = []
    for path in sorted(models.glob("**/history.json")):
        parts = path.parent.relative_to(models).parts
        for entry in _json(path) if isinstance(_json(path), list) else []:
            for k, v in entry.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append({"model": parts[0], "part": "/".join(parts[1:]) or "fit", "epoch": int(entry.get("epoch", 0)),
                                 "metric": k, "value": float(v)})
    return pl.DataFrame(rows, schema={"model": pl.String, "part": pl.String, "epoch": pl.Int64, "metric": pl.String,
                                      "value": pl.Float64})


def bundles(root: Path) -> pl.DataFrame:
    """Each bundle's manifest headline metrics, and which one LATEST points at."""
    broot = Path(root) / "bundles"
    latest_file = broot / "LATEST"
    latest = Path(latest_file.read_text().strip()).name if latest_file.exists() else None
    rows = []
    for path in sorted(broot.glob("*/manifest.json")):
        m = _json(path)
        rows.append({"bundle": path.parent.name, "latest": path.parent.name == latest, "l3_mode": m.get("l3_mode"),
                     "trained": (m.get("metrics") or {}).get("trained"),
                     **_scalars((m.get("metrics") or {}).get("headline") or {})})
    return pl.DataFrame(rows)


def finetune_runs(root: Path) -> list[str]:
    return sorted(p.parent.name for p in (Path(root) / "finetune").glob("*/metrics.jsonl"))


def finetune_metrics(root: Path, run: str) -> pl.DataFrame:
    """One fine-tuning run's metrics.jsonl: one row per iteration, numeric columns (reward, eval/..., l3/...)."""
    path = Path(root) / "finetune" / run / "metrics.jsonl"
    if not path.exists():
        raise DataMissing(f"no fine-tuning run {run!r} in {Path(root) / 'finetune'} (run `hrlxf finetune`)")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            rows.append({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
                         for k, v in e.items() if k not in ("errors", "phase")} | {"phase": e.get("phase")})
    return pl.DataFrame(rows, infer_schema_length=None)
