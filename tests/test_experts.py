"""scml-agents goes in with --no-deps: every 2024/2025 std expert must still import and play."""

import pytest

from conftest import agents_of, make_world
from hrlxf_agent.audit import audited
from hrlxf_agent.registry import known_agents, resolve


def _experts():
    from scml_agents import get_agents

    return [c for y in (2024, 2025) for c in get_agents(y, track="std", as_class=True)]


def test_every_std_expert_imports_and_resolves_by_name():
    experts = _experts()
    assert len(experts) == 15
    for cls in experts:
        assert resolve(cls.__name__) is cls
    assert {"PenguinAgent", "AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ"} <= set(known_agents())


@pytest.mark.parametrize("year", [2024, 2025])
def test_every_expert_plays_a_short_world_audited(year):
    from scml_agents import get_agents

    classes = [audited(c) for c in get_agents(year, track="std", as_class=True)]
    k = len(classes)
    # every expert once on each of the two levels
    world = make_world(classes * 2, steps=10, seed=year, n_processes=2, agent_processes=[0] * k + [1] * k)
    world.run()
    for cls in classes:
        placed = agents_of(world, cls)
        assert len(placed) == 2, cls.__name__
        for aid, a in placed.items():
            c = a.hook().counts
            assert c.decisions + c.ends > 0, (aid, c)


def test_the_shielded_champion_is_safe_and_legal_in_a_real_world():
    hs, penguin = audited(resolve("LitaAgentHS")), audited(resolve("PenguinAgent"))
    world = make_world([hs, penguin, resolve("AS0"), resolve("UltraSuperMiracleSoraFinalAgentZ")], steps=15, seed=21)
    world.run()
    shielded = list(agents_of(world, hs).values())
    assert shielded
    for a in shielded:
        c = a.hook().counts
        assert c.decisions > 0 and c.unsafe_any == 0 and c.illegal == 0, c
