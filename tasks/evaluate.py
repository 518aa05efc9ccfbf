"""Stage: the paired evaluation (DESIGN.md section 4, "Evaluation is paired").

W world configurations are generated from seeds (scml's std generator, the
profile's length); in each, every candidate in turn takes the same slots with
the same seeds while the other factories are the opponents (by default the
experts of the collection). One (world, what plays) is one unit of work
(`tasks.paired.play_paired`): its row goes to ``<worlds_dir>/w<world>/<content>.json``
(named by `tasks.candidates.content_digest`: candidates with the same content
share it) as soon as it is played, so a killed run (even ``kill -9``) plays
only what is missing next time. The figure that matters is each candidate's score minus the
reference's (PenguinAgent by default) world by world, with its 95% interval
(Student t and a bootstrap), wins and losses; the same against the best expert
of the run; the thesis' measurements per candidate; and the power of the run
(the smallest difference it resolves). A world that crashed for one candidate
is dropped from every candidate's figures (reported, with the error).

``evaluation.json`` (schemas/evaluation.schema.json), ``evaluation.md``, ``forest.png``.
`decide_latest` moves ``LATEST`` only on evidence. The tournament mode is `tasks.tournament`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tasks.candidates import Candidate, parse_candidates
from tasks.collect import PROFILES as COLLECT_PROFILES
from tasks.paired import CRN_POLICIES, PairedJob, check_run_size, play_paired, slot_of
from tasks.stats import excludes_zero, mean_interval, paired_difference
from tasks.store import StoreRoot

EVALUATION_SCHEMA_VERSION = 3
WORLD_SEED_BASE = 7_000_000  # evaluation worlds never share a seed with collect (seed*100000+i) or the audit
LEVELS = ("first", "middle", "last")
MIN_FACTORIES = 3  # 2 or 3 processes are drawn: fewer factories leave a level empty
#: factories per world by name (None: scml's own sizes, 2-3 processes of 4-8 factories, as the league draws them)
SIZE_PRESETS: dict[str, tuple[int, int] | None] = {"official": None, "collection": COLLECT_PROFILES["default"].agents_per_world}
#: the thesis' measurements (seed 000 section 6.2-6.3), per world, as `tasks.paired.world_metrics` names them
METRICS = ("negotiations", "negs_succeeded", "contracts_signed", "contracts_executed", "contracts_nullified",
           "bought", "sold", "trade_volume", "shortfall_quantity", "shortfall_penalty", "storage_cost", "bankruptcies",
           "inventory_volatility", "cash_volatility")


@dataclass
class EvalConfig:
    """A paired evaluation: which candidates, against whom, in how many worlds of how many steps."""

    worlds: int = 30  # sized to resolve ~0.02 between a trained bundle and PenguinAgent (README, "Evaluation")
    steps: int = 50
    seed: int = 0
    candidates: tuple[str, ...] = ("PenguinAgent",)  # bundles given are added in front
    reference: str = "PenguinAgent"  # every candidate's paired difference is taken against it (added if missing)
    opponents: tuple[str, ...] = field(default_factory=lambda: COLLECT_PROFILES["default"].experts)
    # factories per world, drawn in (lo, hi); None: scml's own sizes (SIZE_PRESETS["official"])
    agents_per_world: tuple[int, int] | None = COLLECT_PROFILES["default"].agents_per_world
    workers: int = 2
    world_timeout: float = 1800.0
    keep_logs: bool = True  # track each candidate's factories (`tasks.paired.PairedJob.log_dir`) for `hrlxf analyze`
    crn: str = "daily"  # common random numbers: reseed every generator from (world seed, day) each day, or "once"

    def validate(self) -> None:
        check_run_size(self.worlds, self.steps, self.workers)
        if not self.opponents:
            raise ValueError("opponents: give at least one opponent agent")
        if self.agents_per_world is not None:
            lo, hi = self.agents_per_world
            if not MIN_FACTORIES <= lo <= hi:
                raise ValueError(f"agents_per_world must be a range (lo, hi) with {MIN_FACTORIES} <= lo <= hi, or None "
                                 f"for scml's own sizes; got {self.agents_per_world}")
        if self.crn not in CRN_POLICIES:
            raise ValueError(f"crn must be one of {', '.join(CRN_POLICIES)}, got {self.crn!r}")
        from hrlxf_agent.registry import resolve_all

        resolve_all(list(self.opponents))  # an unknown name fails before any world

    @classmethod
    def smoke(cls, **kwargs: Any) -> "EvalConfig":
        return cls(**{**dict(worlds=1, steps=10, candidates=("PenguinAgent",), agents_per_world=(6, 8),
                             opponents=("AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ")), **kwargs})


def opponent_pool(name: str) -> tuple[str, ...]:
    """The opponents a pool name stands for: ``collection`` (the experts every collection and the search's league
    play), ``heldout`` (the std agents of scml-agents that neither the collection nor the search's league ever
    plays), ``winners`` (the 2025 winners). A ValueError names an unknown pool."""
    from hrlxf_agent.registry import WINNERS_2025

    if name == "collection":
        return tuple(COLLECT_PROFILES["default"].experts)
    if name == "winners":
        return tuple(WINNERS_2025)
    if name == "heldout":
        from scml_agents import get_agents

        # the search's league plays the collection's experts but two (tasks.finetune.LeagueConfig; a test checks it)
        seen = {e for p in COLLECT_PROFILES.values() for e in p.experts}
        every = [c.__name__ for year in (2024, 2025) for c in get_agents(year, track="std", as_class=True)]
        return tuple(n for n in dict.fromkeys(every) if n not in seen)
    raise ValueError(f"unknown opponent pool {name!r}: choose collection, heldout or winners, or name the agents")


def parse_opponents(text: str) -> tuple[str, ...]:
    """``--opponents``: a pool name (`opponent_pool`) or comma-separated agent names, resolved now (an unknown
    name fails before any world)."""
    from hrlxf_agent.registry import resolve_all

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if len(names) == 1 and names[0] in ("collection", "heldout", "winners"):
        names = opponent_pool(names[0])
    if not names:
        raise ValueError(f"--opponents: no opponent in {text!r}")
    resolve_all(list(names))
    return names


def parse_sizes(text: str) -> tuple[int, int] | None:
    """``--sizes``: a preset (official: scml's own 8-24 factories; collection: 8-12) or LO-HI factories."""
    if text in SIZE_PRESETS:
        return SIZE_PRESETS[text]
    lo, sep, hi = text.partition("-")
    try:
        sizes = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"--sizes: unknown size preset {text!r}: choose {', '.join(SIZE_PRESETS)} or LO-HI "
                         "factories (e.g. 8-12)") from None
    if not MIN_FACTORIES <= sizes[0] <= sizes[1]:
        raise ValueError(f"--sizes: {text!r} is not a range of at least {MIN_FACTORIES} factories "
                         f"(LO-HI with {MIN_FACTORIES} <= LO <= HI: a factory per level of 3 processes)")
    return sizes


def parse_steps(text: str) -> tuple[int, ...]:
    """``--steps``: one length or several, comma-separated (50,100,200); each a whole number of at least 3."""
    out = []
    for part in (x.strip() for x in str(text).split(",")):
        if not part.isdigit() or int(part) < 3:
            raise ValueError(f"--steps: {part!r} is not a number of steps (a whole number >= 3)")
        out.append(int(part))
    if not out:
        raise ValueError("--steps: give at least one length")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class EvalUnit:
    """One (world, what plays): the job, where its row goes and the labels that share it (the same content)."""

    job: PairedJob
    path: str
    store: StoreRoot | None = None  # an object-store root: the bundle is fetched, the row sent (`tasks.store`)
    labels: tuple[str, ...] = ()


#: the code that plays every unit whoever the candidate is (the world and its seeds, the audit and the tracker
#: wrapped around every candidate, the unit's time limit and log writer): its digest keys every row
RUNNER_FILES = ("tasks/paired.py", "tasks/collect.py", "hrlxf_agent/audit.py", "hrlxf_agent/tracker.py",
                "hrlxf_agent/intercept.py")


def runner_digest() -> str:
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for name in RUNNER_FILES:
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()


def units_dir(root: Path, config: EvalConfig, code: str = "") -> Path:
    """Where the unit rows of this evaluation live, ``<root>/<key>``: keyed by what makes a world (steps, seed,
    opponents, sizes, time limit, the seed policy), the code that plays every unit (`runner_digest`) and
    ``code`` (the pipeline passes its stage's code version), so other settings or another runner never reuse
    them (each row is named by its candidate's content)."""
    import hashlib

    from tasks.fingerprint import canonical

    what = {"steps": config.steps, "seed": config.seed, "opponents": list(config.opponents),
            "sizes": list(config.agents_per_world) if config.agents_per_world is not None else "official",
            "timeout": config.world_timeout, "base": WORLD_SEED_BASE, "code": code, "crn": config.crn,
            "runner": runner_digest()}
    return Path(root) / hashlib.sha256(canonical(what).encode()).hexdigest()[:12]


def world_seed(config: EvalConfig, world: int) -> int:
    return WORLD_SEED_BASE + config.seed * 10_000 + world


def resolve_candidates(config: EvalConfig, bundles: Sequence[str | Path] = (), bundles_root: Path | None = None) -> list[Candidate]:
    """The bundles given, then the config's candidates, then the reference if missing; all resolved now."""
    specs = [str(b) for b in bundles] + list(config.candidates)
    cands = parse_candidates(specs, bundles_root)
    if config.reference not in {c.label for c in cands}:
        cands += parse_candidates([config.reference], bundles_root)
    return cands


def units(config: EvalConfig, candidates: Sequence[Candidate], worlds_dir: Path,
          worlds: Sequence[int] | None = None) -> list[EvalUnit]:
    """Every (world, what plays) of the evaluation, world by world: candidates with the same content
    (`Candidate.content`) share one unit, whose row is named by that content. ``worlds``: which world
    indices (default: the first ``config.worlds``; a search stratified by role picks its own)."""
    sizes = tuple(config.agents_per_world) if config.agents_per_world is not None else None
    out = []
    for w in (range(config.worlds) if worlds is None else worlds):
        sharing: dict[str, list[Candidate]] = {}
        for c in candidates:
            sharing.setdefault(c.key(), []).append(c)
        for key, same in sharing.items():
            c, base = same[0], Path(worlds_dir) / f"w{w:03d}" / key
            out.append(EvalUnit(PairedJob(w, world_seed(config, w), c.label, c.agent, tuple(config.opponents),
                                          config.steps, dict(c.params), config.world_timeout, sizes,
                                          str(base) if config.keep_logs else None, config.crn),
                                f"{base}.json", labels=tuple(x.label for x in same)))
    return out


PLAN = "plan.json"


def seed_policy(config: EvalConfig) -> dict[str, Any]:
    """How the worlds of a run are seeded (recorded in its plan and its report)."""
    return {"world_seed": f"{WORLD_SEED_BASE} + 10000 x {config.seed} + world",
            "crn": config.crn, "meaning": {"daily": "every generator reseeded from (world seed, day) before each day",
                                           "once": "random and numpy seeded once, when the world is built"}[config.crn]}


def record_plan(worlds_dir: Path, config: EvalConfig, candidates: Sequence[Candidate]) -> dict[str, Any]:
    """The plan of the run in ``worlds_dir``: the worlds planned when it started and when, the seed policy, every
    extension to more worlds (with when) and which labels have played which content. Written before any world."""
    from datetime import datetime, timezone

    path = Path(worlds_dir) / PLAN
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        plan = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        plan = {"created": now, "worlds": config.worlds, "seed_policy": seed_policy(config), "extensions": [],
                "contents": {}, "runs": []}
    largest = max([plan["worlds"], *(e["to"] for e in plan["extensions"])])
    if config.worlds > largest:
        plan["extensions"].append({"at": now, "from": largest, "to": config.worlds})
    plan.setdefault("runs", []).append({"at": now, "worlds": config.worlds})  # a report of fewer worlds says so
    for c in candidates:
        labels = plan["contents"].setdefault(c.key(), [])
        if c.label not in labels:
            labels.append(c.label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, path)
    return plan


def play_unit(unit: EvalUnit) -> dict[str, Any]:
    """Play one (world, candidate) and write its row atomically (a crash is a row too: it is the result)."""
    job, path, store = unit.job, Path(unit.path), unit.store
    if store is not None:  # in this process's mirror: the bundle from the store if it is not here
        path = store.here(path)
        params = dict(job.params)
        if "bundle" in params:
            params["bundle"] = str(store.here(params["bundle"]))
            store.fetch_tree(Path(params["bundle"]))
        job = replace(job, params=params, log_dir=str(store.here(job.log_dir)) if job.log_dir else None)
    row = play_paired(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(row, default=float))
    os.replace(tmp, path)
    if store is not None:
        if job.log_dir and Path(job.log_dir).is_dir():
            store.send_tree(Path(job.log_dir))
        store.send([path])
    return row


def died(unit: EvalUnit) -> dict[str, Any]:
    """The row of a unit whose process died: not written, so the next run plays it again."""
    j = unit.job
    return {"world": j.world, "seed": j.seed, "agent": j.candidate, "seconds": None,
            "error": "the worker process died while playing this world"}


def _unit_row(unit: EvalUnit) -> dict[str, Any]:
    """The row on disk of a unit; one whose process died (none) is a failed row."""
    p = Path(unit.path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return died(unit)
    except (OSError, json.JSONDecodeError) as e:
        return {**died(unit), "error": f"{p}: unreadable result ({type(e).__name__}: {e})"}


def unit_name(unit: EvalUnit) -> str:
    """The name of a unit's task (in the Prefect UI)."""
    return f"evaluate-w{unit.job.world}-{unit.job.candidate}"


def todo(all_units: Sequence[EvalUnit]) -> list[EvalUnit]:
    return [u for u in all_units if not Path(u.path).is_file()]


def read_rows(all_units: Sequence[EvalUnit]) -> list[dict[str, Any]]:
    """The rows on disk, one per (world, label): a unit shared by several labels gives each its row."""
    rows = []
    for u in all_units:
        row = _unit_row(u)
        rows += [{**row, "agent": label, "unit": Path(u.path).stem} for label in (u.labels or (u.job.candidate,))]
    return rows


# ------------------------------------------------------------------------------- the figures


def _pair(scores: dict[str, dict[int, float]], worlds: list[int], a: str, b: str, seed: int) -> dict[str, Any]:
    return {"a": a, "b": b, **paired_difference([scores[a][w] for w in worlds], [scores[b][w] for w in worlds], seed)}


def complete_cases(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> tuple[dict, list[int], list[dict]]:
    """(the rows by (world, candidate), the worlds every candidate finished, the others with their errors)."""
    by = {(r["world"], r["agent"]): r for r in rows}
    dropped, worlds = [], []
    for w in sorted({r["world"] for r in rows}):
        errors = [{"candidate": c, "error": by[(w, c)]["error"] if (w, c) in by else "not played"}
                  for c in labels if (w, c) not in by or by[(w, c)].get("error")]
        (dropped.append({"world": w, "errors": errors}) if errors else worlds.append(w))
    return by, worlds, dropped


def level_scores(row: dict[str, Any]) -> dict[str, float]:
    """A row's score per level its candidate held in the world (the mean of its factories there); {} for rows
    written before levels were recorded."""
    out: dict[str, list[float]] = {}
    for level, score in zip(row.get("levels") or (), row.get("scores") or ()):
        out.setdefault(level, []).append(float(score))
    return {level: sum(v) / len(v) for level, v in out.items()}


def by_level(by: dict, worlds: list[int], labels: Sequence[str], pairs: Sequence[tuple[str, str]],
             seed: int) -> dict[str, Any]:
    """The paired table split by the level the candidates held (every candidate holds the same factories of a
    world): per level, the worlds where they held one there and each pair's difference over those worlds."""
    out: dict[str, Any] = {}
    for level in LEVELS:
        per = {c: {w: level_scores(by[(w, c)]).get(level) for w in worlds} for c in labels}
        here = [w for w in worlds if all(per[c][w] is not None for c in labels)]
        out[level] = {"worlds": len(here),
                      "paired": [{"a": a, "b": b, **paired_difference([per[a][w] for w in here],
                                                                       [per[b][w] for w in here], seed)}
                                 for a, b in pairs],
                      "score": {c: mean_interval([per[c][w] for w in here], seed) for c in labels}}
    return out


def summarize(rows: Sequence[dict[str, Any]], candidates: Sequence[Candidate], config: EvalConfig,
              extra_pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The evaluation document from the unit rows (shape: schemas/evaluation.schema.json).

    Only worlds every candidate finished count (complete cases): a world that crashed for one candidate
    is dropped from every candidate's figures and listed under ``dropped``.
    """
    labels = [c.label for c in candidates]
    by, worlds, dropped = complete_cases(rows, labels)
    scores = {c: {w: float(by[(w, c)]["score"]) for w in worlds} for c in labels}
    agents: dict[str, Any] = {}
    for c in candidates:
        mine = [by[(w, c.label)] for w in worlds]
        counts = {k: int(sum(r["counts"][k] for r in mine)) for k in
                  ("decisions", "accepts", "offers", "unsafe_buy", "unsafe_sell", "unsafe_any", "illegal", "off_grid")}
        agents[c.label] = {
            "spec": c.spec, "agent": c.agent, "bundle": c.bundle, "expert": c.expert, "worlds": len(mine),
            "score": mean_interval([scores[c.label][w] for w in worlds]),
            **counts, "unsafe_rate": counts["unsafe_any"] / counts["decisions"] if counts["decisions"] else 0.0,
            "metrics": {m: (sum(r["metrics"][m] for r in mine) / len(mine) if mine else None) for m in METRICS},
            "seconds_per_world": sum(r["seconds"] for r in mine) / len(mine) if mine else None,
        }
    experts = [c.label for c in candidates if c.expert and worlds]
    best_expert = max(experts, key=lambda c: agents[c]["score"]["mean"]) if experts else None
    pairs: list[tuple[str, str]] = [(c, config.reference) for c in labels if c != config.reference]
    if best_expert and best_expert != config.reference:
        pairs += [(c, best_expert) for c in labels if c not in (best_expert, config.reference)]
    pairs += [p for p in extra_pairs if p not in pairs and p[0] in labels and p[1] in labels]
    paired = [_pair(scores, worlds, a, b, config.seed) for a, b in pairs]
    levels = by_level(by, worlds, labels, pairs, config.seed)
    vs_ref = [p for p in paired if p["b"] == config.reference]
    widths = [p["half_width"] for p in vs_ref if p["half_width"] is not None]
    mdes = [p["mde80"] for p in vs_ref if p["mde80"] is not None]
    slots = {w: sorted({slot_of(f) for c in labels for f in by[(w, c)].get("factories", [])}) for w in worlds}
    return {
        "schema_version": EVALUATION_SCHEMA_VERSION, "mode": "paired",
        "config": {**asdict(config), "candidates": list(config.candidates), "opponents": list(config.opponents),
                   "agents_per_world": list(config.agents_per_world) if config.agents_per_world is not None else None},
        "candidates": [asdict(c) for c in candidates], "reference": config.reference, "best_expert": best_expert,
        "worlds": {"planned": len(worlds) + len(dropped), "complete": len(worlds), "dropped": dropped},
        "agents": agents, "paired": paired, "by_level": levels,
        "power": {"worlds": len(worlds), "resolution": max(widths) if widths else None,
                  "mde80": max(mdes) if mdes else None,
                  "note": None if widths else (vs_ref[0]["note"] if vs_ref else "no candidate beside the reference")},
        "same_slots": all(len({tuple(slot_of(f) for f in by[(w, c)].get("factories", [])) for c in labels}) == 1
                          for w in worlds),
        "per_world": [{"world": r["world"], "seed": r["seed"], "candidate": r["agent"], "score": r.get("score"),
                       "factories": r.get("factories"), "levels": r.get("levels"), "unit": r.get("unit"),
                       "seconds": r.get("seconds"), "error": r.get("error")}
                      for r in sorted(rows, key=lambda r: (r["world"], r["agent"]))],
        "slots": {str(w): s for w, s in slots.items()},
    }


def find_pair(doc: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """The paired difference ``a - b``, from ``b - a`` if only that one was taken."""
    direct = next((p for p in doc["paired"] if p["a"] == a and p["b"] == b), None)
    if direct is not None:
        return direct
    other = next((p for p in doc["paired"] if p["a"] == b and p["b"] == a), None)
    if other is None:
        return None
    flip = {k: (-v if isinstance(v, (int, float)) and k in ("mean",) else v) for k, v in other.items()}
    for k in ("ci95", "bootstrap_ci95"):
        flip[k] = [-other[k][1], -other[k][0]] if other[k] else None
    return {**flip, "a": a, "b": b, "wins": other["losses"], "losses": other["wins"]}


def decide_latest(doc: dict[str, Any], current: str | None, new: Sequence[str], rules: str | None = None) -> dict[str, Any]:
    """Where ``LATEST`` should point after this evaluation, and why.

    ``current``: the label of the bundle LATEST names now (None: there is none, or it does not load); ``new``:
    the labels of the bundles just made; ``rules``: the label of the rules bundle (`hrlxf_agent.bundle.RULES_BUNDLE`),
    when it played. The best new bundle (highest mean) takes LATEST only with evidence: better than the rules
    and than the current LATEST, each paired difference with an interval that excludes 0. Otherwise LATEST
    stays where it is, or, when there is none, becomes the rules: a tie, a loss or too few worlds never
    move it to a bundle.
    """
    agents = doc["agents"]
    fallback = ({"move": True, "to": rules} if current is None and rules in agents else
                {"move": False, "to": current})
    why_fallback = ("there was no LATEST: LATEST is the rules" if fallback["move"] else
                    "LATEST stays" if current is not None else "there was no LATEST and the rules did not play")
    new = [n for n in new if n in agents and agents[n]["worlds"] and n != rules]
    if not new:
        return {**fallback, "reason": f"no new bundle but the rules was evaluated; {why_fallback}"}
    best = max(new, key=lambda n: agents[n]["score"]["mean"])
    against = list(dict.fromkeys(b for b in (rules, current) if b is not None and b in agents and b != best))
    if not against:
        if current is None:
            return {"move": True, "to": best, "reason": "there was no LATEST and no rules bundle to beat"}
        return {"move": False, "to": current, "reason": f"{best} is already LATEST"}
    figures = []
    for other in against:
        diff = find_pair(doc, best, other)
        if diff is None:
            return {**fallback, "reason": f"{other} was not evaluated beside {best}; {why_fallback}"}
        if diff["half_width"] is None:
            return {**fallback, "reason": f"{best} - {other}: {diff['note']}; {why_fallback}"}
        figure = f"{best} - {other} = {diff['mean']:+.4f} ± {diff['half_width']:.4f} over {diff['n']} worlds"
        side = excludes_zero(diff)
        if side <= 0:
            return {**fallback, "reason": f"{figure}: not shown better (the interval "
                                          f"{'holds 0' if side == 0 else 'is below 0'}); {why_fallback}"}
        figures.append(figure)
    if best == current:
        return {"move": False, "to": current, "reason": f"{best} is already LATEST ({'; '.join(figures)})"}
    return {"move": True, "to": best, "reason": "; ".join(figures) + ": better, every interval excludes 0"}


def apply_latest(doc: dict[str, Any], bundles_root: Path) -> dict[str, Any] | None:
    """Point ``<bundles_root>/LATEST`` where the evaluation's ``latest`` decision says, if it moves."""
    from hrlxf_agent.bundle import set_latest

    decision = doc.get("latest")
    if decision and decision["move"]:
        set_latest(Path(decision["path"]), bundles_root)
    return decision


def pipeline_candidates(p: dict[str, Path], bundles: Sequence[str], bundles_root: Path | None = None
                        ) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """The pipeline's bundles (the artifacts named ``bundles``, in order) as candidate specs (the new ones, the
    starts of fine-tuned ones, the rules bundle, then the LATEST the run started with if it is not one of
    them), the pairs that decide the L3 variant and LATEST (every new bundle against the rules, its start and
    LATEST), and the new bundles' labels. ``bundles_root``: where the rules bundle is (written if missing)."""
    from hrlxf_agent.bundle import bundle_ref
    from hrlxf_agent.bundle import rules_bundle

    new = [Path(p[k]) for k in bundles if k in p]
    labels = [b.resolve().name for b in new]
    specs = [str(b) for b in new]
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    for b in new:  # a fine-tuned bundle against the bundle it started from
        start = json.loads((b / "manifest.json").read_text()).get("metrics", {}).get("from")
        if start:
            start = str(bundle_ref(b, start))  # relative to the bundle (absolute in older bundles)
            specs.append(start)
            pairs.append((b.resolve().name, Path(start).name))
    if bundles_root is not None:  # the rules as a bundle: what every new one must beat to take LATEST
        rules = rules_bundle(Path(bundles_root))
        specs.append(str(rules))
        pairs += [(n, rules.name) for n in labels if n != rules.name]
    if "latest" in p:
        current = Path(p["latest"]).resolve().name
        specs.append(str(p["latest"]))
        pairs += [(n, current) for n in labels if n != current]
    by_path: dict[Path, str] = {}  # one spec per bundle directory (the race's bundle may be the rules bundle)
    for spec in specs:
        by_path.setdefault(Path(spec).resolve(), spec)
    specs = list(by_path.values())
    pairs = list(dict.fromkeys(pairs))
    return specs, pairs, labels


# ------------------------------------------------------------------------------- the report


def _fmt(x: float | None, spec: str = ".4f", sign: bool = False) -> str:
    if x is None:
        return "-"
    return format(x, ("+" if sign else "") + spec)


def _ci(d: dict[str, Any]) -> str:
    return f"± {d['half_width']:.4f}" if d.get("half_width") is not None else "too few worlds"


def markdown(doc: dict[str, Any]) -> str:
    from tasks.report import md_table

    cfg, ref = doc["config"], doc["reference"]
    w = doc["worlds"]
    sizes = cfg.get("agents_per_world")
    size_text = f"{sizes[0]}-{sizes[1]} factories" if sizes else "scml's own sizes (2-3 processes of 4-8 factories)"
    lines = [f"Paired evaluation: {w['complete']} worlds x {cfg['steps']} steps (of {w['planned']} planned), seed "
             f"{cfg['seed']}, {size_text}; every candidate in the same slots of the same worlds; against "
             f"{', '.join(cfg['opponents'])}. Differences are world by world; 95% intervals: Student t "
             "(bootstrap beside it).", ""]
    plan = doc.get("plan")
    if plan:
        lines += [f"Plan: {plan['worlds']} worlds planned at {plan['created']}; seeds {plan['seed_policy']['world_seed']}, "
                  f"common random numbers {plan['seed_policy']['crn']} ({plan['seed_policy']['meaning']})."
                  + "".join(f" Extended from {e['from']} to {e['to']} worlds at {e['at']}." for e in plan["extensions"])
                  + (f" This report: {cfg['worlds']} of them." if cfg["worlds"] < max(
                      [plan["worlds"], *(e["to"] for e in plan["extensions"])]) else ""), ""]
    order = sorted(doc["agents"], key=lambda n: -(doc["agents"][n]["score"]["mean"] or 0))
    rows = []
    for name in order:
        a = doc["agents"][name]
        d = find_pair(doc, name, ref)
        rows.append([name, a["worlds"], _fmt(a["score"]["mean"]), _ci(a["score"]),
                     f"{_fmt(d['mean'], sign=True)} {_ci(d)}" if d else "(reference)",
                     f"{d['wins']}/{d['losses']}" if d else "-", a["unsafe_any"], a["illegal"], a["decisions"]])
    lines += md_table(["candidate", "worlds", "mean score", "95% CI", f"- {ref} (paired)", "wins/losses",
                       "unsafe_any", "illegal", "decisions"], rows)
    lines += ["", *md_table(
        ["paired difference", "mean", "95% CI (t)", "95% CI (bootstrap)", "wins", "losses", "MDE (80% power)"],
        [[f"{p['a']} - {p['b']}", _fmt(p["mean"], sign=True), _ci(p),
          f"[{p['bootstrap_ci95'][0]:+.4f}, {p['bootstrap_ci95'][1]:+.4f}]" if p["bootstrap_ci95"] else "-",
          p["wins"], p["losses"], _fmt(p["mde80"])] for p in doc["paired"]])]
    if doc.get("by_level"):
        lines += ["", "By the level the candidates held (a world counts for each level where they held a factory; "
                      "its score there is the mean of those factories):", "",
                  *md_table(["paired difference", "level", "worlds", "mean", "95% CI (t)", "wins", "losses"],
                            [[f"{p['a']} - {p['b']}", level, part["worlds"], _fmt(p["mean"], sign=True), _ci(p),
                              p["wins"], p["losses"]]
                             for p0 in doc["paired"] for level, part in doc["by_level"].items()
                             for p in part["paired"] if (p["a"], p["b"]) == (p0["a"], p0["b"])])]
    short = {"negotiations": "negs", "negs_succeeded": "negs ok", "contracts_signed": "signed", "contracts_executed": "executed",
             "shortfall_quantity": "shortfall q", "shortfall_penalty": "shortfall $", "storage_cost": "storage $",
             "bankruptcies": "bankrupt", "inventory_volatility": "stock sd", "cash_volatility": "cash sd",
             "trade_volume": "volume $"}
    lines += ["", "Per world (means over the complete worlds; summed over the candidate's factories):", "",
              *md_table(["candidate", *short.values()],
                        [[n, *(_fmt(doc["agents"][n]["metrics"][m], ".3f" if m.endswith("volatility") else ".1f")
                               for m in short)] for n in order])]
    p = doc["power"]
    lines += ["", f"Power: {p['worlds']} worlds resolve a paired difference against {ref} of "
                  f"{_fmt(p['resolution'])} (largest 95% half-width); the smallest true difference found 80% of "
                  f"the time is {_fmt(p['mde80'])}." if p["resolution"] is not None else f"Power: {p['note']}."]
    if doc.get("best_expert"):
        lines.append(f"Best expert of the run: {doc['best_expert']}.")
    if not doc.get("same_slots", True):
        lines.append("WARNING: the candidates did not hold the same factories in some world.")
    if w["dropped"]:
        lines += ["", "Dropped worlds (a candidate failed there; the world counts for no one):", ""]
        lines += [f"- world {d['world']}: " + "; ".join(f"{e['candidate']}: {e['error']}" for e in d["errors"])
                  for d in w["dropped"]]
    if doc.get("latest"):
        lines += ["", f"LATEST: {'moved to' if doc['latest']['move'] else 'stays at'} {doc['latest']['to']} "
                      f"({doc['latest']['reason']})."]
    return "\n".join(lines) + "\n"


def forest_plot(doc: dict[str, Any], path: Path) -> None:
    """The paired differences with their 95% intervals, one row each, and the line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in doc["paired"] if p["mean"] is not None]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(1, len(pairs)) + 1.6))
    for i, p in enumerate(pairs):
        color = {1: "tab:green", -1: "tab:red", 0: "tab:gray"}[excludes_zero(p)]
        if p["ci95"]:
            ax.plot(p["ci95"], [i, i], color=color, lw=2)
        ax.plot([p["mean"]], [i], "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(pairs)), [f"{p['a']} - {p['b']}" for p in pairs])
    ax.invert_yaxis()
    ax.set_xlabel(f"paired score difference, 95% CI ({doc['worlds']['complete']} worlds x {doc['config']['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "evaluation.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, out / "evaluation.json")
    (out / "evaluation.md").write_text(markdown(doc))
    forest_plot(doc, out / "forest.png")


# ------------------------------------------------------------------------------- the stage


def evaluate(config: EvalConfig, out: Path, bundles: Sequence[str | Path] = (), worlds_dir: Path | None = None,
             progress: Callable[[dict], None] | None = None, play: bool = True,
             extra_pairs: Sequence[tuple[str, str]] = (), bundles_root: Path | None = None,
             latest: tuple[str | None, Sequence[str]] | None = None, dask_address: str | None = None) -> dict[str, Any]:
    """Play the (world, candidate) units not played yet in ``worlds_dir`` (default ``out/worlds/<key>``) on
    ``config.workers`` processes or a Dask cluster (``play=False``: the caller mapped them already), then write
    the report.
    ``latest`` = (label of the current LATEST or None, labels of the new bundles): the report then says
    where LATEST should point (`decide_latest`; `apply_latest` moves it)."""
    from tasks import parallel

    config.validate()
    candidates = resolve_candidates(config, bundles, bundles_root)  # bad names and bundles fail before any world
    out = Path(out)
    worlds_dir = Path(worlds_dir) if worlds_dir is not None else units_dir(out / "worlds", config)
    every = units(config, candidates, worlds_dir)
    plan = record_plan(worlds_dir, config, candidates)
    missing = todo(every)
    if play and missing:
        parallel.run_jobs(play_unit, missing, config.workers, died, progress, dask_address, name=unit_name)
    doc = summarize(read_rows(every), candidates, config, extra_pairs)
    doc["plan"] = plan
    doc["worlds_dir"] = os.path.relpath(worlds_dir, out) if worlds_dir.is_absolute() == out.is_absolute() else str(worlds_dir)
    if latest is not None:
        doc["latest"] = decide_latest(doc, *latest)
        if doc["latest"]["move"]:
            doc["latest"]["path"] = doc["agents"][doc["latest"]["to"]]["bundle"]
    write_report(doc, out)
    return doc
