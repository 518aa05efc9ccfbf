"""The evaluation's statistics, hand-checked: rotations averaged per configuration, paired differences, the best bundle."""

import math

import pandas as pd
import pytest

from tasks.evaluate import EvalConfig, best_bundle, configuration_of, interval, summarize


def _scores(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"agent_type": f"scml.oneshot.sysagents.DefaultOneShotAdapter:tasks.evaluate.{a}", "world": w,
                          "score": s} for a, w, s in rows])


def test_rotations_are_averaged_per_configuration_and_paired():
    rows = [
        ("LitaAgentHRLDirect", "c0_x.00", 1.0), ("PenguinAgent", "c0_x.00", 0.5),
        ("LitaAgentHRLDirect", "c0_x.01", 1.2), ("PenguinAgent", "c0_x.01", 0.7),
        ("LitaAgentHRLDirect", "c1_y.02", 0.8), ("PenguinAgent", "c1_y.02", 0.8),
        ("LitaAgentHRLDirect", "c1_y.03", 0.6), ("PenguinAgent", "c1_y.03", 0.4),
    ]
    doc = summarize(_scores(rows), [{"agent_type": "LitaAgentHRLDirect", "decisions": 5, "unsafe_any": 0, "illegal": 0,
                                     "off_grid": 1}], EvalConfig())
    assert doc["configurations"] == 2 and doc["worlds"] == 4
    direct = doc["agents"]["LitaAgentHRLDirect"]
    assert direct["score"]["n"] == 2 and direct["score"]["mean"] == pytest.approx(0.9)  # configs 1.1 and 0.7
    assert direct["worlds"] == 4 and direct["decisions"] == 5 and direct["off_grid"] == 1
    diff = doc["paired"]["LitaAgentHRLDirect - PenguinAgent"]
    assert diff["mean"] == pytest.approx(0.3) and diff["n"] == 2  # per configuration: 0.5 and 0.1
    assert diff["half_width"] == pytest.approx(12.706 * math.sqrt(0.08) / math.sqrt(2), rel=1e-3)  # t(0.975, 1)


def test_configuration_is_the_world_name_before_its_rotation():
    assert configuration_of("0001abc_LitaAgentHRLRe-P.09") == "0001abc_LitaAgentHRLRe-P"


def test_best_bundle_is_the_highest_scoring_mode():
    doc = {"agents": {"LitaAgentHRLResidual": {"score": {"mean": 1.1}}, "LitaAgentHRLDirect": {"score": {"mean": 1.3}}},
           "bundles": {"LitaAgentHRLResidual": "/b/res", "LitaAgentHRLDirect": "/b/dir"}}
    assert best_bundle(doc) == "/b/dir"
    assert best_bundle({"agents": {}, "bundles": {}}) is None


def test_one_sample_has_no_interval():
    assert math.isnan(interval([1.0])["half_width"]) and interval([1.0])["mean"] == 1.0
