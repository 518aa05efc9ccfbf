"""The analyzer (`hrlxf analyze`) on real short worlds it plays itself: a smoke collection and its tables, a
1-world smoke evaluation of our agent (untrained:rules, tracked) and a 1-world 10-step audit.

(a) the data layer returns the lake's numbers (daily series, contracts, micro's q_safe / b_free, the plan and
what was signed) and says what is missing instead of failing; (b) a headless Chromium loads every view, steps
through a replay and finds the lake's numbers on the page (screenshots in tests/artifacts/).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest

from hrlxf_analyzer import data as D
from hrlxf_analyzer.app import render_page
from hrlxf_analyzer.views.common import fmt
from tasks.events import converted

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root filled by the real commands (about a minute on 2 cores)."""
    root = tmp_path_factory.mktemp("analyzer-data")
    env = {**os.environ, "HRLXF_DATA": str(root)}
    for cmd in (["collect", "--profile", "smoke", "--workers", "1"], ["tables"]):
        subprocess.run([sys.executable, "-m", "flows.cli", *cmd], env=env, check=True, capture_output=True,
                       cwd=Path(__file__).parent.parent)
    from tasks.audit import AuditConfig, run_audit
    from tasks.evaluate import EvalConfig, evaluate

    evaluate(EvalConfig.smoke(candidates=("untrained:rules",), workers=1), root / "reports" / "evaluation",
             bundles_root=root / "bundles")
    run_audit(AuditConfig(agents=("PenguinAgent", "LitaAgentHRL"), opponents=("AS0", "XenoSotaAgent"), worlds=1, steps=10,
                          workers=1), root / "reports" / "audit")
    return root


@pytest.fixture(scope="module")
def store(root: Path) -> D.Store:
    return D.Store(root)


def lake_world(root: Path) -> str:
    first = converted(root / "lake" / "events")[0]
    return f"lake:{first.parent.name}/{first.name}"


def ours(root: Path) -> str:
    path = D.evaluations(root)[0]
    _, worlds = D.eval_worlds(root, path, D._json(path))
    specs = worlds.filter(pl.col("agent") == D.HRL_CLASS)["world_spec"].to_list()
    assert specs and specs[0], "the evaluation kept no tracked world of our agent"
    return specs[0]


# ------------------------------------------------------------------------------------------ (a) data layer


def test_days_are_the_lakes(store: D.Store, root: Path) -> None:
    world = store.world(lake_world(root))
    aid = D.agents(world)["agent_id"][0]
    days = D.agent_days(world, aid)
    daily = pl.read_parquet(world.events / "daily.parquet").filter(pl.col("agent_id") == aid).sort("step")
    assert days["balance"].to_list() == daily["balance"].to_list()
    assert days["shortfall_quantity"].to_list() == daily["shortfall_quantity"].to_list()
    contracts = pl.read_parquet(world.events / "contracts.parquet").filter((pl.col("seller") == aid) | (pl.col("buyer") == aid))
    assert days["signed"].sum() == contracts.filter(pl.col("signed_at") >= 0).height
    assert days["executed"].sum() == contracts.filter(pl.col("executed_at").is_not_null() & (pl.col("executed_at") >= 0)).height
    paid = json.loads((world.raw / "world.json").read_text())["daily"][aid]  # scml's money per day, as recorded
    assert days["storage_paid"].to_list() == paid["storage_cost"]
    assert days["shortfall_paid"].to_list() == paid["shortfall_penalty"]


def test_replay_carries_micro_bounds(store: D.Store, root: Path) -> None:
    world = store.world(lake_world(root))
    micro = pl.read_parquet(world.micro)
    row = micro.filter(pl.col("round") > 0).row(0, named=True)
    rows = D.replay(world, row["agent_id"], row["step"], row["partner"])
    mine = rows.filter(pl.col("seq") == row["seq"]).row(0, named=True)
    assert mine["b_free"] == row["b_free"] and mine["round"] == row["round"]
    assert mine["q_safe"] == pytest.approx(list(row["q_safe"]))
    decisions = pl.read_parquet(world.events / "decisions.parquet").filter(
        (pl.col("agent_id") == row["agent_id"]) & (pl.col("step") == row["step"]) & (pl.col("partner") == row["partner"]))
    assert rows["seq"].to_list() == sorted(decisions["seq"].to_list())
    if mine["out_t"] is not None and 0 <= mine["out_t"] - row["step"] < len(mine["q_safe"]):
        assert mine["room_out"] == pytest.approx(mine["q_safe"][mine["out_t"] - row["step"]])
    # before any deal of the day, the round's b_free is the morning's (the shield on the logged Snapshot)
    first = micro.filter(pl.col("version") == pl.col("version").min().over("agent_id", "step")).row(0, named=True)
    snap = D.morning(world, first["agent_id"], first["step"])
    if snap.version == first["version"]:
        assert D.l1_bounds(snap)["b_free"] == pytest.approx(first["b_free"])


def test_our_goal_against_what_was_signed(store: D.Store, root: Path) -> None:
    world = store.world(ours(root))
    aid = D.agents(world)["agent_id"][0]
    lines = [json.loads(x) for x in (world.raw / "events" / f"{aid}.jsonl").read_text().splitlines()]
    plans = {e["step"]: e["plan"] for e in lines if e["type"] == "day_snapshot" and "plan" in e}
    assert plans, "our agent's log has no plan"
    contracts = [json.loads(x) for x in (world.raw / "contracts.jsonl").read_text().splitlines()]
    checked = 0
    for step, plan in plans.items():
        g = D.goal_table(world, aid, step)
        assert g["goal_q_sell"].to_list() == pytest.approx(plan["goal"]["q_sell"])
        assert g["rule_q_buy"].to_list() == pytest.approx(plan["rule_goal"]["q_buy"])
        for side, role in (("buy", "buyer"), ("sell", "seller")):
            signed = sum(c["quantity"] for c in contracts if c[role] == aid and c["signed_at"] == step
                         and 0 <= c["delivery_time"] - step <= 10
                         and "SELLER" not in (c["seller"], c["buyer"]) and "BUYER" not in (c["seller"], c["buyer"]))
            assert g[f"committed_{side}"].sum() == pytest.approx(signed), (step, side)
            checked += signed > 0
    assert checked, "no day with a deal to check"


def test_evaluation_links_its_tracked_worlds(store: D.Store, root: Path) -> None:
    path = D.evaluations(root)[0]
    doc = D._json(path)
    _, worlds = D.eval_worlds(root, path, doc)
    assert worlds.height == len(doc["per_world"]) and worlds["world_spec"].is_not_null().all()
    assert sorted(worlds["score"].to_list()) == sorted(r["score"] for r in doc["per_world"])
    paired = D.paired_table(doc)
    assert paired["mean"].to_list() == [p["mean"] for p in doc["paired"]]


def test_audit_decisions_filter_and_link(store: D.Store, root: Path) -> None:
    every = pl.read_parquet(root / "reports" / "audit" / "decisions.parquet")
    got = D.audit_decisions(root)
    assert got.height == every.height
    assert D.audit_decisions(root, violation="unsafe_sell").height == every.filter(pl.col("unsafe_sell")).height
    assert D.audit_decisions(root, agent="PenguinAgent").height == every.filter(pl.col("agent") == "PenguinAgent").height
    if got.height:
        r = got.row(0, named=True)
        assert r["world_spec"] and D.replay(store.world(r["world_spec"]), r["agent_id"], r["step"], r["partner"]).height


def test_messages_not_tracebacks(store: D.Store, root: Path, tmp_path: Path) -> None:
    empty = D.Store(tmp_path / "empty")
    assert "hrlxf collect" in render_page(empty, "/", {}).children
    assert "hrlxf audit" in render_page(empty, "/decisions", {}).children
    assert "hrlxf train" in render_page(empty, "/training", {}).children
    assert "bad world" in render_page(store, "/world", {"world": "nowhere"}).children
    assert "whole number" in render_page(store, "/world", {"world": lake_world(root), "day": "x"}).children
    assert "no agent" in render_page(store, "/replay", {"world": lake_world(root), "agent": "nobody"}).children
    # a truncated log is quarantined by `hrlxf events`; its world is a message naming the reason
    from tasks.events import run_events

    src = sorted(root.glob("raw/*/*/DONE"))[0].parent
    bad_raw = tmp_path / "data" / "raw" / "broken" / "w0000"
    shutil.copytree(src, bad_raw)
    log = sorted((bad_raw / "events").glob("*.jsonl"))[0]
    log.write_text(log.read_text()[:-40])
    run_events(tmp_path / "data" / "raw", tmp_path / "data" / "lake")
    page = render_page(D.Store(tmp_path / "data"), "/world", {"world": "lake:broken/w0000"})
    assert "quarantined" in page.children and "not JSON" in page.children


# ------------------------------------------------------------------------------------------ (b) browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(root: Path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium / chromedriver not installed (the Makefile installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from werkzeug.serving import make_server

    from hrlxf_analyzer.app import create_app

    port = _free_port()
    server = make_server("127.0.0.1", port, create_app(root).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver, f"http://127.0.0.1:{port}"
    driver.quit()
    server.shutdown()


def _open(browser, path: str, ready: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver, base = browser
    driver.get(base + path)
    WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, ready)))
    text = driver.find_element(By.ID, "page").text
    assert "Traceback" not in text
    return text


def test_every_view_in_the_browser(browser, root: Path, store: D.Store) -> None:
    from hrlxf_analyzer.views.common import href

    driver, _ = browser
    text = _open(browser, "/", "section.card")
    assert "Run smoke" in text and "evaluation.json" in text
    driver.save_screenshot(str(ARTIFACTS / "analyzer-overview.png"))
    spec = ours(root)
    world = store.world(spec)
    aid = D.agents(world)["agent_id"][0]
    text = _open(browser, href("/world", world=spec, day=3), "#world-table")
    first = D.agent_days(world, aid).row(0, named=True)
    assert fmt(first["balance"]) in text and "L2 goal of the day" in text
    driver.save_screenshot(str(ARTIFACTS / "analyzer-world.png"))
    assert "Audit" in _open(browser, "/decisions", "#audit-summary")
    driver.save_screenshot(str(ARTIFACTS / "analyzer-decisions.png"))
    assert "Training" in _open(browser, "/training", "h2")
    driver.save_screenshot(str(ARTIFACTS / "analyzer-training.png"))


def test_replay_steps_round_by_round(browser, root: Path, store: D.Store) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hrlxf_analyzer.views.common import href

    driver, _ = browser
    world = store.world(lake_world(root))
    micro = pl.read_parquet(world.micro)
    longest = (micro.group_by("agent_id", "step", "partner").agg(pl.len().alias("n"))
               .sort(["n", "agent_id", "step", "partner"], descending=[True, False, False, False]).row(0, named=True))
    rows = D.replay(world, longest["agent_id"], longest["step"], longest["partner"])
    assert rows.height >= 2
    _open(browser, href("/replay", world=world.spec, agent=longest["agent_id"], day=longest["step"],
                        partner=longest["partner"]), "#replay-rounds")

    def state() -> str:
        return driver.find_element(By.ID, "replay-state").text

    assert f"1 of {rows.height}" in state()
    driver.find_element(By.ID, "replay-next").click()
    WebDriverWait(driver, 20).until(lambda d: f"2 of {rows.height}" in state())
    second = rows.row(1, named=True)
    assert fmt(second["b_free"]) in state() and second["op"] in state()
    cells = driver.find_elements(By.CSS_SELECTOR, "#replay-rounds tr.current td")
    assert cells[0].text == ("" if second["round"] is None else str(second["round"]))  # a first offer has no round
    driver.save_screenshot(str(ARTIFACTS / "analyzer-replay.png"))
    driver.find_element(By.ID, "replay-prev").click()
    WebDriverWait(driver, 20).until(lambda d: f"1 of {rows.height}" in state())
