"""The racing search over the strategy template: blocks of knobs raced in paired worlds stratified by role,
accepted moves confirmed in fresh worlds, a decision log, and a bundle only when something was committed.

The statistics are `hrlxf_rl.racing`'s; this module plays the worlds. Each block's arms are candidates of the
paired evaluation (`tasks.evaluate.units`: the agent with ``strategy=`` offsets, rows keyed by what plays), so a
rerun replays only the rows it lacks and decides the same way: the race is a function of its config and its
rows. Worlds are stratified: a block of one role's knobs plays only world configurations in which the
candidate holds a factory of that role (`tasks.paired.slot_roles`); elsewhere its knobs act on nothing and
each difference would be 0. Every look and every confirmation takes worlds never used before in the run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from hrlxf_agent.strategy import PARAMS, Strategy, check_offsets
from hrlxf_rl.racing import MAX_BLOCK, GateConfig, confirmed, quadratic_step, race
from tasks.collect import PROFILES as COLLECT_PROFILES

#: EvalConfig seeds of the race's worlds: RACE_SEED + 100 x seed for the looks, + 50 for the confirmations
RACE_SEED = 2_000
CONFIRM_OFFSET = 50
INCUMBENT = "incumbent"
HELD_OUT = ("KATSUDONAgent", "CautiousStdAgent")  # as `tasks.finetune.HELD_OUT`: the race never plays them
#: decimals of a committed offset (0.001 of a price is 0.1%; of a quantity, a thousandth of a line)
DECIMALS = 3

#: the default knobs: the levers of docs/online-learning.md first (the first level's sell price), then the
#: other roles' prices, the constants of the rules, the end game
DEFAULT_KNOBS = (
    "goal.first.sell.p.bias", "goal.first.sell.p.cover", "goal.first.sell.p.time", "goal.first.sell.q.bias",
    "goal.last.buy.p.bias", "goal.last.buy.q.bias", "goal.last.buy.p.time",
    "goal.middle.sell.p.bias", "goal.middle.buy.p.bias", "goal.middle.sell.q.bias", "goal.middle.buy.q.bias",
    "price.free_input_discount", "price.fill_premium", "limit.margin", "limit.concession", "opening.exponent",
    "end.sell_discount", "end.buy_cut",
)


@dataclass
class RaceConfig:
    """What is raced, in which worlds, with which gate."""

    start: str = "rules"  # "rules" (the rule layers, no bundle) or a bundle directory: its strategy is the start
    knobs: tuple[str, ...] = DEFAULT_KNOBS
    blocks: tuple[tuple[str, ...], ...] = ()  # explicit blocks; default: the knobs grouped by role, gate.block each
    iterations: int = 4  # blocks raced (round robin over the blocks)
    step: float = 1 / 6  # a knob's first arm distance, as a share of its offset range
    steps: int = 50
    agents_per_world: tuple[int, int] | None = COLLECT_PROFILES["default"].agents_per_world
    opponents: tuple[str, ...] = tuple(e for e in COLLECT_PROFILES["default"].experts if e not in HELD_OUT)
    gate: GateConfig = field(default_factory=GateConfig)
    seed: int = 0
    workers: int = 2
    world_timeout: float = 900.0

    def validate(self) -> None:
        self.gate.validate()
        check_offsets({k: 0.0 for k in self.knobs})  # an unknown knob is named
        for group in (self.knobs, *self.blocks):
            twice = sorted({k for k in group if list(group).count(k) > 1})
            if twice:
                raise ValueError(f"race: {twice} named twice in {list(group)}")
        for block in self.blocks:
            check_offsets({k: 0.0 for k in block})
            if not 1 <= len(block) <= self.gate.block:
                raise ValueError(f"race.blocks: {list(block)} has {len(block)} knobs; the gate races 1..{self.gate.block} "
                                 f"at once (at most {MAX_BLOCK})")
        if self.iterations < 1 or not 0 < self.step <= 0.5 or self.steps < 3 or self.workers < 1:
            raise ValueError(f"race: iterations >= 1, 0 < step <= 0.5, steps >= 3, workers >= 1; got {self.iterations}, "
                             f"{self.step}, {self.steps}, {self.workers}")
        if not self.opponents:
            raise ValueError("race.opponents: give at least one opponent")
        from hrlxf_agent.registry import resolve_all

        resolve_all(list(self.opponents))

    @classmethod
    def smoke(cls, **kwargs: Any) -> "RaceConfig":
        """One knob, one look of 3 short worlds, 3 to confirm: the pipeline's smoke run."""
        return cls(**{**dict(knobs=("goal.first.sell.p.bias",), iterations=1, steps=10, agents_per_world=(6, 8),
                             opponents=("AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ"),
                             gate=GateConfig(block=1, batch=3, max_worlds=3, confirm_worlds=3)), **kwargs})

    @classmethod
    def default(cls, **kwargs: Any) -> "RaceConfig":
        """The main job's budget (about 5 minutes of both cores): the first level's sell price, its three terms
        in one block, two looks of 6 worlds, 12 to confirm."""
        return cls(**{**dict(knobs=("goal.first.sell.p.bias", "goal.first.sell.p.cover", "goal.first.sell.p.time"),
                             iterations=1, gate=GateConfig(block=3, batch=6, max_worlds=12, confirm_worlds=12)),
                      **kwargs})

    @classmethod
    def long(cls, **kwargs: Any) -> "RaceConfig":
        """Real runs: every default knob, two rounds over their blocks, the full gate, in worlds of scml's own
        sizes (8-24 factories, as the league plays): 6-12 hours on 2 cores."""
        config = cls(**{"agents_per_world": None, **kwargs})
        return replace(config, iterations=kwargs.get("iterations", 2 * len(config.the_blocks())))

    def the_blocks(self) -> list[tuple[str, ...]]:
        """The blocks raced in turn: given, or the knobs grouped by the role they act on (all roles last)."""
        if self.blocks:
            return [tuple(b) for b in self.blocks]
        groups: dict[str | None, list[str]] = {}
        for k in self.knobs:
            groups.setdefault(knob_role(k), []).append(k)
        out = []
        for _, ks in sorted(groups.items(), key=lambda g: g[0] is None):
            n = math.ceil(len(ks) / self.gate.block)  # as few blocks as the gate allows, of even sizes
            out += [tuple(ks[i * len(ks) // n:(i + 1) * len(ks) // n]) for i in range(n)]
        return out

    def planned_arms(self) -> int:
        """Every arm the run may race: the acceptance tests share the family-wise error over these."""
        blocks = self.the_blocks()
        return sum(2 * len(blocks[i % len(blocks)]) for i in range(self.iterations))


def knob_role(name: str) -> str | None:
    """The role a knob acts on (``goal.<role>...``), None for one that acts on every role."""
    return name.split(".")[1] if name.startswith("goal.") else None


def block_role(block: Sequence[str]) -> str | None:
    """The role a block's worlds must give the candidate: its knobs' one role, or None (any world)."""
    roles = {knob_role(k) for k in block}
    return roles.pop() if len(roles) == 1 else None


class Worlds:
    """Fresh world indices of one seed space, taken in order, stratified by role (`slot_roles`)."""

    def __init__(self, config: Any, opponent_types: list[type]):
        self.config, self.types, self.next = config, opponent_types, 0
        self._roles: dict[int, set[str]] = {}

    def roles(self, w: int) -> set[str]:
        from tasks.evaluate import world_seed
        from tasks.paired import slot_roles

        if w not in self._roles:
            self._roles[w] = slot_roles(world_seed(self.config, w), self.types, self.config.steps,
                                        self.config.agents_per_world)
        return self._roles[w]

    def take(self, n: int, role: str | None) -> list[int]:
        """The next ``n`` worlds in which the candidate holds ``role`` (any world for None); the rest are skipped
        for good (a later block of another role does not go back to them)."""
        out = []
        while len(out) < n:
            w, self.next = self.next, self.next + 1
            if role is None or role in self.roles(w):
                out.append(w)
            if self.next > 100 * (n + len(out)) + 1000:
                raise RuntimeError(f"no world with a {role}-level candidate in {self.next} configurations")
        return out


def arm_offsets(incumbent: dict[str, float], knob: str, side: str, h: float) -> dict[str, float] | None:
    """The incumbent with ``knob`` moved by -h or +h; None when that leaves the knob's range."""
    p = PARAMS[knob]
    x = incumbent.get(knob, 0.0) + (h if side == "plus" else -h)
    if not p.low <= x <= p.high:
        return None
    return {**incumbent, knob: round(x, 10)}


def _candidate(label: str, start: str, offsets: dict[str, float]) -> Any:
    from tasks.candidates import HRL, Candidate, _with_content

    params: dict[str, Any] = {"strategy": dict(sorted(offsets.items()))}
    bundle = None
    if start != "rules":
        bundle = str(Path(start).resolve())
        params["bundle"] = bundle
    return _with_content(Candidate(label, label, HRL, params, bundle=bundle))


class Arena:
    """Plays candidates in given worlds and returns their scores world by world (complete cases)."""

    def __init__(self, config: RaceConfig, run: Path, dask_address: str | None = None,
                 progress: Callable[[dict], None] | None = None):
        from hrlxf_agent.registry import resolve_all
        from tasks.evaluate import EvalConfig

        self.config, self.run, self.dask, self.progress = config, Path(run), dask_address, progress
        types = resolve_all(list(config.opponents))
        base = dict(steps=config.steps, candidates=(), reference=INCUMBENT, opponents=tuple(config.opponents),
                    agents_per_world=config.agents_per_world, workers=config.workers,
                    world_timeout=config.world_timeout, keep_logs=False)
        self.looks = EvalConfig(worlds=1, seed=RACE_SEED + 100 * config.seed, **base)
        self.confirms = EvalConfig(worlds=1, seed=RACE_SEED + 100 * config.seed + CONFIRM_OFFSET, **base)
        self.world_pools = {"looks": Worlds(self.looks, [types[o] for o in config.opponents]),
                            "confirms": Worlds(self.confirms, [types[o] for o in config.opponents])}
        self.dropped: list[dict[str, Any]] = []
        self.played = 0

    def play(self, pool: str, worlds: list[int], candidates: list[Any]) -> dict[str, dict[int, float]]:
        """Scores by label and world; a world any candidate failed is dropped for all and recorded."""
        from tasks import parallel
        from tasks.evaluate import complete_cases, died, play_unit, read_rows, todo, unit_name, units, units_dir

        config = self.looks if pool == "looks" else self.confirms
        every = units(config, candidates, units_dir(self.run / "worlds", config), worlds)
        missing = todo(every)
        parallel.run_jobs(play_unit, missing, self.config.workers, died, self.progress, self.dask, name=unit_name)
        self.played += len(missing)
        labels = [c.label for c in candidates]
        by, complete, dropped = complete_cases(read_rows(every), labels)
        self.dropped += [{"pool": pool, **d} for d in dropped]
        return {c: {w: float(by[(w, c)]["score"]) for w in complete} for c in labels}


def _differences(scores: dict[str, dict[int, float]], arm: str) -> list[float]:
    base = scores[INCUMBENT]
    return [scores[arm][w] - base[w] for w in sorted(base)]


def race_block(arena: Arena, config: RaceConfig, iteration: int, block: tuple[str, ...], incumbent: dict[str, float],
               steps: dict[str, float]) -> dict[str, Any]:
    """Race one block against the incumbent, place the accepted steps, confirm them; the iteration's log entry
    (its ``incumbent`` is the strategy after it)."""
    role = block_role(block)
    arms: dict[str, dict[str, float]] = {}
    for knob in block:
        for side in ("minus", "plus"):
            offsets = arm_offsets(incumbent, knob, side, steps[knob])
            if offsets is not None:
                arms[f"{knob}:{side}"] = offsets
    entry: dict[str, Any] = {"iteration": iteration, "block": list(block), "role": role, "arms": {}, "looks": [],
                             "steps": {k: steps[k] for k in block}, "incumbent_before": dict(incumbent)}
    if not arms:
        entry.update(decision="no arm in range", incumbent=dict(incumbent))
        return entry
    cands = {label: _candidate(label, config.start, offsets) for label, offsets in arms.items()}
    cands[INCUMBENT] = _candidate(INCUMBENT, config.start, incumbent)
    worlds_of_look: list[list[int]] = []

    def play(look: int, racing: Sequence[str]) -> dict[str, list[float]]:
        worlds = arena.world_pools["looks"].take(config.gate.batch, role)
        worlds_of_look.append(worlds)
        scores = arena.play("looks", worlds, [cands[INCUMBENT], *(cands[a] for a in racing)])
        return {a: _differences(scores, a) for a in racing}

    outcomes, history = race(list(arms), play, config.gate, config.gate.accept_alpha(config.planned_arms()))
    entry["looks"] = [{"worlds": w, "arms": h} for w, h in zip(worlds_of_look, history)]
    entry["arms"] = {a: {"offset": arms[a][a.split(":")[0]], "decision": o.decision, "look": o.look, **o.test.as_dict()}
                     for a, o in outcomes.items()}
    moves: dict[str, float] = {}
    for knob in block:
        minus, plus = outcomes.get(f"{knob}:minus"), outcomes.get(f"{knob}:plus")
        better = [o for o in (minus, plus) if o is not None and o.decision == "better"]
        if better:
            h = steps[knob]
            if minus is not None and plus is not None:
                x = quadratic_step(h, minus.test.mean, plus.test.mean)
                side = 1.0 if (plus.decision == "better" and (minus.decision != "better" or plus.test.mean >= minus.test.mean)) else -1.0
                x = x if x * side > 0 else side * h
            else:
                x = h if plus is not None else -h
            moves[knob] = round(incumbent.get(knob, 0.0) + x, DECIMALS)
        elif all(o is not None and o.decision == "worse" for o in (minus, plus)):
            steps[knob] = steps[knob] / 2  # the incumbent is near its best at this scale
    entry["moves"] = moves
    if not moves:
        entry.update(decision="kept: no arm clearly better", incumbent=dict(incumbent))
        return entry
    proposed = check_offsets({**incumbent, **moves})
    new = _candidate("proposed", config.start, proposed)
    worlds = arena.world_pools["confirms"].take(config.gate.confirm_worlds, role)
    scores = arena.play("confirms", worlds, [cands[INCUMBENT], new])
    ok, test = confirmed([scores["proposed"][w] - scores[INCUMBENT][w] for w in sorted(scores[INCUMBENT])],
                         config.gate.confirm_alpha)
    entry["confirmation"] = {"worlds": worlds, "offsets": proposed, "confirmed": ok, **test.as_dict()}
    entry.update(decision="committed" if ok else "kept: not confirmed in fresh worlds",
                 incumbent=dict(proposed) if ok else dict(incumbent))
    return entry


PROFILES: dict[str, Callable[..., RaceConfig]] = {"smoke": RaceConfig.smoke, "default": RaceConfig.default,
                                                  "long": RaceConfig.long}


def race_stage(config: RaceConfig, run: Path, out_root: Path, dask_address: str | None = None) -> Path:
    """The pipeline's fine-tuning: the race from the rules bundle. Its bundle when a change was committed,
    else the rules bundle itself (named as the rules: never a new name for what plays as its start)."""
    from hrlxf_agent.bundle import rules_bundle

    start = rules_bundle(out_root)
    doc = run_race(replace(config, start=str(start)), run, out_root=out_root, dask_address=dask_address)
    return Path(doc["bundle"]) if doc["bundle"] else start


def start_offsets(start: str) -> dict[str, float]:
    if start == "rules":
        return {}
    from hrlxf_agent.bundle import load_bundle

    return dict(load_bundle(start).strategy.offsets)


def run_race(config: RaceConfig, run: Path, out_root: Path | None = None, dask_address: str | None = None,
             progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """The whole race: every iteration's block, logged to ``run/decisions.json`` (and a plot) as it ends; a
    bundle under ``out_root`` only when a change was committed (never one that plays as its start)."""
    config.validate()
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    arena = Arena(config, run, dask_address, progress)
    incumbent = start_offsets(config.start)
    steps = {k: config.step * (PARAMS[k].high - PARAMS[k].low) for k in config.knobs}
    for block in config.the_blocks():
        for k in block:
            steps.setdefault(k, config.step * (PARAMS[k].high - PARAMS[k].low))
    blocks = config.the_blocks()
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(config.iterations):
        entry = race_block(arena, config, i, blocks[i % len(blocks)], incumbent, steps)
        incumbent = entry["incumbent"]
        log.append(entry)
        _write_json(run / "decisions.json", summary(config, log, arena, time.perf_counter() - t0))
    doc = summary(config, log, arena, time.perf_counter() - t0)
    doc["bundle"] = None
    if out_root is not None and incumbent != start_offsets(config.start):
        doc["bundle"] = str(publish(config, incumbent, Path(out_root), doc))
    _write_json(run / "decisions.json", doc)
    plot_decisions(log, run / "decisions.png")
    return doc


def summary(config: RaceConfig, log: list[dict[str, Any]], arena: Arena, seconds: float) -> dict[str, Any]:
    planned = config.planned_arms()
    return {"config": json.loads(json.dumps(asdict(config), default=str)), "planned_arms": planned,
            "looks_per_block": config.gate.looks(), "accept_alpha": config.gate.accept_alpha(planned),
            "family_alpha": config.gate.family_alpha,
            "family_wise_error": f"P(accepting any arm no better than its incumbent) <= {config.gate.family_alpha} "
                                 f"(Bonferroni over {planned} arms x {config.gate.looks()} looks)",
            "start": start_offsets(config.start), "strategy": log[-1]["incumbent"] if log else start_offsets(config.start),
            "iterations": log, "units_played": arena.played, "dropped_worlds": arena.dropped,
            "seconds": round(seconds, 1)}


def publish(config: RaceConfig, offsets: dict[str, float], out_root: Path, doc: dict[str, Any]) -> Path:
    """A bundle of the start with ``offsets``: a rules bundle from the rules, else the start's networks with them."""
    import hashlib

    from hrlxf_agent.bundle import load_bundle, save_bundle, save_rules_bundle

    strategy = Strategy(offsets)
    digest = hashlib.sha256(json.dumps([config.start, strategy.offsets], sort_keys=True).encode()).hexdigest()[:12]
    metrics = {"trained": True, "method": "race", "strategy": strategy.offsets,
               "committed": [e["iteration"] for e in doc["iterations"] if e.get("decision") == "committed"]}
    if config.start != "rules":
        metrics["from"] = str(Path(config.start).resolve())  # the evaluation plays it beside its start
    if config.start == "rules":
        return save_rules_bundle(out_root / f"hrlxf-race-rules-{digest}", strategy, metrics=metrics,
                                 trained_on={"from": "rules", "race": metrics})
    b = load_bundle(config.start)
    if not b.has_networks:
        return save_rules_bundle(out_root / f"hrlxf-race-rules-{digest}", strategy, horizon=b.manifest.horizon,
                                 metrics=metrics, trained_on={"from": str(b.path.resolve()), "race": metrics})
    return save_bundle(out_root / f"hrlxf-race-{b.manifest.l3_mode}-{digest}", b.planner, b.executor, b.coordinator,
                       metrics=metrics, trained_on={"from": str(b.path.resolve()), "race": metrics}, strategy=strategy)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


def plot_decisions(log: list[dict[str, Any]], path: Path) -> None:
    """Each arm's mean difference against its incumbent with its 95% interval, by iteration, coloured by the
    gate's decision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(e["iteration"], arm, a) for e in log for arm, a in e.get("arms", {}).items()]
    if not rows:
        return
    colours = {"better": "tab:green", "worse": "tab:red", "no evidence": "tab:grey", "racing": "tab:grey"}
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(rows))))
    for y, (it, arm, a) in enumerate(rows):
        hw = a.get("half_width") or 0.0
        ax.errorbar(a["mean"], y, xerr=hw, fmt="o", color=colours.get(a["decision"], "black"))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"it{it} {arm} ({a['n']} w)" for it, arm, a in rows], fontsize=7)
    ax.set_xlabel("score difference against the incumbent (paired, 95% t interval)")
    ax.set_title("racing gate: green accepted, red dropped, grey no evidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

