"""Paired worlds: one generated std configuration, played once per candidate in the same slots.

World configuration ``seed`` is generated once (scml's own generator) with a
marker type in the candidates' slots; each candidate then plays that same
configuration (same factories, exogenous contracts, opponents and seeds) in
those slots. Scores are then compared world by world: the market of a world
moves every candidate together and cancels in the difference. One (world,
candidate) pair is one unit of work (`PairedJob`); the audit and the paired
evaluation both run on it. Each unit returns the candidate's score, its audit
counts (unsafe / illegal decisions) and the thesis' measurements (seed 000
section 6.2-6.3), read from the world's own records.

Common random numbers (DESIGN.md section 4): seeding once when the world is built pairs only the
start of a world; the first extra draw of one candidate shifts every later draw of every opponent.
So by default (``crn="daily"``) every generator the world and the agents draw from is reseeded
from (world seed, day) before each day: Python's ``random`` and numpy's global generator (scml
0.8.4, negmas 0.16 and the std experts of scml-agents 0.5.2 keep no generator of their own: their
code draws from these two) and torch's when it is loaded (our networks).
"""

from __future__ import annotations

import random
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.collect import new_world, time_limit


@dataclass(frozen=True)
class PairedJob:
    """One candidate in world configuration ``seed``: ``agent`` (a registry name) with ``params`` in the slots."""

    world: int
    seed: int
    candidate: str  # the label the results are reported under
    agent: str
    opponents: tuple[str, ...]
    steps: int
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 1800.0  # seconds one world may run before it counts as crashed
    agents_per_world: tuple[int, int] | None = None  # factories drawn per world (None: scml's own 8-24)
    log_dir: str | None = None  # if set, the candidate's factories are tracked there as a raw world (`tasks.collect`'s format)
    crn: str = "daily"  # when the generators are seeded: "daily" (from (seed, day) before each day) or "once"


#: how a paired world seeds its generators (`run_world`): the default first
CRN_POLICIES = ("daily", "once")


def check_run_size(worlds: int, steps: int, workers: int) -> None:
    """The numbers every run of paired worlds needs (the audit's and the evaluation's)."""
    if worlds < 1:
        raise ValueError(f"worlds must be >= 1, got {worlds}")
    if steps < 3:
        raise ValueError(f"steps must be >= 3, got {steps}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


class _Slot:
    """Marks the candidates' slots while a configuration is generated (never played)."""


def _draw_config(s: int, marker: type, opponent_types: list[type], steps: int,
                 agents_per_world: tuple[int, int] | None) -> tuple[dict[str, Any], list[int]]:
    """One configuration drawn from seed ``s`` and the indices of the marker's slots (maybe none)."""
    from scml.std import SCML2024StdWorld

    reseed(s)
    sizes: dict[str, Any] = {}
    if agents_per_world is not None:
        n_agents, n_processes = random.randint(*agents_per_world), random.choice((2, 3))
        sizes = {"n_processes": n_processes, "n_agents_per_process": [
            n_agents // n_processes + (1 if i < n_agents % n_processes else 0) for i in range(n_processes)]}
    config = SCML2024StdWorld.generate(agent_types=[marker, *opponent_types], n_steps=steps, **sizes)
    return config, [i for i, p in enumerate(config["agent_params"]) if p.get("controller_type") is marker]


def attempt_seed(seed: int, attempt: int) -> int:
    """The generator seed of ``world_config``'s ``attempt``-th draw for configuration ``seed``."""
    return seed + 100_003 * attempt


def slot_marker() -> type:
    from scml.std.agents import RandomStdAgent

    return type("CandidateSlot", (RandomStdAgent, _Slot), {})


def world_config(seed: int, opponent_types: list[type], steps: int,
                 agents_per_world: tuple[int, int] | None = None) -> tuple[dict[str, Any], list[int]]:
    """A std world configuration and the indices of its candidate slots (at least one).

    scml seats each factory's type at random, so a draw may give the candidates no slot: the next
    attempt's seed is drawn then (`attempt_seed`), the same sequence for every candidate.
    ``agents_per_world``: the number of factories, drawn in that range and spread over 2 or 3
    processes as `tasks.collect` does; None keeps scml's own sizes (2-3 processes of 4-8)."""
    marker = slot_marker()
    for attempt in range(100):
        config, slots = _draw_config(attempt_seed(seed, attempt), marker, opponent_types, steps, agents_per_world)
        if slots:
            return config, slots
    raise RuntimeError(f"no candidate slot in 100 configurations from seed {seed}")


def slot_roles(seed: int, opponent_types: list[type], steps: int,
               agents_per_world: tuple[int, int] | None = None) -> set[str]:
    """The roles (`level_name`) the candidates' factories hold in world configuration ``seed``: what a search
    stratified by role reads before it plays a world (the configuration is drawn, never played)."""
    config, slots = world_config(seed, opponent_types, steps, agents_per_world)
    n_processes = int(config["info"]["n_processes"])
    return {level_name(int(config["profiles"][i].input_product), n_processes) for i in slots}


def build_world(seed: int, subject: type, params: dict[str, Any], opponent_types: list[type], steps: int,
                agents_per_world: tuple[int, int] | None = None) -> Any:
    """The world of configuration ``seed`` with ``subject`` in the candidate slots, seeded to play the same way
    (built as `tasks.collect.new_world` builds every world of ours)."""
    config, slots = world_config(seed, opponent_types, steps, agents_per_world)
    for i in slots:
        config["agent_params"][i]["controller_type"] = subject
        if params:
            config["agent_params"][i]["controller_params"] = dict(params)
    reseed(seed)
    return new_world(config)


def day_seed(seed: int, day: int) -> int:
    """The seed of day ``day`` of world ``seed`` (independent streams, not ``seed + day``)."""
    return int(np.random.SeedSequence([int(seed), int(day)]).generate_state(1)[0])


def reseed(seed: int) -> None:
    """Seed every generator a world and its agents draw from (module docstring)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def run_world(world: Any, seed: int, crn: str = "daily") -> None:
    """``world.run()``, with every generator reseeded from (``seed``, day) before each day under ``crn="daily"``
    (negmas' own loop: one ``step()`` a day until the world ends or its time limit passes)."""
    if crn not in CRN_POLICIES:
        raise ValueError(f"crn must be one of {', '.join(CRN_POLICIES)}, got {crn!r}")
    if crn == "once":
        world.run()
        return
    for _ in range(world.n_steps):
        if world.time >= world.time_limit:
            break
        reseed(day_seed(seed, world.current_step))
        if not world.step():
            break


def level_name(level: int, n_processes: int) -> str:
    """first / middle / last: the role a factory's level gives it (the first buys exogenously, the last sells)."""
    return "first" if level == 0 else "last" if level == n_processes - 1 else "middle"


def slot_of(agent_id: str) -> str:
    """The factory behind an scml agent id ``<index><type letters>@<level>`` (``03Pe@0`` -> ``03@0``,
    ``04AS0@1`` -> ``04@1``): the same factory has another id when another type plays it. The leading
    digits only: a type's letters may hold digits too (AS0)."""
    head, _, level = str(agent_id).partition("@")
    digits = len(head) - len(head.lstrip("0123456789"))
    return head[:digits] + "@" + level


def _happened(contract: dict[str, Any], when: str) -> bool:
    """negmas records the step of an event, -1 (or None) when it did not happen."""
    step = contract.get(when)
    return step is not None and step >= 0


def world_metrics(world: Any, aids: list[str], negotiations: int) -> dict[str, float]:
    """The thesis' measurements of the factories ``aids`` in a finished world, summed over them.

    From scml's own records: ``saved_contracts`` (negotiated contracts have issues; exogenous ones
    none) and the daily ``stats`` (shortfall, storage cost, inventory, balance, bankruptcy).
    ``negs_succeeded`` counts agreements; ``contracts_signed`` / ``_executed`` every contract of the
    factories, exogenous ones included; bought, sold and the trade volume (quantity x unit price) are
    the negotiated ones.
    Volatilities are the std over days of the input stock (items) and of the balance as a share of
    the initial balance (so worlds of different sizes compare).
    """
    mine = set(aids)
    contracts = [c for c in world.saved_contracts if c["seller"] in mine or c["buyer"] in mine]
    negotiated = [c for c in contracts if c.get("issues")]  # exogenous contracts have no issues
    signed = [c for c in contracts if _happened(c, "signed_at")]
    executed = [c for c in signed if _happened(c, "executed_at")]
    stats = world.stats
    initial = world.initial_balances

    def daily(key: str, aid: str) -> np.ndarray:
        return np.asarray(stats[f"{key}_{aid}"], dtype=float)

    return {
        "negotiations": float(negotiations),
        "negs_succeeded": float(len(negotiated)),
        "contracts_signed": float(len(signed)),
        "contracts_executed": float(len(executed)),
        "contracts_nullified": float(sum(1 for c in signed if _happened(c, "nullified_at"))),
        "bought": float(sum(c["quantity"] for c in negotiated if c["buyer"] in mine)),
        "sold": float(sum(c["quantity"] for c in negotiated if c["seller"] in mine)),
        "trade_volume": float(sum(c["quantity"] * c["unit_price"] for c in negotiated)),
        "shortfall_quantity": float(sum(daily("shortfall_quantity", a).sum() for a in aids)),
        "shortfall_penalty": float(sum(daily("shortfall_penalty", a).sum() for a in aids)),
        "storage_cost": float(sum(daily("storage_cost", a).sum() for a in aids)),
        "bankruptcies": float(sum(bool(daily("bankrupt", a)[-1]) for a in aids)),
        "inventory_volatility": float(np.mean([daily("inventory_input", a).std() for a in aids])),
        "cash_volatility": float(np.mean([(daily("balance", a) / float(initial[a])).std() for a in aids])),
    }


def play_paired(job: PairedJob) -> dict[str, Any]:
    """Play one candidate in one paired world; never raises (a crash is returned as the row's error).

    Every decision of the candidate is audited (`hrlxf_agent.audit`), whoever wrote the agent.
    """
    from hrlxf_agent.audit import AuditCounts, audited
    from hrlxf_agent.registry import resolve_all
    from hrlxf_agent.tracker import tracked
    from tasks.collect import DONE, save_world

    start = time.perf_counter()
    row: dict[str, Any] = {"world": job.world, "seed": job.seed, "agent": job.candidate, "error": None}
    try:
        classes = resolve_all([job.agent, *job.opponents])
        base = classes[job.agent]
        log_dir = Path(job.log_dir) if job.log_dir else None
        if log_dir is not None and log_dir.exists():
            shutil.rmtree(log_dir)  # an earlier partial attempt
        subject = audited(tracked(base, log_dir / "events") if log_dir else base, keep_records=True)
        world = build_world(job.seed, subject, job.params, [classes[o] for o in job.opponents], job.steps,
                            job.agents_per_world)
        world.time_limit = job.timeout  # the unit's limit, not scml's 900 s: a long world must not stop half-played
        with time_limit(job.timeout):
            run_world(world, job.seed, job.crn)
        if world.current_step < world.n_steps:  # stopped early: its score is not a whole world's, for any candidate
            raise TimeoutError(f"the world stopped at step {world.current_step} of {world.n_steps} "
                               f"(time limit {job.timeout:.0f} s)")
        scores = world.scores()
        counts = AuditCounts()
        aids, negotiations, flagged = [], 0, []
        for aid, adapter in world.agents.items():
            obj = getattr(adapter, "_obj", None)
            if isinstance(obj, subject):
                hook = obj.hook()
                counts.add(hook.counts)
                negotiations += len(hook.threads)
                flagged += [{"agent_id": aid, **r} for r in hook.records if r["unsafe_buy"] or r["unsafe_sell"] or r["illegal"]]
                aids.append(aid)
        mine = [float(scores[a]) for a in aids]
        n_processes = int(world.n_processes)
        levels = [level_name(int(world.agents[a]._obj.awi.level), n_processes) for a in aids]
        row.update(scores=mine, score=float(np.mean(mine)), counts=asdict(counts), factories=aids, levels=levels,
                   n_processes=n_processes,
                   n_agents=len(world.agents) - 2, metrics=world_metrics(world, aids, negotiations), flagged=flagged)
        if log_dir is not None:
            for aid in aids:
                world.agents[aid]._obj.__dict__["_hook_Tracked"].close()
            meta = {"class": base.__name__, "module": f"{base.__module__}.{base.__name__}"}
            save_world(world, log_dir, {a: {**meta, "level": int(world.agents[a]._obj.awi.level)} for a in aids},
                       world_id=f"w{job.world:03d}", seed=job.seed, n_steps=job.steps, candidate=job.candidate,
                       agent=job.agent, params=job.params)
            (log_dir / DONE).write_text("")
    except Exception as e:  # one crashing world never stops the others (a timeout too)
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row
