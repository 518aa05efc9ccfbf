"""Bundles: round trip, 'latest', every bad-bundle case fails at load time naming the file, and a data root
that moves keeps its LATEST bundle and its cache keys (manifests record paths relative to the bundle)."""

import json
from pathlib import Path

import pytest
import torch

from hrlxf_agent.bundle import (
    BundleError, bundle_ref, load_bundle, resolve_bundle, save_bundle, set_latest, write_untrained_bundle,
)
from hrlxf_models import Coordinator, CoordinatorConfig, Executor, ExecutorConfig, Planner, PlannerConfig


@pytest.fixture
def bundle(tmp_path):
    return write_untrained_bundle(tmp_path / "b1", mode="direct", seed=3)


def test_round_trip_keeps_weights_and_configs(bundle):
    b = load_bundle(bundle)
    assert b.manifest.l3_mode == "direct" and b.executor.config.mode == "direct"
    torch.manual_seed(3)
    fresh = Planner(PlannerConfig())
    x = (torch.randn(2, 12), torch.randn(2, 11, 10), torch.ones(2, 2), torch.rand(2, 16))
    assert torch.allclose(b.planner(*x)[0], fresh(*x)[0])
    again = save_bundle(bundle.parent / "b2", b.planner, b.executor, b.coordinator, metrics={"x": 1})
    b2 = load_bundle(again)
    assert b2.manifest.metrics == {"x": 1} and torch.allclose(b2.planner(*x)[0], b.planner(*x)[0])


def test_latest_and_env_override(tmp_path, bundle, monkeypatch):
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("HRLXF_BUNDLE", raising=False)
    with pytest.raises(BundleError, match="no LATEST bundle"):
        resolve_bundle("latest")
    set_latest(bundle)
    assert load_bundle("latest").path == bundle.resolve()
    monkeypatch.setenv("HRLXF_BUNDLE", str(bundle))
    assert resolve_bundle("latest") == bundle
    assert resolve_bundle(None) is None


def _edit_manifest(bundle, **changes):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: (b / "manifest.json").unlink(), r"manifest.json: missing"),
        (lambda b: (b / "manifest.json").write_text("{not json"), r"manifest.json: not a valid manifest"),
        (lambda b: _edit_manifest(b, schema_version=99), r"schema_version 99"),
        (lambda b: _edit_manifest(b, feature_fingerprint="0000"), r"made for other features .*feature_fingerprint 0000"),
        # a bundle of the old horizon and features (before version 2): refused, naming what differs
        (lambda b: _edit_manifest(b, feature_fingerprint="7c0d", features={}), r"features: not recorded .*horizon 40"),
        (lambda b: _edit_manifest(b, feature_fingerprint="7c0d", features={**json.loads((b / "manifest.json").read_text())["features"],
                                                                          "bucket_starts": [3, 8, 15]}),
         r"bucket_starts: bundle \[3, 8, 15\], this code \[2, 5, 8\]"),
        (lambda b: (b / "executor.pt").unlink(), r"executor.pt: missing weights"),
        (lambda b: (b / "planner.pt").write_bytes(b"garbage"), r"planner.pt: not a loadable state dict"),
        (lambda b: torch.save({"w": [1, 2]}, b / "coordinator.pt"), r"coordinator.pt: not a state dict of tensors"),
        (lambda b: torch.save(torch.nn.Linear(2, 2), b / "planner.pt"), r"planner.pt: not a loadable state dict"),
        (lambda b: torch.save(Planner(PlannerConfig(hidden=64)).state_dict(), b / "planner.pt"), r"planner.pt: does not fit"),
        (lambda b: _edit_manifest(b, configs={"planner": {"nope": 1}, "executor": {}, "coordinator": {}}), r"bad config for planner"),
    ],
)
def test_bad_bundles_fail_naming_the_file(bundle, damage, message):
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(BundleError, match="nowhere/manifest.json: missing"):
        load_bundle(tmp_path / "nowhere")


def test_untrained_bundle_has_zero_l3_heads(bundle):
    b = load_bundle(bundle)
    assert torch.count_nonzero(b.executor.q_head.weight) == 0
    assert isinstance(b.coordinator, Coordinator) and isinstance(b.executor, Executor)
    assert CoordinatorConfig() == b.coordinator.config and ExecutorConfig(mode="direct") == b.executor.config


def test_manifest_matches_its_schema(bundle):
    import jsonschema

    import schemas

    jsonschema.validate(json.loads((bundle / "manifest.json").read_text()), schemas.load("bundle_manifest"))


def test_bc_weights_travel_in_the_bundle_and_load_on_request(tmp_path, bundle):
    b = load_bundle(bundle)
    with pytest.raises(BundleError, match="no executor_bc weights"):
        load_bundle(bundle, executor="bc")
    bc_state = {k: torch.zeros_like(v) for k, v in b.executor.state_dict().items()}
    with_bc = save_bundle(tmp_path / "bc", b.planner, b.executor, b.coordinator, executor_bc=bc_state)
    final, before_awr = load_bundle(with_bc), load_bundle(with_bc, executor="bc")
    assert all(torch.equal(v, b.executor.state_dict()[k]) for k, v in final.executor.state_dict().items())
    assert all(not v.any() for v in before_awr.executor.state_dict().values())
    assert all(torch.equal(v, final.planner.state_dict()[k]) for k, v in before_awr.planner.state_dict().items())
    with pytest.raises(BundleError, match="choose one of final, bc"):
        load_bundle(with_bc, executor="awr")


def _stage_output(out, name, module, section, metrics):
    from dataclasses import asdict

    from tasks.training import write_stage_output

    write_stage_output(out, {name: module.state_dict()}, {**metrics, "config": {section: asdict(module.config)}})


def test_a_moved_data_root_keeps_its_latest_bundle_and_its_cache_keys(tmp_path, monkeypatch):
    """Manifests record paths relative to the bundle and LATEST the bundle's name: rename the data root, and
    LATEST still loads, the recorded paths still name its files, and the stage keys do not change."""
    from flows.stages import ARTIFACTS
    from tasks.bundle import BundleConfig, assemble
    from tasks.fingerprint import fingerprint, stage_key

    old = tmp_path / "old"
    models = old / "models"
    torch.manual_seed(0)
    _stage_output(models / "l2", "planner", Planner(PlannerConfig()), "planner",
                  {"val": {"mse": 1.0, "q_mae_items": 1.0, "p_mae_catalog_share": 0.1}, "val_mean_baseline": {"mse": 2.0}})
    _stage_output(models / "l3-residual", "executor", Executor(ExecutorConfig()), "executor",
                  {"mode": "residual", "final": {"op_accuracy": 0.5, "op_majority_baseline": 0.4, "delta_accuracy": 0.3,
                                                 "q_mae_items": 1.0, "p_mae_catalog_share": 0.1},
                   "resumed_from": str(models / "l3-residual" / "checkpoints" / "last.ckpt")})
    _stage_output(models / "l4", "coordinator", Coordinator(CoordinatorConfig()), "coordinator",
                  {"val": {"mae": 0.2, "rank_agreement": 0.7}})
    (old / "lake").mkdir()
    bundle = assemble(models / "l2", models / "l3-residual", models / "l4", old / "bundles", BundleConfig(),
                      trained_on={"lake": str(old / "lake")})
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["trained_on"] == {"stages": {"l2": "../../models/l2", "l3": "../../models/l3-residual",
                                                 "l4": "../../models/l4"}, "lake": "../../lake"}
    assert manifest["metrics"]["l3"]["resumed_from"] == "../../models/l3-residual/checkpoints/last.ckpt"
    assert str(old) not in (bundle / "manifest.json").read_text()
    assert (old / "bundles" / "LATEST").read_text().strip() == bundle.name

    def keys(root):
        inputs = {a: fingerprint(root / ARTIFACTS[a].path.format(mode="residual"), ARTIFACTS[a].layout) for a in ("l2", "l3", "l4")}
        return stage_key("recipe", inputs), fingerprint(root / "bundles"), inputs

    before = keys(old)
    new = tmp_path / "moved"
    old.rename(new)
    monkeypatch.setenv("HRLXF_DATA", str(new))
    monkeypatch.delenv("HRLXF_BUNDLE", raising=False)
    b = load_bundle("latest")
    assert b.path == new / "bundles" / bundle.name
    assert {k: bundle_ref(b.path, v) for k, v in b.manifest.trained_on["stages"].items()} == \
        {"l2": new / "models" / "l2", "l3": new / "models" / "l3-residual", "l4": new / "models" / "l4"}
    assert bundle_ref(b.path, b.manifest.trained_on["lake"]).is_dir()
    assert keys(new) == before  # the same stage keys: a cache hit holds


def test_paths_outside_the_data_root_and_old_absolute_ones_are_read_as_they_are(tmp_path, monkeypatch, bundle):
    outside, nets = tmp_path / "elsewhere", load_bundle(bundle)
    b = save_bundle(tmp_path / "data" / "bundles" / "b", nets.planner, nets.executor, nets.coordinator,
                    metrics={"from": str(tmp_path / "data" / "bundles" / "start")}, trained_on={"x": str(outside)})
    m = load_bundle(b).manifest
    assert m.metrics["from"] == "../start" and m.trained_on["x"] == str(outside)
    assert bundle_ref(b, m.metrics["from"]) == tmp_path / "data" / "bundles" / "start"
    assert bundle_ref(b, "/abs/olds/lake") == Path("/abs/olds/lake")  # a bundle written before: absolute
    # a LATEST written before holds an absolute path; one outside its bundles root stays absolute
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("HRLXF_BUNDLE", raising=False)
    (tmp_path / "data" / "bundles" / "LATEST").write_text(str(b.resolve()) + "\n")
    assert load_bundle("latest").path == b.resolve()
    set_latest(bundle, tmp_path / "data" / "bundles")
    assert (tmp_path / "data" / "bundles" / "LATEST").read_text().strip() == str(bundle.resolve())


def test_knobs_rebuild_the_searched_bundle_from_the_untrained_rules(tmp_path, monkeypatch, capsys):
    """`hrlxf bundle knobs` sets the search's knobs on a start: l2.p_sell@first at theta -2 from untrained:rules is
    the bundle the screen search published (docs/online-learning.md), to the digest of its weights."""
    from flows.cli import main

    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))
    assert main(["bundle", "knobs", "--set", "l2.p_sell@first=-2"]) == 0
    path = Path(capsys.readouterr().out.split("wrote ")[-1].strip())
    assert path.name == "hrlxf-knobs-residual-rules-915d37adc94d"
    b = load_bundle(path)
    assert b.executor.config.rules_goal == "l2" and b.manifest.metrics["knobs"] == {"l2.p_sell@first": -2.0}
    assert main(["bundle", "knobs", "--set", "l2.nothing=1"]) == 2
    assert "unknown ['l2.nothing']" in capsys.readouterr().err
    assert main(["bundle", "knobs", "--set", "l2.p_sell@first=much"]) == 2
    assert "give KNOB=THETA with a number" in capsys.readouterr().err
