"""StateBuilder on hand-built snapshots (values worked out by hand) and its invariants."""

import numpy as np
import pytest

from conftest import per_day, snap
from hrlxf_agent.state import STATIC_FEATURES, TEMPORAL_CHANNELS, FeatureSpec, StateBuilder, round_features, thread_features


def _example():
    return snap(
        inventory_input=4, supply_qty=per_day(d0=3, d2=12), supply_cost=per_day(d0=30, d2=120),
        sale_qty=per_day(d0=5, d1=8), sale_revenue=per_day(d0=100, d1=170), initial_balance=1000.0,
        partner_offers=(("c1", False, 4, 6, 22.0),),
    )


def test_shapes_and_names():
    m = StateBuilder().macro(_example())
    assert m.x_static.shape == (12,) == (len(STATIC_FEATURES),)
    assert m.x_temporal.shape == (11, 10) and len(TEMPORAL_CHANNELS) == 10
    assert m.x_role.tolist() == [1.0, 1.0]
    assert m.x_static.dtype == np.float32 and m.x_temporal.dtype == np.float32


def test_temporal_values_follow_the_084_physics():
    X = StateBuilder().temporal(_example())
    ch = {name: X[:, i] for i, name in enumerate(TEMPORAL_CHANNELS)}
    # day 0: stock 4 + 3 in, 5 due -> 5 made, nothing left over: the stock stays 4
    assert ch["prod_plan"][0] == pytest.approx(0.5) and ch["inventory_proj"][0] == pytest.approx(0.4)
    # day 1: only the stock (4) for 8 due -> 4 made
    assert ch["prod_plan"][1] == pytest.approx(0.4)
    # day 2: 12 in, nothing due -> all 12 stored
    assert ch["inventory_proj"][2] == pytest.approx(1.6)
    # cash: 1000 + 100 - 30 - 5 x 2 = 1060, then + 170 - 4 x 2 = 1222, then - 120
    assert ch["balance_proj"][:3] == pytest.approx([1.06, 1.222, 1.102])
    # day 1 sale price: 0.6 x deal VWAP 21.25 + 0.3 x offer 22 + 0.1 x spot 20 -> +6.75% over spot
    assert ch["price_diff_out"][1] == pytest.approx(0.0675)
    assert ch["buy_pressure"][1] == pytest.approx(1.0)  # 8 sold + 4 asked for, clipped
    assert ch["capacity_free"][1] == pytest.approx(0.2)
    assert not X[15:].any()  # past the last day (step 5 of 20)


def test_static_values():
    x = StateBuilder().static(_example())
    named = dict(zip(STATIC_FEATURES, x))
    assert named["t_norm"] == pytest.approx(0.25) and named["stock_in"] == pytest.approx(0.4)
    assert named["balance_rel"] == pytest.approx(1.0) and named["unit_margin"] == pytest.approx((20 - 10 - 2) / 20)


def test_pure_and_horizon_padded():
    s = _example()
    a, b = StateBuilder().macro(s), StateBuilder().macro(s)
    assert np.array_equal(a.x_temporal, b.x_temporal) and np.array_equal(a.x_static, b.x_static)
    short = StateBuilder(FeatureSpec(horizon=5)).temporal(s)
    assert short.shape == (6, 10) and np.array_equal(short, a.x_temporal[:6])


def test_roles_and_fingerprint():
    first = snap(level=0, can_buy=False, buy_issues=None, buy_partners=())
    assert StateBuilder().role_multi_hot(first).tolist() == [0.0, 1.0]
    assert StateBuilder.role_one_hot(True).tolist() == [1.0, 0.0]
    assert FeatureSpec().fingerprint == FeatureSpec().fingerprint != FeatureSpec(horizon=20).fingerprint


def test_thread_and_round_features():
    s = _example()
    r = round_features(s, False, (4, 6, 22.0), (3, 7, 21.0), "reject", 0.5, 40)
    assert r.shape == (12,) and r.tolist() == pytest.approx([0.4, 1 / 40, 1.1, 1, 0.3, 2 / 40, 1.05, 1, 0, 1, 0, 0.5])
    t = thread_features(s, np.full(41, 6.0), 500.0, 7.0, True, (5, 5, 10.0), 0.25, 40)
    assert t.shape == (10,) and t.tolist() == pytest.approx([1, 0, 0.25, 1, 0.5, 0, 1.0, 0.7, 0.6, 0.1])
