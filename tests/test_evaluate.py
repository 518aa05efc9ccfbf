"""The paired evaluation: its statistics on hand-made numbers, the LATEST rule, bad input, and short real runs."""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import schemas
from flows.cli import main
from tasks.candidates import Candidate, CandidateError, parse_candidate
from tasks.evaluate import (EvalConfig, decide_latest, evaluate, markdown, parse_opponents, parse_sizes, parse_steps,
                            read_rows, summarize, units, units_dir)
from tasks.convert import world_tables
from tasks.stats import MIN_SAMPLES, mean_interval, paired_difference

# ---------------------------------------------------------------------------------------- statistics


def test_paired_difference_on_hand_made_numbers():
    a, b = [1.0, 1.2, 0.9, 1.1], [0.9, 1.0, 0.95, 1.0]
    d = paired_difference(a, b)
    diffs = np.array([0.1, 0.2, -0.05, 0.1])
    sd = diffs.std(ddof=1)
    assert d["mean"] == pytest.approx(0.0875) and d["sd"] == pytest.approx(sd)
    assert d["half_width"] == pytest.approx(3.1824 * sd / 2, rel=1e-4)  # t(0.975, 3) = 3.1824, sqrt(4) = 2
    assert d["ci95"] == pytest.approx([0.0875 - d["half_width"], 0.0875 + d["half_width"]])
    assert (d["wins"], d["losses"], d["ties"]) == (3, 1, 0)
    lo, hi = d["bootstrap_ci95"]
    assert diffs.min() <= lo < d["mean"] < hi <= diffs.max()
    assert d["mde80"] == pytest.approx((3.1824 + 0.9785) * sd / 2, rel=1e-3)  # t(0.80, 3) = 0.9785


def test_pairing_cancels_the_world_effect():
    rng = np.random.default_rng(0)
    market = rng.normal(1.0, 0.3, 40)  # what moves every agent in a world
    a, b = market + 0.02 + rng.normal(0, 0.01, 40), market + rng.normal(0, 0.01, 40)
    assert paired_difference(a, b)["half_width"] < 0.01 and mean_interval(a)["half_width"] > 0.05


def test_too_few_values_give_no_interval_and_say_so():
    for n in range(MIN_SAMPLES):
        d = paired_difference([1.0] * n, [0.5] * n)
        assert d["half_width"] is None and d["ci95"] is None and "too few worlds" in d["note"]
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------------------- the summary


def _row(world, cand, score, error=None):
    counts = {k: 0 for k in ("decisions", "accepts", "offers", "unsafe_buy", "unsafe_sell", "unsafe_any", "illegal",
                             "off_grid")}
    counts["decisions"] = 10
    metrics = {m: 1.0 for m in ("negotiations", "negs_succeeded", "contracts_signed", "contracts_executed",
                                "contracts_nullified", "bought", "sold", "trade_volume", "shortfall_quantity",
                                "shortfall_penalty", "storage_cost", "bankruptcies", "inventory_volatility",
                                "cash_volatility")}
    row = {"world": world, "seed": 100 + world, "agent": cand, "error": error, "seconds": 1.0}
    if error is None:
        row.update(score=score, scores=[score], counts=counts, metrics=metrics, factories=[f"0{world}X@1"])
    return row


CANDS = [Candidate("mine", "mine", "LitaAgentHRL"), Candidate("PenguinAgent", "PenguinAgent", "PenguinAgent", expert=True),
         Candidate("AS0", "AS0", "AS0", expert=True)]


def test_a_world_that_crashed_for_one_candidate_counts_for_no_one():
    scores = {"mine": [1.1, 1.0, 0.7, 1.3, 0.9], "PenguinAgent": [1.0, 0.9, 0.6, 1.2, 0.8], "AS0": [1.2, 1.1, 0.5, 1.5, 1.0]}
    rows = [_row(w, c, s[w]) for c, s in scores.items() for w in range(5) if not (c == "AS0" and w == 2)]
    rows.append(_row(2, "AS0", None, error="RuntimeError: boom"))
    doc = summarize(rows, CANDS, EvalConfig(worlds=5))
    jsonschema.validate(doc, schemas.load("evaluation"))
    assert doc["worlds"] == {"planned": 5, "complete": 4, "dropped": [{"world": 2, "errors": [
        {"candidate": "AS0", "error": "RuntimeError: boom"}]}]}
    assert doc["agents"]["mine"]["worlds"] == 4 and doc["agents"]["mine"]["decisions"] == 40
    assert doc["agents"]["mine"]["score"]["mean"] == pytest.approx(np.mean([1.1, 1.0, 1.3, 0.9]))
    vs_ref = next(p for p in doc["paired"] if p["a"] == "mine" and p["b"] == "PenguinAgent")
    assert vs_ref["mean"] == pytest.approx(0.1) and vs_ref["n"] == 4 and vs_ref["wins"] == 4
    assert vs_ref["half_width"] == pytest.approx(0.0, abs=1e-12)  # the same +0.1 in every world
    assert doc["best_expert"] == "AS0"
    vs_best = next(p for p in doc["paired"] if p["a"] == "mine" and p["b"] == "AS0")
    assert vs_best["mean"] == pytest.approx(np.mean([-0.1, -0.1, -0.2, -0.1]))
    assert doc["same_slots"] and doc["power"]["resolution"] is not None


def test_every_paired_table_is_split_by_the_level_the_candidates_held():
    # world w: the candidates hold a first-level factory in every world, a last-level one in worlds 0-2
    rows = []
    for w in range(5):
        for cand, first, last in (("mine", 1.0 + 0.1 * w + 0.05, 0.9), ("PenguinAgent", 1.0 + 0.1 * w, 1.0)):
            levels, scores = ["first"] + (["last"] if w < 3 else []), [first] + ([last] if w < 3 else [])
            row = _row(w, cand, sum(scores) / len(scores))
            row.update(scores=scores, levels=levels, factories=[f"0{i}X@{i}" for i in range(len(scores))])
            rows.append(row)
    doc = summarize(rows, CANDS[:2], EvalConfig(worlds=5))
    jsonschema.validate(doc, schemas.load("evaluation"))
    first = doc["by_level"]["first"]["paired"][0]
    last = doc["by_level"]["last"]["paired"][0]
    assert (first["a"], first["b"], first["n"]) == ("mine", "PenguinAgent", 5) and first["mean"] == pytest.approx(0.05)
    assert last["n"] == 3 and last["mean"] == pytest.approx(-0.1) and last["losses"] == 3
    assert doc["by_level"]["middle"]["worlds"] == 0 and doc["by_level"]["middle"]["paired"][0]["n"] == 0
    pooled = doc["paired"][0]["mean"]
    assert pooled == pytest.approx(np.mean([(0.05 - 0.1) / 2] * 3 + [0.05] * 2))  # the levels mix in the pooled figure
    assert "| mine - PenguinAgent | last | 3 | -0.1000 |" in markdown(doc)


def test_latest_does_not_move_on_a_tie():
    scores = {"new": [1.0, 1.2, 0.8, 1.1, 0.9], "old": [1.01, 1.18, 0.82, 1.09, 0.91], "PenguinAgent": [1.0] * 5}
    cands = [Candidate(n, n, "LitaAgentHRL") for n in ("new", "old")] + [CANDS[1]]
    doc = summarize([_row(w, c, s[w]) for c, s in scores.items() for w in range(5)], cands, EvalConfig(worlds=5),
                    extra_pairs=[("new", "old")])
    d = decide_latest(doc, "old", ["new"])
    assert not d["move"] and d["to"] == "old" and "holds 0" in d["reason"]
    assert decide_latest(doc, None, ["new"]) == {"move": True, "to": "new",
                                                 "reason": "there was no LATEST and no rules bundle to beat"}


def test_latest_moves_on_a_clear_win_and_not_on_too_few_worlds():
    scores = {"new": [1.1, 1.3, 0.9, 1.2], "old": [1.0, 1.21, 0.79, 1.1], "PenguinAgent": [1.0] * 4}
    cands = [Candidate(n, n, "LitaAgentHRL") for n in ("new", "old")] + [CANDS[1]]
    rows = [_row(w, c, s[w]) for c, s in scores.items() for w in range(4)]
    doc = summarize(rows, cands, EvalConfig(worlds=4), extra_pairs=[("new", "old")])
    d = decide_latest(doc, "old", ["new"])
    assert d["move"] and d["to"] == "new" and "excludes 0" in d["reason"]
    flipped = summarize(rows, cands, EvalConfig(worlds=4), extra_pairs=[("old", "new")])  # only old - new taken
    assert decide_latest(flipped, "old", ["new"]) == d
    few = summarize([r for r in rows if r["world"] < 2], cands, EvalConfig(worlds=2), extra_pairs=[("new", "old")])
    d = decide_latest(few, "old", ["new"])
    assert not d["move"] and "too few worlds" in d["reason"]


def _latest_doc(scores: dict[str, list[float]]) -> dict:
    names = [n for n in scores if n != "PenguinAgent"]
    cands = [Candidate(n, n, "LitaAgentHRL") for n in names] + [CANDS[1]]
    n = len(next(iter(scores.values())))
    pairs = [(a, b) for a in names for b in names if a != b]
    return summarize([_row(w, c, s[w]) for c, s in scores.items() for w in range(n)], cands, EvalConfig(worlds=n),
                     extra_pairs=pairs)


def test_every_latest_path_against_the_rules():
    """LATEST takes a new bundle only if it beats the rules and the current LATEST with intervals excluding 0;
    the best of several new bundles is the one tried; with no LATEST (or one that does not load: the flow
    passes None) and no such bundle, LATEST is the rules."""
    base = [1.0, 1.2, 0.8, 1.1, 0.9, 1.05]
    up = lambda d, noise=0.0: [x + d + noise * (-1) ** i for i, x in enumerate(base)]  # noqa: E731
    doc = _latest_doc({"hrlxf-rules": base, "old": up(0.01, 0.004), "a": up(0.05, 0.002), "b": up(0.03, 0.002),
                       "PenguinAgent": [1.0] * 6})
    d = decide_latest(doc, "old", ["a", "b"], "hrlxf-rules")
    assert d["move"] and d["to"] == "a" and "a - hrlxf-rules" in d["reason"] and "a - old" in d["reason"]  # displaced
    tie = _latest_doc({"hrlxf-rules": base, "old": up(0.04, 0.002), "a": up(0.04, 0.003), "PenguinAgent": [1.0] * 6})
    d = decide_latest(tie, "old", ["a"], "hrlxf-rules")
    assert not d["move"] and d["to"] == "old" and "a - old" in d["reason"] and "holds 0" in d["reason"]  # a tie
    loss = _latest_doc({"hrlxf-rules": base, "old": up(0.04, 0.002), "a": up(-0.02, 0.002), "PenguinAgent": [1.0] * 6})
    d = decide_latest(loss, "old", ["a"], "hrlxf-rules")
    assert not d["move"] and d["to"] == "old" and "below 0" in d["reason"]  # a loss (against the rules already)
    d = decide_latest(loss, None, ["a"], "hrlxf-rules")  # no LATEST, or one that does not load
    assert d["move"] and d["to"] == "hrlxf-rules" and "LATEST is the rules" in d["reason"]
    d = decide_latest(doc, None, ["a", "b"], "hrlxf-rules")  # no LATEST: the best new one, on evidence
    assert d["move"] and d["to"] == "a"
    same = _latest_doc({"hrlxf-rules": base, "PenguinAgent": [1.0] * 6})  # the race committed nothing
    d = decide_latest(same, None, ["hrlxf-rules"], "hrlxf-rules")
    assert d["move"] and d["to"] == "hrlxf-rules"


# ---------------------------------------------------------------------------------------- bad input


def test_unknown_candidate_or_bad_bundle_fails_before_any_world(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))
    out = tmp_path / "ev"
    assert main(["evaluate", "--candidates", "rules,NoSuchAgent", "--out", str(out)]) == 2
    assert "unknown agent 'NoSuchAgent'" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "--bundle", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere/manifest.json: missing" in capsys.readouterr().err and not out.exists()
    assert parse_candidate("untrained", tmp_path).label == "untrained-residual"  # written on first use
    with pytest.raises(CandidateError, match="no executor_bc weights"):
        parse_candidate(f"bc:{tmp_path / 'untrained-residual'}", tmp_path)
    c = parse_candidate(f"nol2+nol4:{tmp_path / 'untrained-residual'}", tmp_path)
    assert c.label == "untrained-residual/nol2+nol4" and c.params["ablate"] == ["l2", "l4"] and not c.expert


def test_unknown_pool_size_preset_or_length_fails_before_any_world(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))
    out = tmp_path / "ev"
    for flag, value, message in (("--opponents", "nosuchpool", "unknown agent 'nosuchpool'"),
                                 ("--sizes", "huge", "unknown size preset 'huge'"),
                                 ("--sizes", "9-3", "'9-3' is not a range"),
                                 ("--steps", "50,abc", "'abc' is not a number of steps"),
                                 ("--steps", "2", "'2' is not a number of steps")):
        assert main(["evaluate", "--candidates", "rules", flag, value, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert parse_sizes("official") is None and parse_sizes("8-12") == (8, 12)
    assert parse_steps("50,100,200") == (50, 100, 200)
    held = parse_opponents("heldout")
    assert held and not set(held) & set(parse_opponents("collection"))  # never met by the collection or the search
    from tasks.finetune import LeagueConfig

    assert not set(held) & set(LeagueConfig().experts)


def test_candidates_that_play_the_same_share_one_row_and_others_do_not(tmp_path):
    import shutil

    start = parse_candidate("untrained:rules", tmp_path)
    shutil.copytree(start.bundle, tmp_path / "copy-of-the-start")
    (tmp_path / "copy-of-the-start" / "manifest.json").write_text(  # notes differ, what plays does not
        (tmp_path / "copy-of-the-start" / "manifest.json").read_text().replace('"trained": false', '"trained": false, "note": 1'))
    copy, rules = parse_candidate(str(tmp_path / "copy-of-the-start")), parse_candidate("rules")
    assert copy.label != start.label and copy.content == start.content and rules.content != start.content
    config = EvalConfig(worlds=2, steps=10)
    every = units(config, [start, copy, rules], tmp_path / "worlds")
    assert len(every) == 4 and sorted(u.labels for u in every if len(u.labels) == 2) == [
        (start.label, copy.label)] * 2
    shared = next(u for u in every if len(u.labels) == 2)
    Path(shared.path).parent.mkdir(parents=True)
    Path(shared.path).write_text(json.dumps(_row(shared.job.world, start.label, 1.0)))
    rows = [r for r in read_rows(every) if r["world"] == shared.job.world and not r.get("error")]
    assert sorted(r["agent"] for r in rows) == sorted([start.label, copy.label])


# ---------------------------------------------------------------------------------------- real worlds


@pytest.mark.slow
def test_a_row_of_older_agent_code_is_played_again_and_an_extension_is_recorded(tmp_path):
    """Rows are keyed by what played: an edit to the agent's code plays its worlds again (the old row is not
    reused); more worlds than planned are recorded as an extension, with when."""
    import uuid

    module = f"probe_{uuid.uuid4().hex[:8]}"
    source = Path(__file__).parent / f"{module}.py"
    source.write_text("from scml.std.agents import GreedyStdAgent\n\n\nclass Probe(GreedyStdAgent):\n    pass\n")
    try:
        spec = f"{module}:Probe"
        config = EvalConfig(worlds=1, steps=10, candidates=(spec,), reference=spec, opponents=("GreedyStdAgent",),
                            agents_per_world=(4, 5), keep_logs=False)
        played: list = []
        first = evaluate(config, tmp_path, progress=played.append)
        assert len(played) == 1 and first["worlds"]["complete"] == 1 and not first["plan"]["extensions"]
        evaluate(config, tmp_path, progress=played.append)
        assert len(played) == 1  # the same code: the row is reused
        source.write_text(source.read_text() + "    # an edit\n    step_count = 0\n")
        again = evaluate(config, tmp_path, progress=played.append)
        assert len(played) == 2  # older code's row: played again
        rows = sorted((tmp_path / "worlds").glob("*/w000/*.json"))
        assert len(rows) == 2  # the old row is still there, but not read
        assert again["candidates"][0]["content"] != first["candidates"][0]["content"]
        more = evaluate(replace(config, worlds=2), tmp_path, progress=played.append)
        assert len(played) == 3 and more["worlds"]["complete"] == 2
        ext = more["plan"]["extensions"]
        assert more["plan"]["worlds"] == 1 and [(e["from"], e["to"]) for e in ext] == [(1, 2)] and ext[0]["at"]
        assert f"Extended from 1 to 2 worlds at {ext[0]['at']}" in (tmp_path / "evaluation.md").read_text()
        jsonschema.validate(more, schemas.load("evaluation"))
    finally:
        source.unlink(missing_ok=True)


@pytest.mark.slow
def test_paired_run_same_slots_schema_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))
    out = tmp_path / "ev"
    args = ["evaluate", "--candidates", "rules,PenguinAgent", "--opponents", "AS0", "--worlds", "3", "--steps", "10",
            "--out", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    jsonschema.validate(doc, schemas.load("evaluation"))
    assert doc["worlds"]["complete"] == 3 and doc["same_slots"] and (out / "forest.png").stat().st_size > 0
    assert all(len(f) >= 1 for f in doc["slots"].values())
    diff = doc["paired"][0]
    assert (diff["a"], diff["b"], diff["n"]) == ("rules", "PenguinAgent", 3) and diff["half_width"] is not None
    assert doc["agents"]["PenguinAgent"]["decisions"] > 0 and doc["agents"]["rules"]["unsafe_any"] == 0
    assert doc["agents"]["rules"]["metrics"]["negs_succeeded"] > 0
    # a unit lost (a killed run) is the only one played again
    config = EvalConfig(worlds=3, steps=10, candidates=("rules", "PenguinAgent"), opponents=("AS0",))
    every = units(config, [parse_candidate("rules"), parse_candidate("PenguinAgent")], units_dir(out / "worlds", config))
    lost = every[3]
    before = {u.path: json.loads(open(u.path).read()) for u in every}
    os.remove(lost.path)
    played = []
    again = evaluate(config, out, progress=played.append)
    assert [(r["world"], r["agent"]) for r in played] == [(lost.job.world, lost.job.candidate)]
    assert {u.path: json.loads(open(u.path).read())["seconds"] for u in every if u != lost} == \
        {p: r["seconds"] for p, r in before.items() if p != lost.path}
    assert again["worlds"]["complete"] == 3
    # each unit kept its candidate's tracker logs as a raw world (what `hrlxf analyze` shows)
    assert doc["worlds_dir"] == os.path.relpath(units_dir(out / "worlds", config), out)
    for u in every:
        logs = Path(u.job.log_dir)
        row = json.loads(Path(u.path).read_text())
        meta = json.loads((logs / "world.json").read_text())
        assert (logs / "DONE").exists() and sorted(meta["agents"]) == sorted(row["factories"])
        assert [meta["scores"][a] for a in row["factories"]] == row["scores"]
        tables = world_tables("eval", f"w{u.job.world:03d}", logs)
        assert len(tables["days"]) == 10 * len(row["factories"]) and tables["decisions"]
        days = [json.loads(line) for f in (logs / "events").glob("*.jsonl") for line in f.open() if '"day_snapshot"' in line]
        if u.job.candidate == "rules":  # our agent notes its goal each day: the rule goal, as no planner runs
            assert all(d["plan"]["source"] == "rules" and d["plan"]["goal"] == d["plan"]["rule_goal"] for d in days)
        else:
            assert not any("plan" in d for d in days)


@pytest.mark.slow
def test_a_crashing_candidate_drops_its_worlds_and_too_few_worlds_say_so(tmp_path):
    config = EvalConfig(worlds=2, steps=10, candidates=("rules", "crashing_agents:RaisingAgent"), opponents=("AS0",))
    doc = evaluate(config, tmp_path)
    assert doc["worlds"]["complete"] == 0 and len(doc["worlds"]["dropped"]) == 2
    assert all("boom on day 2" in d["errors"][0]["error"] for d in doc["worlds"]["dropped"])
    assert doc["power"]["resolution"] is None and "too few worlds" in doc["power"]["note"]
    assert "too few worlds" in (tmp_path / "evaluation.md").read_text()
    assert math.isclose(doc["agents"]["rules"]["worlds"], 0)


def test_a_latest_that_does_not_load_is_no_latest_and_the_rules_bundle_is_the_rules(tmp_path):
    """The flow reads LATEST with `current_latest`: a name whose bundle does not load is None, so
    `decide_latest` treats the run as one without LATEST (the rules, or a bundle with evidence)."""
    from flows.pipeline import current_latest
    from hrlxf_agent.bundle import RULES_BUNDLE, load_bundle, rules_bundle, set_latest

    root = tmp_path / "bundles"
    rules = rules_bundle(root)
    assert rules.name == RULES_BUNDLE and not load_bundle(rules).has_networks and not load_bundle(rules).strategy
    set_latest(rules, root)
    assert current_latest(root) == rules.resolve()
    broken = root / "hrlxf-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    set_latest(broken, root)
    assert current_latest(root) is None
    (rules / "manifest.json").write_text("[]")  # a damaged rules bundle is written again
    assert load_bundle(rules_bundle(root)).strategy.offsets == {}
