"""The pipeline's refusals, each on a data root of its own (beside test_pipeline.py's shared root, so that the
two files run on different test processes): a data root another run holds, bad parameters, an object-store
root given to a command that does not sync with it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, data_env, hrlxf_run as hrlxf


def test_a_second_run_on_a_held_data_root_refuses_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from flows.pipeline import holding\n"
         "with holding(Path(sys.argv[1]), {'flow': 'hrlxf', 'profile': 'default', 'pid': 4242}):\n"
         "    print('held', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, env=data_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = hrlxf(tmp_path, "--profile", "smoke", "--until", "collect")
        assert r["rc"] == 2 and "held by another pipeline run" in r["err"] and '"pid": 4242' in r["err"], r["err"][-2000:]
        assert r["report"] is None and not (tmp_path / "raw").exists()  # nothing of the holder's was touched
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    r = hrlxf(tmp_path, "--profile", "smoke", "--until", "collect", "--set", "collect.worlds=1")
    assert r["rc"] == 0, r["err"][-3000:]
    assert r["report"]["status"] == "completed"


def test_bad_parameters_are_refused_before_anything_runs(tmp_path, monkeypatch):
    from flows.pipeline import hrlxf as flow
    from flows.stages import ParameterError, make_plan

    monkeypatch.setenv("HRLXF_DATA", str(tmp_path))

    r = hrlxf(tmp_path, "--profile", "bogus")
    assert r["rc"] == 2 and "smoke, default, official" in r["err"], r["err"]
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "raw").exists()  # no Prefect API, no task
    cases = [
        (dict(profile="bogus"), "valid profiles are smoke, default, official"),
        (dict(profile="smoke", force=["train"]), "valid stages are collect, events, tables, train_l2, backfill"),
        (dict(profile="smoke", overrides={"collect": {"worlds": 0}}), "collect.worlds = 0 is out of range: valid [1, 100000]"),
        (dict(profile="smoke", overrides={"tables": {"nope": 1}}), "valid: horizon, version, static, temporal"),
        (dict(profile="smoke", overrides={"tables": {"horizon": 20}}), "tables.horizon = 20, train_l2.planner.horizon = 10"),
        (dict(profile="smoke", overrides={"train_l2": {"fit.lr": "fast"}}), "train_l2.fit.lr expects a number"),
        (dict(profile="smoke", overrides={"train_l3": {"fit.max_epochs": 0}}), "max_epochs must be >= 1"),
        (dict(profile="smoke", workers=0), "workers = 0 is out of range"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ParameterError, match=message.replace("[", r"\[").replace(".", r"\.")):
            make_plan(data=tmp_path, **kwargs)
        with pytest.raises(ParameterError):
            flow.fn(**kwargs)  # the flow's own first step, before any task
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_an_object_store_root_is_refused_by_the_commands_that_do_not_sync_with_it(tmp_path, monkeypatch, capsys):
    """Only the pipeline's commands sync with an object store (tests/test_store.py); the others say so, and an
    unknown protocol is named before anything runs."""
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HRLXF_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HRLXF_DATA", "s3://bucket/hrlxf")
    assert main(["audit"]) == 2
    assert "HRLXF_DATA='s3://bucket/hrlxf' is an object store, which only the pipeline's commands" in capsys.readouterr().err
    monkeypatch.setenv("HRLXF_DATA", "nosuch://bucket/hrlxf")
    assert main(["run", "--profile", "smoke"]) == 2
    assert "HRLXF_DATA='nosuch://bucket/hrlxf': Protocol not known: nosuch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written (no directory called s3:, no mirror)
    monkeypatch.setenv("HRLXF_DATA", f"file://{tmp_path}/root")
    from hrlxf_agent.paths import data_root

    assert data_root() == tmp_path / "root"
