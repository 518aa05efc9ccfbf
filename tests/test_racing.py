"""The racing gate (hrlxf_rl/racing.py) on hand-made numbers."""

import numpy as np
import pytest

from hrlxf_rl.racing import GateConfig, confirmed, paired_test, quadratic_step, race

GATE = GateConfig()  # batches of 12 worlds up to 48: 4 looks


def _player(means: dict[str, float], sd: float, rng: np.random.Generator):
    """Batches of 12 differences per arm drawn around ``means``; counts the worlds each arm played."""
    played = {a: 0 for a in means}

    def play(look: int, racing):
        out = {}
        for a in racing:
            out[a] = rng.normal(means[a], sd, GATE.batch)
            played[a] += GATE.batch
        return out

    return play, played


def test_a_clear_loser_stops_early_and_a_clear_winner_is_accepted():
    rng = np.random.default_rng(0)
    means = {"k.minus": -0.06, "k.plus": 0.05, "j.minus": 0.0, "j.plus": 0.0}
    play, played = _player(means, 0.02, rng)
    outcomes, history = race(list(means), play, GATE, GATE.accept_alpha(planned_arms=4))
    assert outcomes["k.minus"].decision == "worse" and outcomes["k.minus"].look == 0 and played["k.minus"] == 12
    assert outcomes["k.plus"].decision == "better" and played["k.plus"] <= 24
    assert {outcomes[a].decision for a in ("j.minus", "j.plus")} <= {"racing", "no evidence", "worse"}
    assert played["j.plus"] == 48 or outcomes["j.plus"].decision == "worse"
    assert len(history) == 4 and set(history[0]) == set(means)  # the log has every racing arm of every look


def test_noise_keeps_the_incumbent_and_the_multiplicity_correction_holds():
    """Blocks of 6 knobs (12 arms) whose arms are all as good as the incumbent, raced many times: the corrected
    gate accepts an arm in at most family_alpha of the runs; the same gate at 5% per test, far more often."""
    rng = np.random.default_rng(1)
    arms = {f"k{i}.{side}": 0.0 for i in range(6) for side in ("minus", "plus")}
    runs = 300
    corrected = uncorrected = 0
    for _ in range(runs):
        play, _ = _player(arms, 0.03, rng)
        outcomes, _ = race(list(arms), play, GATE, GATE.accept_alpha(planned_arms=len(arms)))
        corrected += any(o.decision == "better" for o in outcomes.values())
        play, _ = _player(arms, 0.03, rng)
        outcomes, _ = race(list(arms), play, GATE, 0.05)
        uncorrected += any(o.decision == "better" for o in outcomes.values())
    assert corrected / runs <= GATE.family_alpha
    assert uncorrected / runs > 0.3  # what the correction is for


def test_the_step_is_the_top_of_the_parabola_through_the_three_arms():
    h = 0.1
    # f(x) = -2 x^2 + 0.3 x: f(-h) = -0.05, f(h) = 0.01; its top at 0.075
    assert quadratic_step(h, minus=-0.05, plus=0.01) == pytest.approx(0.075)
    assert quadratic_step(h, minus=-0.05, plus=0.04) == pytest.approx(h)  # the top lies beyond: the trust region
    assert quadratic_step(h, minus=0.02, plus=0.01) == -h  # convex: the better end
    with pytest.raises(ValueError, match="step h must be > 0"):
        quadratic_step(0.0, 0.0, 0.0)


def test_tests_of_degenerate_samples_decide_by_sign_or_not_at_all():
    assert paired_test([0.0] * 12).p_better == 1.0 and paired_test([0.0] * 12).p_worse == 1.0  # the knob never acted
    assert paired_test([0.01] * 12).p_better < 1e-100  # equal up to rounding
    assert paired_test([]).n == 0
    ok, test = confirmed([0.02, 0.03, 0.01, 0.025, 0.015, 0.02], 0.05)
    assert ok and test.p_better < 0.001
    assert not confirmed([0.02, -0.03, 0.01, -0.025, 0.015, 0.0], 0.05)[0]


def test_bad_gate_sizes_are_named():
    for bad, words in ((GateConfig(block=7), "gate.block must be 1..6"), (GateConfig(batch=2), "gate.batch"),
                       (GateConfig(family_alpha=0), "gate.family_alpha")):
        with pytest.raises(ValueError, match=words):
            bad.validate()
