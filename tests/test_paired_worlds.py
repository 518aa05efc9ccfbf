"""Paired worlds (tasks/paired.py): every candidate gets the same world, and common random numbers hold
across days (real scml worlds of 10 steps with scripted agents)."""

import pytest

from tasks.paired import _draw_config, attempt_seed, build_world, run_world, slot_marker, slot_of, world_config
from tests.scripted_agents import DrawRecorder, NoisyAgent, QuietAgent

SEED, STEPS, SIZES = 123, 10, (4, 6)


def _recorded(subject: type, crn: str) -> dict[str, list]:
    world = build_world(SEED, subject, {}, [DrawRecorder], STEPS, SIZES)
    run_world(world, SEED, crn)
    return {slot_of(aid): a._obj.draws for aid, a in world.agents.items() if isinstance(getattr(a, "_obj", None), DrawRecorder)}


def _fresh(subject: type, crn: str) -> dict[str, list]:
    """`_recorded` in a process of its own, as every paired unit is played (`tasks.parallel.in_fresh_process`):
    a world replayed in a process where other worlds ran before may not replay the same (docs/evaluation.md,
    "Reproducible worlds"), and the comparison is of candidates, not of processes."""
    from tasks.parallel import in_fresh_process

    return in_fresh_process(_recorded, subject, crn)


def test_daily_reseeding_keeps_an_opponents_draws_across_candidates_that_draw_differently():
    quiet, noisy = _fresh(QuietAgent, "daily"), _fresh(NoisyAgent, "daily")
    assert quiet and quiet.keys() == noisy.keys()
    assert all(len(d) == STEPS for d in quiet.values())
    assert quiet == noisy  # the noisy candidate's extra draws never reach the opponents' next day
    once_quiet, once_noisy = _fresh(QuietAgent, "once"), _fresh(NoisyAgent, "once")
    assert once_quiet != once_noisy  # seeded once, they do: what the daily reseeding is for
    first = next(iter(once_quiet))
    assert once_quiet[first][0] == once_noisy[first][0]  # day 0 is still paired, the decay starts after it


def _world_facts(world) -> dict:
    """What makes a world, by factory (slot ids, not the agent ids, which carry the type's letters)."""
    profiles = {slot_of(aid): repr(p) for aid, p in world.agent_profiles.items()}
    exogenous = sorted((step, tuple(slot_of(p) if "@" in str(p) else p for p in c.partners),
                        tuple(sorted((k, float(v)) for k, v in c.agreement.items())))
                       for step, cs in world.exogenous_contracts.items() for c in cs)
    return {"profiles": profiles, "exogenous": exogenous, "n_steps": world.n_steps,
            "catalog": [float(x) for x in world.catalog_prices]}


def test_every_candidate_gets_the_same_world_not_only_the_same_slot_ids():
    quiet = build_world(SEED, QuietAgent, {}, [DrawRecorder], STEPS, SIZES)
    noisy = build_world(SEED, NoisyAgent, {}, [DrawRecorder], STEPS, SIZES)
    a, b = _world_facts(quiet), _world_facts(noisy)
    assert a["profiles"] and a["exogenous"]
    assert a == b
    other = _world_facts(build_world(SEED + 1, QuietAgent, {}, [DrawRecorder], STEPS, SIZES))
    assert other != a  # the comparison sees a different world


def test_world_config_draws_again_when_no_slot_is_drawn():
    marker = slot_marker()
    opponents = [type(f"Opp{i}", (DrawRecorder,), {}) for i in range(7)]  # the marker is one of 8 types
    seed = next(s for s in range(200) if not _draw_config(attempt_seed(s, 0), marker, opponents, STEPS, SIZES)[1])
    config, slots = world_config(seed, opponents, STEPS, SIZES)
    assert slots
    attempt = next(k for k in range(1, 100) if _draw_config(attempt_seed(seed, k), marker, opponents, STEPS, SIZES)[1])
    expected, expected_slots = _draw_config(attempt_seed(seed, attempt), marker, opponents, STEPS, SIZES)
    assert slots == expected_slots
    assert [p["controller_type"].__name__ for p in config["agent_params"]] == \
        [p["controller_type"].__name__ for p in expected["agent_params"]]


def test_an_unknown_seed_policy_is_refused():
    world = build_world(SEED, QuietAgent, {}, [DrawRecorder], STEPS, SIZES)
    with pytest.raises(ValueError, match="crn must be one of daily, once"):
        run_world(world, SEED, "weekly")


def _played(records: bool) -> tuple[dict, list, int]:
    from scml.std.agents import GreedyStdAgent, SyncRandomStdAgent

    world = build_world(SEED, GreedyStdAgent, {}, [SyncRandomStdAgent, GreedyStdAgent], STEPS, SIZES)
    assert world.save_negotiations is False  # as every world of ours is built
    world.save_negotiations = records
    run_world(world, SEED)
    contracts = sorted((c["signed_at"], slot_of(c["seller"]), slot_of(c["buyer"]), c["quantity"], c["unit_price"],
                        c["delivery_time"]) for c in world.saved_contracts)
    return {slot_of(a): float(s) for a, s in world.scores().items()}, contracts, len(world.saved_negotiations)


def test_a_world_without_negotiation_records_plays_as_one_with_them():
    """`tasks.collect.new_world` turns off negmas' negotiation records (a third of a world's time): same play."""
    from tasks.parallel import in_fresh_process

    lean, recorded = in_fresh_process(_played, False), in_fresh_process(_played, True)  # as units are played
    assert lean[2] == 0 and recorded[2] > 0  # the records were off, then on
    assert lean[1] and lean[:2] == recorded[:2]  # the same scores and the same contracts
