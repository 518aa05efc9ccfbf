"""The tournament mode: rotations averaged per configuration, and rotations that are real (not replays)."""

import pandas as pd
import pytest

from tasks.paired import slot_of
from tasks.tournament import TournamentConfig, configuration_of, rotation_check, run_tournament, summarize
from tasks.tournament import slot_of as tournament_slot


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
    assert tournament_slot("04AS0@1") == "04@1" and tournament_slot("112Pe@3") == "112@3"  # AS0's letters hold a digit


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


# ------------------------------------------------------------------------------------------ league mode

import math  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scml.std.agents import GreedyStdAgent  # noqa: E402

from hrlxf_agent.registry import UnknownAgentError  # noqa: E402
from tasks.tournament import (  # noqa: E402
    anac_arguments, bootstrap_total_scores, competitors, configs_needed, configs_to_resolve, league_total_scores,
    official_order, planned_worlds, ranks_of, shape_of, total_score_table,
)


class RaisesInTheFirstWorld(GreedyStdAgent):
    """Raises on day 2 of a tournament's first world (``<configuration>.00``) only: a world negmas must drop."""

    def before_step(self):
        if self.awi.current_step == 2 and str(self.awi._world.name).endswith(".00"):
            raise RuntimeError("boom in the first world")
        return super().before_step()


def _league_rows() -> pd.DataFrame:
    """Three configurations of two worlds; A has one outlier (5.0) that Tukey's fence (Q3 + 2 IQR) drops."""
    scores = {"A": [1.0, 1.1, 0.9, 1.0, 1.2, 5.0], "B": [1.05, 1.0, 1.0, 0.95, 1.1, 1.05], "C": [0.8, 0.9, 0.7, 0.85, 0.9, 0.8]}
    worlds = ["c0.00", "c0.01", "c1.00", "c1.01", "c2.00", "c2.01"]
    return pd.DataFrame([{"agent": a, "configuration": w.split(".")[0], "world": w, "score": s}
                         for a, values in scores.items() for w, s in zip(worlds, values)])


def test_total_score_is_negmas_truncated_mean_over_all_configurations_and_its_bootstrap_resamples_configurations():
    from negmas.helpers.numeric import truncated_mean
    from negmas.tournaments.tournaments import evaluate_tournament

    table = _league_rows()
    totals = league_total_scores(table)
    assert totals["A"] == pytest.approx((0.9 + 1.0 + 1.0 + 1.1 + 1.2) / 5)  # the outlier is cut, not averaged
    assert totals["A"] != pytest.approx(table[table.agent == "A"].score.mean())
    negmas_own = evaluate_tournament(None, scores=table.rename(columns={"agent": "agent_type"}), metric=truncated_mean)
    assert totals == pytest.approx(dict(zip(negmas_own.total_scores.agent_type, negmas_own.total_scores.score)))

    agents, boots = bootstrap_total_scores(table, resamples=200, seed=3)
    picks = np.random.default_rng(3).integers(0, 3, size=(200, 3))  # the draws the bootstrap makes
    for b in range(5):  # each resample is negmas' own total score of the configurations drawn (repeats kept)
        resampled = pd.concat([table[table.configuration == f"c{i}"] for i in picks[b]])
        assert dict(zip(agents, boots[b])) == pytest.approx(league_total_scores(resampled))

    total, draws = total_score_table(table, resamples=500, seed=0)
    assert [total[a]["rank"] for a in ("A", "B", "C")] == [1, 2, 3] and list(total) == ["A", "B", "C"]
    for a, t in total.items():
        assert t["ci95"][0] <= t["score"] <= t["ci95"][1] and t["worlds"] == 6 and not t["ours"]
    assert total["C"]["rank_ci"] == [3, 3]  # C is last in every resample
    assert total["A"]["rank_ci"][0] == 1 and len(draws["A"]) == 500
    assert ranks_of(np.array([0.5, 0.7, 0.7, np.nan])).tolist()[:3] == [3.0, 1.0, 1.0]


def test_total_scores_give_no_interval_on_too_few_configurations():
    table = _league_rows()
    total, draws = total_score_table(table[table.configuration != "c2"], resamples=200)
    assert total["A"]["ci95"] is None and total["A"]["rank_ci"] is None and total["A"]["rank"] == 1 and draws == {}


def test_official_order_comparison_on_a_hand_made_ranking():
    totals = {"AS0": 1.0, "PenguinAgent": 1.1, "XenoSotaAgent": 0.9, "LitaAgentHRLRules": 0.95}
    draws = {"AS0": np.full(100, 1.0), "PenguinAgent": np.linspace(0.5, 1.5, 100), "XenoSotaAgent": np.full(100, 0.4),
             "LitaAgentHRLRules": np.full(100, 0.95)}
    doc = official_order(totals, draws)
    assert doc["official_order"] == ["AS0", "PenguinAgent", "XenoSotaAgent"]  # UltraSuper... is absent
    assert doc["measured_order"] == ["PenguinAgent", "AS0", "XenoSotaAgent"]
    assert doc["kendall_tau"] == pytest.approx(1 / 3)  # 2 concordant pairs, 1 discordant
    first, second = doc["adjacent_pairs"]
    assert (first["upper"], first["lower"], first["measured_holds"]) == ("AS0", "PenguinAgent", False)
    assert first["bootstrap_share"] == pytest.approx(0.5) and first["verdict"] == "unresolved"
    assert second["bootstrap_share"] == 1.0 and second["verdict"] == "holds"
    assert official_order({"AS0": 1.0}, {})["kendall_tau"] is None


def test_configs_to_resolve_on_hand_made_numbers():
    assert configs_needed(10, 0.05, 0.025) == 40 and configs_needed(10, 0.05, -0.1) == 3
    assert configs_needed(10, 0.05, 0.0) is None and configs_needed(10, None, 0.1) is None
    totals = {"AS0": 1.00, "LitaAgentHRLRules": 0.98, "PenguinAgent": 0.90}
    draws = {"AS0": np.linspace(0.95, 1.05, 101), "LitaAgentHRLRules": np.full(101, 0.98),
             "PenguinAgent": np.full(101, 0.90)}
    doc = configs_to_resolve(totals, draws, n=8)
    top, bottom = doc["pairs"]
    assert (top["upper"], top["lower"]) == ("AS0", "LitaAgentHRLRules") and top["gap"] == pytest.approx(0.02)
    assert top["half_width"] == pytest.approx(0.0475, abs=1e-3) and not top["resolved"]
    assert top["n_needed"] == math.ceil(8 * (top["half_width"] / 0.02) ** 2)
    assert bottom["resolved"] and bottom["half_width"] == 0.0 and bottom["n_needed"] == 1
    assert doc["our_best"] == "LitaAgentHRLRules" and doc["our_best_pairs"] == [top, bottom]


def test_league_config_leaves_steps_sizes_and_time_limits_to_scml(tmp_path):
    """configs only (no world runs): scml draws n_steps in 50-200 per configuration, its own sizes and limits."""
    from scml.utils import anac2024_std

    config = TournamentConfig.league(competitors=("LitaAgentHRLRules", "PenguinAgent", "AS0"))
    config.validate()
    types, params = competitors([], config)
    shapes = []
    for seed in range(3):
        random.seed(seed)
        np.random.seed(seed)
        path = anac2024_std(**anac_arguments(config, types, params, "serial", tmp_path / f"t{seed}"), configs_only=True)
        worlds = planned_worlds(Path(path).parent)
        assert len(worlds) == 3  # one world per rotation
        shapes.append(shape_of(next(iter(worlds.values()))))
    assert all(50 <= s["steps"] <= 200 for s in shapes) and len({s["steps"] for s in shapes}) > 1
    assert all(2 <= s["processes"] <= 4 and min(s["factories_per_process"]) >= 4 for s in shapes)
    assert all((s["time_limit"], s["neg_time_limit"], s["neg_step_time_limit"]) == (900, 60, 20) for s in shapes)


def test_unknown_competitor_fails_before_any_world(tmp_path):
    config = TournamentConfig.league(configs=1, competitors=("PenguinAgent", "NoSuchAgent"))
    with pytest.raises(UnknownAgentError, match="competitors: unknown agent 'NoSuchAgent'"):
        run_tournament([], tmp_path, config, progress=False)
    assert not (tmp_path / "configurations").exists()
    with pytest.raises(ValueError, match="named more than once: AS0"):
        TournamentConfig.league(competitors=("AS0", "AS0")).validate()


@pytest.mark.slow
def test_real_league_configuration_end_to_end(tmp_path):
    """One short configuration (10 steps forced for speed) of four competitors, one of which breaks the first
    world: negmas drops that world, the others rotate and are ranked by the league's statistic."""
    config = TournamentConfig.league(configs=1, steps=10, parallelism="serial", bootstrap=200,
                                     competitors=("LitaAgentHRLRules", "PenguinAgent", "AS0",
                                                  "test_tournament:RaisesInTheFirstWorld"))
    doc = run_tournament([], tmp_path, config, progress=False)
    assert doc["mode"] == "league" and doc["schema_version"] == 3
    (check,) = doc["rotations"].values()
    assert check["worlds"] == 3 and check["real_rotations"], doc["assignments"]  # 4 planned, 1 dropped
    (dropped,) = doc["failed_worlds"]
    assert not dropped["scored"] and dropped["world"].endswith(".00") and "dropped" in dropped["reason"]
    assert dropped["configuration"] == "c000" and "last step recorded 2 of 10" in dropped["reason"]
    total = doc["total_scores"]
    assert set(total) == {"LitaAgentHRLRules", "PenguinAgent", "AS0", "RaisesInTheFirstWorld"}
    assert sorted(t["rank"] for t in total.values()) == [1, 2, 3, 4] or len({t["score"] for t in total.values()}) < 4
    assert all(t["worlds"] == 3 and math.isfinite(t["score"]) for t in total.values())
    assert total["LitaAgentHRLRules"]["ours"] and total["LitaAgentHRLRules"]["ci95"] is None  # one configuration
    assert doc["official_order"]["official_order"] == ["AS0", "PenguinAgent"]
    assert doc["configs_to_resolve"]["our_best"] == "LitaAgentHRLRules"
    assert doc["shapes"]["c000"]["steps"] == 10 and doc["failed_configurations"] == []
    assert doc["agents"]["LitaAgentHRLRules"]["decisions"] > 0  # audited inside the configuration's process
    held = {name: {w[name] for w in doc["assignments"].values()} for name in total}
    assert all(len(slots) == 3 for slots in held.values())  # each competitor held another factory in each world
    md = (tmp_path / "tournament.md").read_text()
    assert "Total scores as the league computes them" in md and "Failed worlds" in md
    assert (tmp_path / "scores.png").is_file()
    again = run_tournament([], tmp_path, config, progress=False)  # a rerun plays nothing: every configuration is kept
    assert again["total_scores"] == total


def test_a_configuration_that_raises_is_recorded_and_played_again_by_a_rerun(tmp_path):
    from tasks.tournament import ConfigurationJob, configuration_jobs, play_configuration_unit, read_configurations

    config = TournamentConfig(configs=2, steps=10, opponents=())
    job = ConfigurationJob(("/nonexistent/bundle",), config, 1, str(tmp_path))
    row = play_configuration_unit(job)  # raises inside (no such bundle): its row, not the run's end
    assert row["configuration"] == "c001" and "nonexistent" in row["error"]
    played, failed = read_configurations(tmp_path, config)
    assert played == [] and [f["configuration"] for f in failed] == ["c000", "c001"]
    assert "not played" in failed[0]["error"] and "nonexistent" in failed[1]["error"]
    assert [j.index for j in configuration_jobs([], tmp_path, config)] == [0, 1]  # neither counts as played


def test_the_configurations_directory_is_keyed_by_what_plays():
    from tasks.tournament import play_key

    def key(config: TournamentConfig) -> str:
        types, params = competitors([], config)
        return play_key(types, params, config)

    league = TournamentConfig.league(competitors=("PenguinAgent", "AS0"))
    assert key(league) == key(TournamentConfig.league(configs=50, competitors=("PenguinAgent", "AS0"), workers=2))
    assert len({key(league), key(TournamentConfig.league(competitors=("PenguinAgent", "XenoSotaAgent"))),
                key(TournamentConfig.league(competitors=("PenguinAgent", "AS0"), steps=50)),
                key(TournamentConfig.league(competitors=("PenguinAgent", "AS0"), seed=1))}) == 4
