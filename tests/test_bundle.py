"""Bundles: round trip, 'latest', and every bad-bundle case fails at load time naming the file."""

import json

import pytest
import torch

from hrlxf_agent.bundle import BundleError, load_bundle, resolve_bundle, save_bundle, set_latest, write_untrained_bundle
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
