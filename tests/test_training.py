"""The offline training stages on a real (smoke-sized) collection: end to end to a loadable bundle
that plays safely, resume, divergence, and the errors for data that cannot train."""

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import agents_of, make_world
from hrlxf_agent import LitaAgentHRL
from hrlxf_agent.audit import audited
from hrlxf_agent.bundle import load_bundle
from hrlxf_agent.registry import resolve
from tasks.backfill import BackfillConfig, backfill
from tasks.bundle import BundleConfig, assemble
from tasks.collect import CollectProfile, run_collect
from tasks.events import run_events
from tasks.world_tables import build_l4_distill, build_macro, build_micro
from tasks.train_l2 import L2Config, train_l2
from tasks.train_l3 import L3Config, awr_weights, train_l3
from tasks.train_l4 import L4Config, train_l4
from tasks.training import Batches, DivergedError, FitConfig, TrainingDataError, fit_module, is_validation_world

PROFILE = CollectProfile(worlds=6, steps=12, experts=("PenguinAgent", "AS0", "XenoSotaAgent"), agents_per_world=(6, 8), workers=2)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert run_collect(PROFILE, root / "raw", "t")["worlds_failed"] == 0
    run_events(root / "raw", root / "lake")
    for build in (build_macro, build_micro, build_l4_distill):
        build(root / "lake")
    return root / "lake"


@pytest.fixture(scope="module")
def trained(lake, tmp_path_factory) -> dict[str, Path]:
    models = tmp_path_factory.mktemp("models")
    train_l2(lake, models / "l2", L2Config.smoke(), progress=False)
    backfill(lake, models / "l2", BackfillConfig())
    for mode in ("residual", "direct"):
        train_l3(lake, models / f"l3-{mode}", L3Config.smoke(mode), progress=False)
    train_l3(lake, models / "l3-rules", L3Config.smoke(base="rules"), progress=False)
    train_l4(lake, models / "l4", L4Config.smoke(), progress=False)
    return {"models": models, "bundles": models / "bundles"}


def test_stages_write_weights_and_metrics_in_game_units(trained):
    models = trained["models"]
    l2 = json.loads((models / "l2" / "metrics.json").read_text())
    assert l2["val"]["rows"] > 0 and np.isfinite(l2["val"]["mse"]) and l2["val"]["q_mae_items"] >= 0
    for mode in ("residual", "direct"):
        l3 = json.loads((models / f"l3-{mode}" / "metrics.json").read_text())
        assert l3["mode"] == mode and 0 <= l3["final"]["op_accuracy"] <= 1 and l3["final"]["delta_rows"] > 0
        assert l3["awr"]["weight_max"] <= L3Config().awr_max_weight
    l4 = json.loads((models / "l4" / "metrics.json").read_text())
    assert l4["val"]["threads"] > 0 and 0 <= l4["val"]["rank_agreement"] <= 1
    # one split by world: every stage holds out the same worlds (and reports the floors beside its figures)
    digests = {m["split"]["digest"] for m in (l2, l4, *(json.loads((models / f"l3-{v}" / "metrics.json").read_text())
                                                         for v in ("residual", "direct", "rules")))}
    l3 = json.loads((models / "l3-rules" / "metrics.json").read_text())
    assert len(digests) <= 2, digests  # L2 splits agent-days, L3/L4 decisions: the same worlds where both have rows
    assert {"floor_rules_op_accuracy", "floor_conditional_majority_op", "floor_rules_delta_accuracy"} <= set(l3["final"])
    assert l2["floor_rule_goal"]["rows"] > 0 and l3["config"]["executor"]["base"] == "rules"


def test_l3_rows_memory_mapped_world_by_world_are_the_rows_in_memory(lake, trained, tmp_path):
    """load_micro's arrays in .npy files filled world by world (what train_l3 trains on) equal the in-memory
    ones, field for field; the trainings leave no array files in their outputs; a batch gathers rows of either."""
    from tasks.train_l3 import FIELDS, load_micro
    from hrlxf_agent.state import FeatureSpec

    memory, split, keys = load_micro(lake, FeatureSpec(), L3Config.smoke())
    mapped, split2, keys2 = load_micro(lake, FeatureSpec(), L3Config.smoke(), tmp_path / "store")
    assert set(memory) == set(mapped) and keys.equals(keys2) and (split.train == split2.train).all()
    for k in memory:
        assert isinstance(mapped[k], np.memmap) and mapped[k].dtype == memory[k].dtype, k
        np.testing.assert_array_equal(mapped[k], memory[k], err_msg=k)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(f"{k}.npy" for k in memory)  # no parts left
    rows = np.flatnonzero(split.val)[[3, 0, 7]]
    batch = Batches.of(tuple(mapped[k] for k in FIELDS), split.val)[[3, 0, 7]]
    for k, t in zip(FIELDS, batch):
        np.testing.assert_array_equal(t.numpy(), memory[k][rows], err_msg=k)
    for stage in ("l2", "l3-residual", "l3-direct", "l3-rules", "l4"):  # each trained on its memory-mapped rows
        assert (trained["models"] / stage / "metrics.json").exists() and not (trained["models"] / stage / ".arrays").exists()


def test_bench_loading_loads_copies_of_the_worlds_under_their_own_run_ids(lake, trained):
    """`hrlxf bench loading`: 2x the lake is twice its batches for L4, in memory and memory-mapped alike."""
    from tasks.bench_loading import Config, render, run_bench
    from tasks.train_l4 import load_l4

    batches = len(load_l4(lake, L4Config())[2])
    doc = run_bench(Config(lake=str(lake), scales=(2,), loaders=("l4",)))
    assert [(r["mode"], r["rows"]) for r in doc["results"]] == [("memory", 2 * batches), ("mapped", 2 * batches)]
    assert all(r["anon_mb"] > 0 and r["peak_mb"] >= r["anon_mb"] for r in doc["results"])
    assert "| l4 | 2x | mapped |" in render(doc)


def test_l4_metrics_in_chunks_are_the_one_pass_figures(lake, trained):  # trained: the goal_hat backfill
    """alpha_metrics runs the coordinator a chunk of batches at a time (one pass over the official
    profile's 1 M batches took 17.6 GB): the figures are those of one pass."""
    from hrlxf_models.coordinator import Coordinator
    from tasks.train_l4 import alpha_metrics, load_l4

    config = L4Config.smoke()
    arrays, _, _ = load_l4(lake, config)
    torch.manual_seed(0)
    coordinator = Coordinator(config.coordinator)
    rows = np.ones(len(arrays[0]), bool)
    assert len(arrays[0]) > 7
    chunked, one_pass = (_leaves(alpha_metrics(coordinator, arrays, rows, chunk=c)) for c in (7, 10**9))
    assert chunked.keys() == one_pass.keys()
    # equal up to float rounding (matrix products of 7 rows round as products of all do not)
    assert all(chunked[k] == pytest.approx(one_pass[k], rel=1e-5, abs=1e-6) for k in chunked), (chunked, one_pass)


def _leaves(doc: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in doc.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_goal_hat_is_cross_fitted_by_world(lake, trained):
    """Each world's goal_hat comes from the fold planner that did not see it (the bundle's for test worlds)."""
    from hrlxf_models.planner import PlannerConfig
    from tasks.goal_hat import load_planner
    from tasks.tables import macro_arrays
    from tasks.train_l2 import crossfit_fold, predict_goals
    from tasks.training import world_position

    l2 = trained["models"] / "l2"
    crossfit = json.loads((l2 / "metrics.json").read_text())["crossfit"]
    assert crossfit["trained"], crossfit  # at least one fold had enough worlds
    checked = 0
    for macro in sorted((lake / "macro").glob("*/*.parquet")):
        key = f"{macro.parent.name}/{macro.stem}"
        if world_position(key, crossfit["seed"]) < crossfit["test_fraction"]:
            continue
        fold = crossfit_fold(key, crossfit["folds"], crossfit["seed"])
        if fold not in crossfit["trained"]:
            continue
        a = macro_arrays(macro)
        own = predict_goals(load_planner(l2, PlannerConfig(), f"planner_fold{fold}.pt"), a["x_static"], a["x_temporal"],
                            a["x_role"], a["rule_goal"])
        main = predict_goals(load_planner(l2, PlannerConfig()), a["x_static"], a["x_temporal"], a["x_role"], a["rule_goal"])
        hat = np.asarray(pq.read_table(lake / "goal_hat" / macro.parent.name / macro.name).column("goal_hat").to_pylist())
        np.testing.assert_allclose(hat, own, atol=1e-6)
        assert not np.allclose(own, main, atol=1e-4)  # another planner than the bundle's
        checked += 1
    assert checked >= 1


def test_backfill_is_the_planners_goal_and_skips_what_is_done(lake, trained):
    again = backfill(lake, trained["models"] / "l2", BackfillConfig())
    assert again["built"] == 0 and again["skipped"] >= 1
    goals = pq.read_table(next((lake / "goal_hat").glob("*/*.parquet"))).column("goal_hat").to_pylist()
    assert np.isfinite(np.asarray(goals)).all() and np.asarray(goals).any()


def test_backfill_mapped_on_worker_processes_gives_the_same_goals(lake, trained, tmp_path, monkeypatch):
    """Each world's goal_hat is a unit of its own (a Prefect task in a fresh process with two workers): the same
    goals as the in-process build, the worlds named in the tasks' workers."""
    from tasks import parallel

    copy = tmp_path / "lake"
    shutil.copytree(lake, copy, ignore=shutil.ignore_patterns("goal_hat"))
    forked, fork = [], parallel.in_fresh_process
    monkeypatch.setattr(parallel, "in_fresh_process", lambda fn, *a: forked.append(a) or fork(fn, *a))
    mapped = backfill(copy, trained["models"] / "l2", BackfillConfig(), workers=2)
    files = sorted((lake / "goal_hat").glob("*/*.parquet"))
    assert mapped["built"] == len(files) == len(forked) > 1 and mapped["skipped"] == 0
    for f in files:
        here, there = pq.read_table(f), pq.read_table(copy / f.relative_to(lake))
        assert here.drop(["goal_hat"]).equals(there.drop(["goal_hat"]))
        np.testing.assert_allclose(np.asarray(here.column("goal_hat").to_pylist()),
                                   np.asarray(there.column("goal_hat").to_pylist()), atol=1e-6)
    assert backfill(copy, trained["models"] / "l2", BackfillConfig(), workers=2)["built"] == 0


def test_trained_bundles_load_and_play_with_no_unsafe_or_illegal_decision(trained):
    models = trained["models"]
    for mode in ("residual", "direct"):
        path = assemble(models / "l2", models / f"l3-{mode}", models / "l4", trained["bundles"], BundleConfig())
        bundle = load_bundle(path)
        assert bundle.manifest.l3_mode == mode and bundle.manifest.metrics["trained"]
        assert bundle.executor.config.heuristic_prior == 0.0  # a trained executor decides alone
        bc = load_bundle(path, executor="bc")  # L3 before AWR travels in the bundle (the BC ablation)
        assert any(not torch.equal(v, bundle.executor.state_dict()[k]) for k, v in bc.executor.state_dict().items())
        assert (trained["bundles"] / "LATEST").read_text().strip() == path.name  # relative: the data root may move
        cls = audited(LitaAgentHRL)
        world = make_world([cls, resolve("PenguinAgent"), resolve("AS0")], steps=12, seed=5,
                           agent_params=[{"controller_params": {"bundle": str(path)}}, {}, {}])
        world.run()
        for agent in agents_of(world, cls).values():
            counts = agent.hook().counts
            assert counts.decisions > 0 and counts.unsafe_any == 0 and counts.illegal == 0
            assert not agent.fallbacks, agent.fallbacks  # the models ran; no layer fell back to rules


def test_same_training_gives_the_same_bundle_id(trained):
    models = trained["models"]
    a = assemble(models / "l2", models / "l3-residual", models / "l4", trained["bundles"], BundleConfig(set_latest=False))
    b = assemble(models / "l2", models / "l3-residual", models / "l4", trained["bundles"], BundleConfig(set_latest=False))
    assert a == b


def test_training_resumes_from_the_last_epoch(lake, tmp_path):
    shutil.copytree(lake, tmp_path / "lake")
    config = L2Config.smoke()
    one = replace(config, fit=replace(config.fit, max_epochs=1))
    first = train_l2(tmp_path / "lake", tmp_path / "l2", one, progress=False)
    assert [h["epoch"] for h in first["history"]] == [0]
    two = replace(config, fit=replace(config.fit, max_epochs=2))
    second = train_l2(tmp_path / "lake", tmp_path / "l2", two, progress=False)
    assert second["resumed_from"].endswith("last.ckpt")
    assert [h["epoch"] for h in second["history"]] == [0, 1]  # epoch 0 not redone


def test_too_little_data_says_how_much_is_needed(lake):
    config = L2Config.smoke()
    config = replace(config, fit=replace(config.fit, min_train_rows=10**7))
    with pytest.raises(TrainingDataError, match="need at least 10000000"):
        train_l2(lake, Path("/nonexistent/never-written"), config, progress=False)


def test_a_table_of_another_schema_fails_naming_the_column(lake, tmp_path):
    broken = tmp_path / "lake"
    shutil.copytree(lake, broken)
    f = next((broken / "macro").glob("*/*.parquet"))
    t = pq.read_table(f)
    pq.write_table(t.drop(["goal_mask"]).replace_schema_metadata(t.schema.metadata), f)
    with pytest.raises(TrainingDataError, match="'goal_mask' missing"):
        train_l2(broken, tmp_path / "out", L2Config.smoke(), progress=False)


def test_a_corrupt_table_file_is_named_and_rebuilt(lake, trained, tmp_path):
    broken = tmp_path / "lake"
    shutil.copytree(lake, broken)
    shutil.copytree(lake.parent / "prefect", tmp_path / "prefect")  # the data root's unit records go with it
    macro = sorted((broken / "macro").glob("*/*.parquet"))[0]
    macro.write_text("this is not Parquet")
    with pytest.raises(TrainingDataError, match=f"{re.escape(str(macro))}: not a readable Parquet file.*hrlxf tables"):
        train_l2(broken, tmp_path / "l2", L2Config.smoke(), progress=False)
    assert build_macro(broken)["built"] == 1  # only the corrupt file, from its converted world
    assert pq.read_table(macro).equals(pq.read_table(lake / macro.relative_to(broken)))
    goal = sorted((broken / "goal_hat").glob("*/*.parquet"))[0]
    goal.write_bytes(goal.read_bytes()[:100])  # truncated
    with pytest.raises(TrainingDataError, match=f"{re.escape(str(goal))}: .*hrlxf train backfill"):
        train_l4(broken, tmp_path / "l4", L4Config.smoke(), progress=False)
    assert backfill(broken, trained["models"] / "l2", BackfillConfig())["built"] == 1
    assert pq.read_table(goal).equals(pq.read_table(lake / goal.relative_to(broken)))


def test_empty_lake_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingDataError, match="hrlxf tables"):
        train_l3(tmp_path, tmp_path / "out", L3Config.smoke())


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    import lightning.pytorch as L

    class Explodes(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, i):
            (x,) = batch
            loss = (self.w * x).pow(2).mean()
            return loss * (float("nan") if self.current_epoch >= 1 else 1.0)

        def validation_step(self, batch, i):
            self.log("val_loss", (self.w * batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = Batches(torch.randn(64, 1))
    fit = FitConfig(max_epochs=3, batch_size=16)
    with pytest.raises(DivergedError, match="epoch 1"):
        fit_module(Explodes(), data, data, fit, tmp_path, progress=False)
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["epoch"] == 0 and torch.isfinite(kept["state_dict"]["w"]).all()


def test_awr_weights_favour_better_than_expected_and_are_clipped():
    ret = np.array([0.0, 0.0, 1.0, -1.0, 50.0])
    w = awr_weights(ret, np.zeros(5), beta=0.5, max_weight=20.0)
    assert w[2] > w[0] > w[3] and w.max() <= 20.0 and (w >= 0).all()


def test_split_holds_whole_worlds_out():
    import polars as pl

    from tasks.training import world_split

    keys = [f"r/w{i:04d}" for i in range(200)]
    held = [k for k in keys if is_validation_world(k, 0.2, 0)]
    assert 20 < len(held) < 60
    assert held == [k for k in keys if is_validation_world(k, 0.2, 0)]  # stable
    df = pl.DataFrame({"run_id": ["r"] * 600, "world_id": [f"w{i // 3:04d}" for i in range(600)]})
    split = world_split(df, FitConfig())
    assert np.all(split.train.astype(int) + split.val + split.test == 1)
    world = df["world_id"].to_numpy()
    for part in (split.train, split.val, split.test):
        assert not set(world[part]) & set(world[~part])  # whole worlds
    assert 5 < len(set(world[split.test])) < 40 and 20 < len(set(world[split.val])) < 60


def test_row_store_holds_no_open_file_per_world(tmp_path):
    """A lake of many worlds memory-mapped under a low open-file limit: each world's arrays are files, not
    open maps, until they are joined (the usual limit of 1,024 would stop a 43-world L3 lake otherwise);
    a dtype that differs from the first world's is cast to it, as in memory."""
    import resource

    from tasks.training import RowStore

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened = len(os.listdir("/proc/self/fd"))  # what this process holds already (torch, pytest, earlier tests)
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 64, hard))
    try:
        stores = RowStore(tmp_path / "store"), RowStore()
        for w in range(40):  # 40 worlds x 3 arrays = 120 files, above the 64 left to open
            dtype = np.float64 if w == 7 else np.float32
            for store in stores:
                store.add({"x": np.full((w + 1, 2), w, dtype), "y": np.arange(w + 1), "ok": np.ones(w + 1, bool)})
        mapped, memory = (s.joined() for s in stores)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for k in ("x", "y", "ok"):
        assert mapped[k].dtype == memory[k].dtype and np.array_equal(mapped[k], memory[k]), k
    assert mapped["x"].dtype == np.float32 and len(mapped["y"]) == sum(range(1, 41))
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["ok.npy", "x.npy", "y.npy"]
