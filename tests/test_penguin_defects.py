"""PenguinAgent's defects, shown in real worlds, and LitaAgentH's fixes."""

from conftest import agents_of, make_world
from hrlxf_agent.audit import audited
from hrlxf_agent.penguin import LitaAgentH
from hrlxf_agent.registry import resolve

PenguinAgent = resolve("PenguinAgent")


def _today_sell_accepts(world, cls):
    """ACCEPTs of offers to buy from us for delivery today, made in counter_all from day 2 on."""
    n = 0
    for agent in agents_of(world, cls).values():
        for r in agent.hook().records:
            if r["kind"] == "counter_all" and r["op"] == "accept" and r["is_buy"] is False:
                n += r["step"] >= 2 and r["outcome"][1] == r["step"]
    return n


def test_bool_as_step_stops_penguin_selling_today_and_litaagent_h_does_not():
    penguin, fixed = audited(PenguinAgent, keep_records=True), audited(LitaAgentH, keep_records=True)
    world = make_world([penguin, fixed, resolve("AS0"), resolve("XenoSotaAgent")], steps=20, seed=4)
    world.run()
    # PenguinAgent's test reads total_sales_at(True or False) = sales on day 1 or 0: from day 2 on that is 0
    for agent in agents_of(world, penguin).values():
        awi = agent.awi
        assert awi.current_step >= 2
        assert awi.total_sales_at(awi.total_sales_at(awi.current_step) <= awi.n_lines) == 0
    assert _today_sell_accepts(world, penguin) == 0
    assert _today_sell_accepts(world, fixed) > 0


def test_sellable_counts_exogenous_sales_and_output_stock_and_secured_input():
    world = make_world([LitaAgentH, resolve("AS0")], steps=12, seed=2)
    checked = 0

    for _ in range(6):
        world.step()
        for agent in agents_of(world, LitaAgentH).values():
            awi = agent.awi
            t = awi.current_step
            for day in (t, t + 1):
                secured = awi.current_inventory_input + awi.total_supplies_at(day)
                due = awi.total_sales_at(day) + awi.current_inventory_output
                if day == t:
                    secured += awi.current_exogenous_input_quantity
                    due += awi.current_exogenous_output_quantity
                planned = secured if (day == t and awi.is_first_level) else max(secured, 0.7 * awi.n_lines)
                assert agent.sellable_at(day) == int(max(0, min(awi.n_lines, planned) - due))
                checked += 1
    assert checked > 0


def test_third_future_sell_branch_checks_its_own_day():
    world = make_world([LitaAgentH, resolve("AS0")], steps=12, seed=2)
    for _ in range(3):
        world.step()
    agent = next(a for a in agents_of(world, LitaAgentH).values() if not a.awi.is_last_level)
    awi = agent.awi
    s = awi.current_step
    # fill day s+2 beyond the lines: PenguinAgent (checking s+2 for s+3) would offer nothing for s+3
    awi._future_sales.setdefault(s + 2, {})["X"] = awi.n_lines + 5
    agent.best_price = lambda partner: 20  # prices need a running negotiation; not under test here
    partners = [f"p{i}" for i in range(10)]
    offers = LitaAgentH.future_consume_offer(agent, partners)
    assert {o[1] for o in offers.values()} >= {s + 3}
    assert all(o[1] != s + 2 for o in offers.values())
    original = PenguinAgent.future_consume_offer(agent, partners)
    assert all(o[1] != s + 3 for o in original.values())
