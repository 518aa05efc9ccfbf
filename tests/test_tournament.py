"""The tournament mode: rotations averaged per configuration, and rotations that are real (not replays)."""

import pandas as pd
import pytest

from tasks.paired import slot_of
from tasks.tournament import TournamentConfig, configuration_of, rotation_check, run_tournament, summarize


def _scores(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"agent_type": f"scml.oneshot.sysagents.DefaultOneShotAdapter:tasks.tournament.{a}", "world": w,
                          "score": s, "agent_name": n} for a, w, s, n in rows])


def test_rotations_are_averaged_per_configuration_and_paired():
    rows = [
        ("LitaAgentHRLDirect", "c0_x.00", 1.0, "01Li@0"), ("PenguinAgent", "c0_x.00", 0.5, "04Pe@1"),
        ("LitaAgentHRLDirect", "c0_x.01", 1.2, "04Li@1"), ("PenguinAgent", "c0_x.01", 0.7, "01Pe@0"),
        ("LitaAgentHRLDirect", "c1_y.02", 0.8, "02Li@0"), ("PenguinAgent", "c1_y.02", 0.8, "03Pe@0"),
        ("LitaAgentHRLDirect", "c1_y.03", 0.6, "03Li@0"), ("PenguinAgent", "c1_y.03", 0.4, "02Pe@0"),
        ("LitaAgentHRLDirect", "c2_z.04", 0.9, "02Li@0"), ("PenguinAgent", "c2_z.04", 0.9, "03Pe@0"),
        ("LitaAgentHRLDirect", "c2_z.05", 0.9, "03Li@0"), ("PenguinAgent", "c2_z.05", 0.7, "02Pe@0"),
    ]
    doc = summarize(_scores(rows), [{"agent_type": "LitaAgentHRLDirect", "decisions": 5, "unsafe_any": 0, "illegal": 0,
                                     "off_grid": 1}], TournamentConfig())
    assert doc["configurations"] == 3 and doc["worlds"] == 6
    direct = doc["agents"]["LitaAgentHRLDirect"]
    assert direct["score"]["n"] == 3 and direct["score"]["mean"] == pytest.approx((1.1 + 0.7 + 0.9) / 3)
    assert direct["worlds"] == 6 and direct["decisions"] == 5 and direct["off_grid"] == 1
    diff = doc["paired"]["LitaAgentHRLDirect - PenguinAgent"]
    assert diff["mean"] == pytest.approx((0.5 + 0.1 + 0.1) / 3) and diff["n"] == 3  # per configuration
    assert doc["assignments"]["c0_x.00"] == {"LitaAgentHRLDirect": "01@0", "PenguinAgent": "04@1"}
    assert all(r["real_rotations"] for r in doc["rotations"].values())


def test_rotation_check_fails_on_replays():
    replays = {"c0.00": {"A": "01@0", "B": "02@0"}, "c0.01": {"A": "01@0", "B": "02@0"}}
    rotations = {"c0.00": {"A": "01@0", "B": "02@0"}, "c0.01": {"A": "02@0", "B": "01@0"}}
    assert rotation_check(replays) == {"c0": {"worlds": 2, "distinct_assignments": 1, "real_rotations": False}}
    assert rotation_check(rotations)["c0"]["real_rotations"]


def test_names():
    assert configuration_of("0001abc_LitaAgentHRLRe-P.09") == "0001abc_LitaAgentHRLRe-P"
    assert slot_of("03Pe@0") == "03@0" and slot_of("12LAHR@2") == "12@2"


@pytest.mark.slow
def test_real_tournament_rotates_the_competitors_over_the_slots(tmp_path):
    """scml's fair assigner with max_worlds_per_config set would replay one assignment in every world."""
    doc = run_tournament([], tmp_path, TournamentConfig(configs=1, steps=10, opponents=(), parallelism="serial"),
                         progress=False)
    (check,) = doc["rotations"].values()
    assert check["worlds"] == 3 and check["real_rotations"], doc["assignments"]
    held = {name: {w[name] for w in doc["assignments"].values()} for name in ("LitaAgentHRLRules", "PenguinAgent")}
    assert all(len(slots) == 3 for slots in held.values())  # each competitor held each competitor slot once
    assert "Factory held by each competitor" in (tmp_path / "tournament.md").read_text()
