"""The audit stage end to end in short real worlds: output shape, bad input, crashes."""

import json

import jsonschema
import polars as pl
import pytest

import schemas
from flows.cli import main
from tasks.audit import AuditConfig, run_audit
from tasks.convert import world_tables

SHAPE = {"worlds", "decisions", "unsafe_buy", "unsafe_sell", "unsafe_any", "unsafe_rate", "illegal", "score_mean", "score_std"}


def test_unknown_agent_fails_before_any_world(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--agents", "PenguinAgent,NoSuchAgent", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'NoSuchAgent'" in err and "PenguinAgent" in err and "LitaAgentHS" in err
    assert not out.exists()


def test_bad_numbers_are_refused(tmp_path, capsys):
    assert main(["audit", "--worlds", "0", "--out", str(tmp_path)]) == 2
    assert "worlds must be >= 1" in capsys.readouterr().err


def test_crashing_worlds_are_reported_and_the_rest_count(tmp_path):
    config = AuditConfig(
        agents=("PenguinAgent", "crashing_agents:RaisingAgent", "crashing_agents:DyingAgent"),
        opponents=("AS0",), worlds=1, steps=10, workers=2,
    )
    doc = run_audit(config, tmp_path)
    agents = doc["agents"]
    assert agents["PenguinAgent"]["worlds"] == 1 and agents["PenguinAgent"]["decisions"] > 0
    assert agents["crashing_agents:RaisingAgent"]["worlds"] == 0
    assert agents["crashing_agents:DyingAgent"]["worlds"] == 0
    errors = {f["agent"]: f["error"] for f in doc["failed"]}
    assert "boom on day 2" in errors["crashing_agents:RaisingAgent"]
    assert errors["crashing_agents:DyingAgent"]  # the worker process died; its job is recorded
    on_disk = json.loads((tmp_path / "audit.json").read_text())
    assert on_disk["failed"] and "| PenguinAgent |" in (tmp_path / "audit.md").read_text()


@pytest.mark.slow
def test_cli_audit_shape_and_the_shielded_champion_is_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))
    assert main(["audit", "--worlds", "2", "--steps", "15", "--workers", "2"]) == 0
    doc = json.loads((tmp_path / "reports" / "audit" / "audit.json").read_text())
    jsonschema.validate(doc, schemas.load("audit"))
    assert set(doc["paired"]) == {"LitaAgentH", "LitaAgentHS"}
    assert set(doc["agents"]) == {"PenguinAgent", "LitaAgentH", "LitaAgentHS"}
    for name, a in doc["agents"].items():
        assert SHAPE <= set(a), name
        assert a["worlds"] == 2 and a["decisions"] > 0
    hs = doc["agents"]["LitaAgentHS"]
    assert hs["unsafe_any"] == 0 and hs["illegal"] == 0
    assert doc["failed"] == []
    # every unsafe or illegal decision is a row of decisions.parquet, and each is in its world's tracker log
    out = tmp_path / "reports" / "audit"
    flagged = pl.read_parquet(out / "decisions.parquet")
    for name, a in doc["agents"].items():
        mine = flagged.filter(pl.col("agent") == name)
        assert mine.filter(pl.col("unsafe_buy") | pl.col("unsafe_sell")).height == a["unsafe_any"], name
        assert mine.filter(pl.col("illegal").is_not_null()).height == a["illegal"], name
    assert doc["agents"]["PenguinAgent"]["unsafe_any"] > 0  # the champion's defect: the view has rows to show
    for f in flagged.iter_rows(named=True):
        tables = world_tables("audit", f"w{f['world']:03d}", out / "worlds" / f"w{f['world']:03d}" / f["agent"])
        assert any(d["agent_id"] == f["agent_id"] and d["step"] == f["step"] and d["partner"] == f["partner"]
                   for d in tables["decisions"]), f
