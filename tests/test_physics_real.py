"""physics.py against the real simulator: every agent-day of real worlds settles as it says."""

from collections import defaultdict

import pytest

from conftest import make_world
from hrlxf_agent import physics
from hrlxf_agent.registry import resolve


def _daily_flows(world):
    """(agent, day) -> (input delivered, output due), from every contract the world kept."""
    inflow, outflow = defaultdict(int), defaultdict(int)
    seen = set()
    contracts = [(c["id"], c["buyer"], c["seller"], c["delivery_time"], c["quantity"], c["nullified_at"]) for c in world.saved_contracts]
    for day, exo in world.exogenous_contracts.items():
        for c in exo:
            contracts.append((c.id, c.annotation["buyer"], c.annotation["seller"], c.agreement["time"], c.agreement["quantity"], c.nullified_at))
    for cid, buyer, seller, t, q, nullified in contracts:
        if cid in seen or nullified >= 0:
            continue
        seen.add(cid)
        inflow[(buyer, t)] += q
        outflow[(seller, t)] += q
    return inflow, outflow


@pytest.mark.parametrize("seed", [1, 7])
def test_every_agent_day_settles_as_physics_says(seed):
    types = [resolve(n) for n in ("PenguinAgent", "AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ")]
    steps = 15
    world = make_world(types, steps=steps, seed=seed)
    world.run()
    inflow, outflow = _daily_flows(world)
    checked = 0
    for aid in world.non_system_agent_ids:
        n = world.agent_profiles[aid].n_lines
        stock = 0.0
        for d in range(steps):
            if world.stats[f"bankrupt_{aid}"][d]:
                break
            cin, cout = inflow[(aid, d)], outflow[(aid, d)]
            made = physics.produced(stock + cin, n, cout)
            assert world.stats[f"shortfall_quantity_{aid}"][d] == cout - made, (aid, d)
            assert world.stats[f"productivity_{aid}"][d] * n == pytest.approx(made), (aid, d)
            stock = physics.next_input_stock(stock, cin, made)
            assert world.stats[f"inventory_input_{aid}"][d] == stock, (aid, d)
            assert world.stats[f"inventory_output_{aid}"][d] == 0, (aid, d)
            checked += 1
    assert checked > 100


def test_stock_floor_is_a_floor_and_never_drains():
    floor = physics.input_stock_floor(4, [12, 0, 3, 15], 10)
    assert list(floor) == [4, 6, 6, 6]
