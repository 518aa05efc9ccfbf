"""Fingerprints: a stage's code version follows the modules its code really runs (an edit elsewhere recomputes
nothing), and file digests are computed once across processes (a persistent digest cache keyed by the file's
path and stat), never kept for a file that changed.

The code-version tests edit a copy of the project's sources (``code_version.ROOT`` points at it), never the
real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import code_version as cv, digest_cache as dc, fingerprint as fp

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- code versions


@pytest.fixture(scope="module")
def stages():
    from flows.stages import STAGES

    return STAGES


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A copy of the project's packages (sources only) that code versions are computed on."""
    for pkg in cv.PROJECT_PACKAGES:
        if (cv.ROOT / pkg).is_dir():
            shutil.copytree(cv.ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    monkeypatch.setattr(cv, "ROOT", tmp_path)
    return tmp_path


def _versions(stages) -> dict[str, str]:
    return {s.name: cv.code_version(list(s.modules))["digest"] for s in stages}


def _edit(tree: Path, module: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = tree / module.replace(".", "/") / "__init__.py"
    path.write_text(path.read_text() + "\n# an edit\n")


def _recomputed(tree: Path, stages, module: str) -> set[str]:
    before = _versions(stages)
    _edit(tree, module)
    after = _versions(stages)
    return {name for name in before if before[name] != after[name]}


#: the stages that can play LitaAgentH / LitaAgentHS: they resolve agents by name through the registry
#: (collect's experts, evaluate's candidates and opponents, finetune's league and its evaluation)
PLAYS_AGENTS = {"collect", "evaluate", "finetune"}


def test_an_edit_to_penguin_recomputes_only_the_stages_that_can_play_it(tree, stages):
    assert _recomputed(tree, stages, "hrlxf_agent.penguin") == PLAYS_AGENTS
    # the same for the HRL agent (played by name: "LitaAgentHRL" in the registry, "untrained:rules", bundles)
    assert _recomputed(tree, stages, "hrlxf_agent.hrl") == PLAYS_AGENTS


def test_an_edit_to_micro_recomputes_the_tables_and_what_imports_them(tree, stages):
    importers = {s.name for s in stages if "tasks.micro" in cv.module_closure(list(s.modules))}
    recomputed = _recomputed(tree, stages, "tasks.micro")
    assert recomputed == importers
    # tables builds the micro table, L3 reads it with micro's schema; nothing that plays worlds or reads
    # only the events, L4's table or trained models imports it
    assert {"tables", "train_l3", "train_l3_rules"} <= recomputed
    assert not recomputed & {"collect", "events", "train_l4", "bundle", "bundle_rules", "finetune", "evaluate"}


def test_module_level_code_of_a_parent_package_counts_but_not_its_lazy_getattr(tree, stages):
    closure = {s.name: cv.module_closure(list(s.modules)) for s in stages}
    # hrlxf_agent/__init__.py runs whenever any hrlxf_agent module is imported: every stage that uses one
    users = {name for name, mods in closure.items() if any(m.startswith("hrlxf_agent.") for m in mods)}
    assert _recomputed(tree, stages, "hrlxf_agent") == users
    # ... but its __getattr__ (which imports penguin and hrl) runs only where an attribute of it is imported
    assert {name for name, mods in closure.items() if "hrlxf_agent.penguin" in mods} == PLAYS_AGENTS
    # a module only a constant is taken from counts its module-level code, not what its functions import:
    # events takes collect's DONE, and does not play the experts collect resolves through the registry
    levels = cv._closure(["tasks.events"])
    assert levels["tasks.collect"] == cv.LOADED and levels["tasks.events"] == cv.USED
    assert "hrlxf_agent.registry" in levels and levels["hrlxf_agent.registry"] == cv.LOADED


def test_imports_inside_functions_of_the_code_a_stage_calls_count(tree):
    # tasks.collect imports the tracker inside the function that plays a world
    (tree / "tasks" / "stage_a.py").write_text("def run():\n    from tasks.stage_b import helper\n    return helper()\n")
    (tree / "tasks" / "stage_b.py").write_text("X = 1\n\n\ndef helper():\n    from hrlxf_agent import penguin\n"
                                               "    return penguin\n")
    assert "hrlxf_agent.penguin" in cv.module_closure(["tasks.stage_a"])
    # a constant taken from a module does not run its functions; a function taken from it does
    (tree / "tasks" / "stage_c.py").write_text("from tasks.stage_b import X\n\n\ndef run():\n    return X\n")
    assert "hrlxf_agent.penguin" not in cv.module_closure(["tasks.stage_c"])
    # an attribute of a package that its module __getattr__ makes: the lazy imports count
    (tree / "tasks" / "stage_d.py").write_text("def run():\n    from hrlxf_agent import LitaAgentHS\n    return LitaAgentHS\n")
    assert "hrlxf_agent.penguin" in cv.module_closure(["tasks.stage_d"])
    # module-level code that calls a function of its own module at import: that function's imports run
    (tree / "tasks" / "stage_e.py").write_text("def _load():\n    from hrlxf_agent.hrl import LitaAgentHRL\n"
                                               "    return LitaAgentHRL\n\n\nAGENT = _load()\n")
    (tree / "tasks" / "stage_f.py").write_text("from tasks import stage_e\n\n\ndef run():\n    return 1\n")
    assert "hrlxf_agent.hrl" in cv.module_closure(["tasks.stage_f"])
    # a dynamic import named by a string (the registry's "module:Class")
    (tree / "tasks" / "stage_g.py").write_text("import importlib\n\nWHO = 'hrlxf_agent.penguin:LitaAgentH'\n\n\n"
                                               "def run():\n    m, _, c = WHO.partition(':')\n"
                                               "    return getattr(importlib.import_module(m), c)\n")
    assert "hrlxf_agent.penguin" in cv.module_closure(["tasks.stage_g"])


def test_the_race_code_counts_in_finetune_only(tree, stages):
    assert _recomputed(tree, stages, "hrlxf_rl.racing") == {"finetune"}


# ------------------------------------------------------------------------------- the digest cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh digest cache; files count as settled at once (their digests are kept)."""
    path = tmp_path / "cache" / "digests.sqlite"
    _isolate(monkeypatch)
    dc.use_digest_cache(path)
    monkeypatch.setattr(dc, "SETTLED_NS", -10**18)
    return path


def _isolate(monkeypatch) -> None:
    """This test's digest cache settings and memory are undone after it."""
    for name in ("_cache_setting", "_store"):
        monkeypatch.setattr(dc, name, getattr(dc, name))
    monkeypatch.setattr(dc, "_digests", {})


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_digest_is_read_once_across_processes(tmp_path, cache):
    f = tmp_path / "world.jsonl"
    f.write_bytes(b"x" * 100_000)
    reads = dc.stats["read"]
    assert fp.file_digest(f) == _sha(b"x" * 100_000) and dc.stats["read"] == reads + 1
    assert fp.file_digest(f) == _sha(b"x" * 100_000) and dc.stats["read"] == reads + 1  # this process
    dc._digests.clear()  # as a new process would start
    assert fp.file_digest(f) == _sha(b"x" * 100_000) and dc.stats["read"] == reads + 1  # from the cache
    # and a real second process: it reads nothing (`units` writes what it read to the cache after each artifact)
    dc.flush_digests()
    code = ("import sys; from pathlib import Path; from tasks import digest_cache as d, fingerprint as f;"
            "d.use_digest_cache(sys.argv[1]); print(f.file_digest(Path(sys.argv[2])), d.stats['read'], d.stats['cached'])")
    out = subprocess.run([sys.executable, "-c", code, str(cache), str(f)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout.split()
    assert out == [_sha(b"x" * 100_000), "0", "1"]


def test_a_changed_file_is_read_again(tmp_path, cache):
    f = tmp_path / "table.parquet"
    f.write_bytes(b"a" * 64)
    assert fp.file_digest(f) == _sha(b"a" * 64)
    st = f.stat()
    f.write_bytes(b"b" * 64)  # the same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime
    dc._digests.clear()
    assert fp.file_digest(f) == _sha(b"b" * 64)
    # the same size and even the same mtime: the ctime (which nothing can set back) still differs
    st = f.stat()
    f.write_bytes(b"c" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    dc._digests.clear()
    assert fp.file_digest(f) == _sha(b"c" * 64)
    # a file replaced by another (a new inode) with the same size and mtime
    g = tmp_path / "new.parquet"
    g.write_bytes(b"d" * 64)
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(g, f)
    assert fp.file_digest(f) == _sha(b"d" * 64)


def test_a_file_changed_just_now_is_not_remembered(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(dc, "SETTLED_NS", 2_000_000_000)
    f = tmp_path / "fresh.parquet"
    f.write_bytes(b"new")
    reads = dc.stats["read"]
    fp.file_digest(f)
    fp.file_digest(f)
    assert dc.stats["read"] == reads + 2  # its digest is kept once its timestamps are 2 s old


def test_an_unusable_cache_is_left_out(tmp_path, monkeypatch):
    _isolate(monkeypatch)
    (tmp_path / "not-a-dir").write_text("")
    dc.use_digest_cache(tmp_path / "not-a-dir" / "digests.sqlite")
    f = tmp_path / "a"
    f.write_bytes(b"abc")
    assert fp.file_digest(f) == _sha(b"abc")
    assert dc.digest_cache_path() is None  # off for this process


def test_the_default_cache_is_per_user_and_can_be_turned_off(monkeypatch, tmp_path):
    _isolate(monkeypatch)
    monkeypatch.setattr(dc, "_cache_setting", dc._UNSET)
    monkeypatch.delenv("HRLXF_DIGEST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dc.digest_cache_path() == tmp_path / "hrlxf" / "digests.sqlite"
    monkeypatch.setenv("HRLXF_DIGEST_CACHE", "off")
    assert dc.digest_cache_path() is None
    monkeypatch.setenv("HRLXF_DIGEST_CACHE", str(tmp_path / "d.sqlite"))
    assert dc.digest_cache_path() == tmp_path / "d.sqlite"
