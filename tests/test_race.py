"""The racing search (tasks/race.py): stratified worlds, bad input, and a whole race on rows written ahead."""

import json

import numpy as np
import pytest

from hrlxf_agent.bundle import load_bundle
from hrlxf_agent.strategy import StrategyError
from hrlxf_rl.racing import GateConfig
from tasks.evaluate import units_dir, world_seed
from tasks.paired import slot_roles
from tasks.race import DEFAULT_KNOBS, INCUMBENT, Arena, RaceConfig, Worlds, _candidate, run_race

KNOB = "goal.first.sell.p.bias"  # range [-0.3, 0.3]: a first step of 1/6 of it is 0.1
SMALL = dict(steps=10, agents_per_world=(4, 6), opponents=("PenguinAgent", "AS0"), workers=1)


def test_stratified_worlds_give_the_candidate_the_role_and_skip_the_others(tmp_path):
    from hrlxf_agent.registry import resolve_all

    arena = Arena(RaceConfig(knobs=(KNOB,), **SMALL), tmp_path)
    types = list(resolve_all(["PenguinAgent", "AS0"]).values())
    pool = Worlds(arena.looks, types)
    taken = pool.take(6, "last")
    assert all("last" in slot_roles(world_seed(arena.looks, w), types, 10, (4, 6)) for w in taken)
    skipped = [w for w in range(taken[-1]) if w not in taken]
    assert skipped and all("last" not in slot_roles(world_seed(arena.looks, w), types, 10, (4, 6)) for w in skipped)
    assert pool.take(2, None) == [taken[-1] + 1, taken[-1] + 2]  # fresh worlds, never one taken before


def test_bad_knobs_and_blocks_fail_before_any_world():
    with pytest.raises(StrategyError, match="unknown parameter 'goal.first.buy.p.bias'"):
        RaceConfig(knobs=("goal.first.buy.p.bias",), **SMALL).validate()  # a first-level factory does not buy
    with pytest.raises(ValueError, match="has 7 knobs; the gate races 1..6"):
        RaceConfig(blocks=(DEFAULT_KNOBS[:7],), **SMALL).validate()
    with pytest.raises(ValueError, match=r"\['limit.margin'\] named twice"):
        RaceConfig(blocks=(("limit.margin", "limit.margin"),), **SMALL).validate()
    with pytest.raises(ValueError, match="gate.block must be 1..6"):
        RaceConfig(gate=GateConfig(block=8), **SMALL).validate()
    assert RaceConfig(knobs=("limit.margin", KNOB, "goal.last.buy.p.bias"), **SMALL).the_blocks() == \
        [(KNOB,), ("goal.last.buy.p.bias",), ("limit.margin",)]  # by role, the all-role knobs last
    every_role = tuple(k for k in DEFAULT_KNOBS if not k.startswith("goal."))
    assert [len(b) for b in RaceConfig(knobs=every_role, **SMALL).the_blocks()] == [3, 4]  # 7: two even blocks


def _write_row(path, world: int, label: str, score: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"world": world, "seed": 0, "agent": label, "error": None, "score": score}))


def test_a_whole_race_moves_the_knob_the_way_the_worlds_say(tmp_path):
    """Rows written ahead give the minus arm -0.05 and the plus arm +0.01 against the incumbent, world by world
    with a little noise; the proposal then beats the incumbent in the confirmation worlds. The race must drop
    minus, accept plus, move the knob to the top of the parabola through the three arms' mean differences
    (recomputed here from the files), confirm it and publish a rules bundle with it."""
    gate = GateConfig(block=1, batch=4, max_worlds=8, confirm_worlds=4)
    config = RaceConfig(knobs=(KNOB,), iterations=1, gate=gate, **SMALL)
    run = tmp_path / "run"
    arena = Arena(config, run)
    rng = np.random.default_rng(3)
    arms = {INCUMBENT: {}, "minus": {KNOB: -0.1}, "plus": {KNOB: 0.1}}
    looks = units_dir(run / "worlds", arena.looks)
    for w in range(60):  # more than the race can take: it picks the worlds where it holds a first-level factory
        base = 1.0 + rng.normal(0, 0.2)
        for label, offsets, d in ((INCUMBENT, {}, 0.0), (f"{KNOB}:minus", arms["minus"], -0.05 + rng.normal(0, 0.002)),
                                  (f"{KNOB}:plus", arms["plus"], 0.01 + rng.normal(0, 0.001))):
            key = _candidate(label, "rules", offsets).key()
            _write_row(looks / f"w{w:03d}" / f"{key}.json", w, label, base + d)
    # where the race must move: the top of the parabola through the three arms' mean differences, recomputed
    # from the files in the worlds it will take (the first 4 with a first-level candidate)
    from hrlxf_agent.registry import resolve_all

    worlds = Worlds(arena.looks, list(resolve_all(["PenguinAgent", "AS0"]).values())).take(4, "first")

    def mean_difference(label: str, offsets: dict) -> float:
        key, inc = _candidate(label, "rules", offsets).key(), _candidate(INCUMBENT, "rules", {}).key()
        return float(np.mean([json.loads((looks / f"w{w:03d}" / f"{key}.json").read_text())["score"]
                              - json.loads((looks / f"w{w:03d}" / f"{inc}.json").read_text())["score"] for w in worlds]))

    m_minus, m_plus = mean_difference(f"{KNOB}:minus", arms["minus"]), mean_difference(f"{KNOB}:plus", arms["plus"])
    h = 0.1
    a, b = (m_plus + m_minus) / (2 * h * h), (m_plus - m_minus) / (2 * h)
    top = round(-b / (2 * a), 3)
    assert 0.05 < top < h  # about 0.075: inside the trust region, past h/2
    confirms = units_dir(run / "worlds", arena.confirms)
    for w in range(60):  # the proposal beats the incumbent by 0.02 in every confirmation world
        base = 1.0 + rng.normal(0, 0.2)
        _write_row(confirms / f"w{w:03d}" / f"{_candidate(INCUMBENT, 'rules', {}).key()}.json", w, INCUMBENT, base)
        key = _candidate("proposed", "rules", {KNOB: top}).key()
        _write_row(confirms / f"w{w:03d}" / f"{key}.json", w, "proposed", base + 0.02 + rng.normal(0, 0.001))

    doc = run_race(config, run, out_root=tmp_path / "bundles")

    (entry,) = doc["iterations"]
    assert doc["units_played"] == 0  # every row was there: nothing was played, so the files decide
    assert len(entry["looks"]) == 1 and entry["looks"][0]["worlds"] == worlds
    assert entry["arms"][f"{KNOB}:minus"]["decision"] == "worse" and entry["arms"][f"{KNOB}:plus"]["decision"] == "better"

    assert entry["moves"][KNOB] == top
    assert entry["decision"] == "committed" and entry["confirmation"]["confirmed"]
    assert doc["strategy"] == entry["confirmation"]["offsets"] == {KNOB: entry["moves"][KNOB]}
    bundle = load_bundle(doc["bundle"])
    assert not bundle.has_networks and bundle.strategy.offsets == doc["strategy"]
    assert (run / "decisions.png").is_file() and json.loads((run / "decisions.json").read_text())["bundle"] == doc["bundle"]


def test_a_world_that_crashed_for_one_arm_is_dropped_from_every_arm_and_reported(tmp_path):
    config = RaceConfig(knobs=(KNOB,), iterations=1, gate=GateConfig(block=1, batch=3, max_worlds=3), **SMALL)
    arena = Arena(config, tmp_path)
    looks = units_dir(tmp_path / "worlds", arena.looks)
    cands = [_candidate(INCUMBENT, "rules", {}), _candidate("arm", "rules", {KNOB: 0.1})]
    for w in (4, 5, 6):
        for c in cands:
            _write_row(looks / f"w{w:03d}" / f"{c.key()}.json", w, c.label, 1.0 + w)
    crashed = json.loads((looks / "w005" / f"{cands[1].key()}.json").read_text())
    (looks / "w005" / f"{cands[1].key()}.json").write_text(json.dumps({**crashed, "error": "RuntimeError: boom"}))
    scores = arena.play("looks", [4, 5, 6], cands)
    assert arena.played == 0 and {w for s in scores.values() for w in s} == {4, 6}  # gone for the incumbent too
    (dropped,) = arena.dropped
    assert dropped["world"] == 5 and dropped["pool"] == "looks" and "boom" in dropped["errors"][0]["error"]
