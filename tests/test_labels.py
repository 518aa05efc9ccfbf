"""The v2 goal label on a hand-worked case (values derived by hand in the comments)."""

import numpy as np
import pytest

from conftest import snap
from tasks.labels import Trade, goal_label, soft_bucket


def test_soft_buckets():
    # buckets [0,1], [2,4], [5,7], [8,10]
    assert soft_bucket(1, 10) == [(0, 0.75), (1, 0.25)]
    assert soft_bucket(2, 10) == [(1, 0.75), (0, 0.25)]
    assert soft_bucket(3, 10) == [(1, 1.0)]
    assert soft_bucket(10, 10) == [(3, 1.0)]


def test_hand_worked_goal_label():
    # mid level, step 5 of 20, 10 lines, empty stock, no commitments, spot 10 in / 20 out; buckets [0,1] [2,4] [5,7] [8,10]
    # rule-based need: buy 20 + 10 in bucket 0 (production + stock fill today), 30 in each later bucket;
    # sell 0 + 5 in bucket 0 (nothing secured today, half of the planned input later), 15 in each later bucket
    s = snap()
    deals = [Trade(True, 2, 8, 9.0)]  # bought 8 at 9 for day +2: 6 to bucket 1, 2 to bucket 0
    offers = [Trade(False, 4, 6, 22.0, w=0.5)]  # a buyer offered 6 at 22 for day +4: bucket 1 (and 2, softly)
    label, mask = goal_label(s, deals, offers)
    g = label.reshape(4, 4)
    assert mask.tolist() == [1.0] * 16
    # Q_buy = signed + 0.6 x gap x urgency (a deal was made: no offer term)
    expected = np.array([2 + 0.6 * 28 * 0.637, 6 + 0.6 * 24 * 0.212, 0.6 * 30 * 0.106, 0.6 * 30 * 0.045]) / 10
    assert g[:, 0] == pytest.approx(expected, rel=1e-5)
    # P_buy: 0.65 VWAP 9 + 0.10 spot 10 re-weighted where deals exist, else 0.95 x spot
    assert g[:, 1] == pytest.approx(np.array([(0.65 * 9 + 1) / 0.75, (0.65 * 9 + 1) / 0.75, 9.5, 9.5]) / 10, rel=1e-5)
    # Q_sell: gap term + 0.15 x offered quantity (no sale was made) in the buckets the offer touches
    expected = np.array([0.6 * 5 * 0.637, 0.6 * 15 * 0.212 + 0.15 * 6, 0.6 * 15 * 0.106 + 0.15 * 6, 0.6 * 15 * 0.045]) / 10
    assert g[:, 2] == pytest.approx(expected, rel=1e-5)
    # P_sell: 0.25 offered 22 + 0.10 spot 20 re-weighted in buckets 1 and 2, else 1.05 x spot
    offered = (0.25 * 22 + 0.1 * 20) / 0.35
    assert g[:, 3] == pytest.approx(np.array([21, offered, offered, 21]) / 20, rel=1e-5)


def test_the_side_a_factory_cannot_negotiate_is_masked():
    first = snap(level=0, can_buy=False, buy_issues=None, buy_partners=())
    label, mask = goal_label(first, [], [])
    g, m = label.reshape(4, 4), mask.reshape(4, 4)
    assert not g[:, :2].any() and not m[:, :2].any() and m[:, 2:].all()
