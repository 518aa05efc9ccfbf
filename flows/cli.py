"""`hrlxf`: one command line, a subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from flows.train_cli import add_parsers as add_train_parsers
from hrlxf_agent.paths import data_root


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _audit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hrlxf_agent.registry import UnknownAgentError
    from tasks.audit import AuditConfig, markdown_table, run_audit

    agents = _csv(args.agents)
    params = {}
    if args.bundle:
        from hrlxf_agent.bundle import BundleError, load_bundle

        try:
            path = str(load_bundle(args.bundle).path.resolve())  # fails here, before any world, if unusable
        except BundleError as e:
            print(f"hrlxf audit: {e}", file=sys.stderr)
            return 2
        params = {a: {"bundle": path} for a in agents if a == "LitaAgentHRL"}
    config = AuditConfig(
        agents=agents, opponents=_csv(args.opponents), worlds=args.worlds,
        steps=args.steps, seed=args.seed, workers=args.workers, agent_params=params,
    )
    try:
        config.validate()
    except (UnknownAgentError, ValueError) as e:
        print(f"hrlxf audit: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data_root() / "reports" / "audit"
    total = config.worlds * len(config.agents)
    with tqdm(total=total, desc="audit worlds", unit="world") as bar:

        def progress(row: dict) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{row['agent']} w{row['world']} " + ("FAILED" if row["error"] else f"{row.get('score', 0):.3f}"))

        doc = run_audit(config, out, progress)
    print(markdown_table(doc))
    print(f"wrote {out / 'audit.json'}, {out / 'audit.md'}, {out / 'decisions.parquet'} and the tracker logs under {out / 'worlds'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrlxf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="unsafe-action audit of agents in real std worlds against the 2025 winners")
    audit.add_argument("--agents", default="PenguinAgent,LitaAgentH,LitaAgentHS", help="comma-separated agents to audit")
    audit.add_argument("--opponents", default="AS0,XenoSotaAgent,UltraSuperMiracleSoraFinalAgentZ", help="comma-separated opponents")
    audit.add_argument("--worlds", type=int, default=8, help="world configurations (each audited agent plays every one)")
    audit.add_argument("--steps", type=int, default=50, help="simulation steps per world")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel world processes")
    audit.add_argument("--out", default=None, help="output directory (default: DATA/reports/audit)")
    audit.add_argument("--bundle", default=None, help="bundle for LitaAgentHRL: a path or 'latest' (default: heuristic)")
    audit.set_defaults(func=_audit)

    bundle = sub.add_parser("bundle", help="bundle tools")
    bsub = bundle.add_subparsers(dest="bundle_command", required=True)
    untrained = bsub.add_parser("untrained", help="write a bundle with random weights (exercises the neural path)")
    untrained.add_argument("--mode", choices=("residual", "direct"), default="residual", help="L3 output mode")
    untrained.add_argument("--base", choices=("baseline", "rules"), default="baseline",
                           help="residual L3's base: L1's baseline offer, or the rule executor's (plays as the rules)")
    untrained.add_argument("--seed", type=int, default=0)
    untrained.add_argument("--out", default=None, help="bundle directory (default: DATA/bundles/untrained-<mode>)")
    untrained.add_argument("--latest", action="store_true", help="also point DATA/bundles/LATEST at it")
    untrained.set_defaults(func=_bundle_untrained)
    knobs = bsub.add_parser("knobs", help="a bundle with the search's knobs set (theta in knob units; 0 is the start)")
    knobs.add_argument("--from", dest="start", default="untrained:rules",
                       help="the starting bundle: untrained:rules (plays as the rules), latest or a directory")
    knobs.add_argument("--set", dest="settings", action="append", required=True, metavar="KNOB=THETA",
                       help="e.g. l2.p_sell@first=-2 (the searched bundle of docs/online-learning.md); repeatable")
    knobs.add_argument("--out", default=None, help="where the bundle directory goes (default: DATA/bundles)")
    knobs.set_defaults(func=_bundle_knobs)
    add_train_parsers(sub, bsub)

    collect = sub.add_parser("collect", help="forensics tournaments: expert worlds with every agent tracked (the flow's collect stage)")
    collect.add_argument("--profile", choices=("smoke", "default", "official"), default="smoke")
    collect.add_argument("--run-id", default=None, help="name of the run under DATA/raw (default: the profile name)")
    collect.add_argument("--workers", type=int, default=None, help="parallel world processes (default: the profile's)")
    collect.add_argument("--dask-address", default=None, help="run the worlds on this Dask scheduler (tcp://host:port)")
    collect.set_defaults(func=_collect, synced=True)

    events = sub.add_parser("events", help="raw tracker logs -> typed Parquet event tables (the flow's events stage)")
    events.add_argument("--force", action="store_true", help="convert every world again")
    events.set_defaults(func=_events, synced=True)

    tables = sub.add_parser("tables", help="raw logs -> event tables -> macro, micro and l4_distill training tables "
                                           "(the flow's events and tables stages, per world incremental)")
    tables.add_argument("--force", action="store_true", help="convert and build every world again")
    tables.set_defaults(func=_tables, synced=True)

    run = sub.add_parser("run", help="the whole pipeline as a cached, resumable Prefect flow: collect -> ... -> evaluate")
    run.add_argument("--profile", default="default", help="smoke, default or official")
    run.add_argument("--force", nargs="+", action="extend", default=[], metavar="STAGE", help="stages to recompute from scratch")
    run.add_argument("--dask-address", default=None, help="play the collect worlds on this Dask scheduler (tcp://host:port)")
    run.add_argument("--set", dest="settings", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                     help="a stage setting (JSON value), e.g. train_l2.fit.max_epochs=5")
    run.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    run.add_argument("--run-id", default=None, help="the collect run under DATA/raw (default: the profile name)")
    run.add_argument("--workers", type=int, default=None, help="local world processes (default: the profile's)")
    run.set_defaults(func=_run, synced=True)

    ft = sub.add_parser("finetune", help="online learning in real worlds (L3 MAPPO, L2 PPO, a self-play league) -> a bundle")
    ft.add_argument("--from", dest="start", default=None,
                    help="starting bundle: a directory, 'latest' or 'untrained:rules' (default: the profile's, untrained:rules)")
    ft.add_argument("--iterations", type=int, default=None, help="iterations (default: the profile's)")
    ft.add_argument("--profile", choices=("smoke", "default", "long", "search", "screen"), default="default",
                    help="smoke: a minute of short worlds; default: the pipeline's bounded budget; long: real training "
                         "(PPO); search: the paired antithetic search over a few knobs (hrlxf_rl.search); screen: "
                         "the gated axis search on L2's goal knobs")
    ft.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                    help="a config setting (JSON value), e.g. l3.lr=3e-4 or league.self_play=0.5")
    ft.add_argument("--run-dir", default=None, help="where the run lives (default: DATA/finetune/<key of config and start>)")
    ft.add_argument("--workers", type=int, default=None, help="rollout world processes (default: the profile's)")
    ft.add_argument("--dask-address", default=None, help="play the rollout worlds on this Dask scheduler (tcp://host:port)")
    ft.set_defaults(func=_finetune)

    rc = sub.add_parser("race", help="the racing search over the strategy template (the pipeline's finetune stage) "
                                     "-> a bundle, when a change is confirmed")
    rc.add_argument("--from", dest="start", default=None, help="'rules' (default), 'latest' or a bundle directory")
    rc.add_argument("--profile", choices=("smoke", "default", "long"), default="default",
                    help="smoke: one knob, 3 short worlds; default: the pipeline's budget; long: every default knob, "
                         "two rounds, the full gate (hours)")
    rc.add_argument("--iterations", type=int, default=None, help="blocks raced (default: the profile's)")
    rc.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                    help="a config setting (JSON value), e.g. gate.batch=12 or knobs='[\"limit.margin\"]'")
    rc.add_argument("--run-dir", default=None, help="where the race lives (default: DATA/race/<key of config>)")
    rc.add_argument("--workers", type=int, default=None, help="world processes (default: the profile's)")
    rc.add_argument("--dask-address", default=None, help="play the worlds on this Dask scheduler (tcp://host:port)")
    rc.set_defaults(func=_race)

    analyze = sub.add_parser("analyze", help="a read-only web app over the data root (collections, evaluations, audit, training)")
    analyze.add_argument("--data", default=None, help="data root (default: DATA)")
    analyze.add_argument("--host", default="127.0.0.1")
    analyze.add_argument("--port", type=int, default=8050)
    analyze.set_defaults(func=_analyze)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    for name, text in (("agent", "world wall time with LitaAgentHRL vs PenguinAgent in the same slots"),
                       ("tracker", "world wall time with every agent tracked vs untracked")):
        b = bsub.add_parser(name, help=text)
        b.add_argument("--worlds", type=int, default=4)
        b.add_argument("--steps", type=int, default=50)
        b.add_argument("--seed", type=int, default=0)
        b.add_argument("--out", default=None, help=f"where to write bench_{name}.json (default: DATA/reports/bench)")
        if name == "agent":
            b.add_argument("--bundle", default=None, help="also time LitaAgentHRL with this trained bundle (path or 'latest')")
        b.set_defaults(func=_bench, bench=name)
    b = bsub.add_parser("analyzer", help="server-side render time of each analyzer view on a data root")
    b.add_argument("--data", default=None, help="data root (default: DATA)")
    b.add_argument("--runs", type=int, default=5, help="renders per view (the median is reported)")
    b.add_argument("--out", default=None, help="where to write bench_analyzer.json (default: DATA/reports/bench)")
    b.set_defaults(func=_bench, bench="analyzer")
    b = bsub.add_parser("tables", help="events -> macro -> micro -> l4_distill on 1x, 4x, 16x of a collected run")
    b.add_argument("--run-id", default="default", help="collected run under DATA/raw")
    b.add_argument("--scales", default="1,4,16", help="multiples of the run's worlds to time (default 1,4,16)")
    b.add_argument("--baseline", default=None, help="a checkout of older code to time beside this one")
    b.add_argument("--baseline-scales", default="1", help="the scales the baseline is timed at (default 1)")
    b.add_argument("--baseline-mapped", action="store_true",
                   help="the baseline maps its worlds on --workers too (a checkout whose stages map them)")
    b.add_argument("--workers", type=int, default=2, help="worker processes of this code's events and tables (default 2)")
    b.add_argument("--out", default=None, help="where to write bench_tables.json (default: DATA/reports/bench)")
    b.set_defaults(func=_bench, bench="tables")
    b = bsub.add_parser("loading", help="the trainings' loaders on 1x, 4x, 16x of a lake, in memory or memory-mapped")
    b.add_argument("--lake", default=None, help="the lake to copy (default: DATA/lake)")
    b.add_argument("--scales", default="1,4,16", help="copies of the lake's worlds to load (default 1,4,16)")
    b.add_argument("--loaders", default="l2,l3,l4", help="which trainings' loaders (default l2,l3,l4)")
    b.add_argument("--out", default=None, help="where to write bench_loading.json (default: DATA/reports/bench)")
    b.set_defaults(func=_bench, bench="loading")
    b = bsub.add_parser("store", help="a data root pushed to and pulled from an object store, beside fsspec's copy")
    b.add_argument("--data", default=None, help="the data root to copy (default: DATA)")
    b.add_argument("--out", default=None, help="where to write bench_store.json (default: DATA/reports/bench)")
    b.set_defaults(func=_bench, bench="store")
    return parser


def with_settings(config: Any, settings: list[str], stage: str) -> Any:
    """``config`` with every ``--set FIELD=VALUE`` applied (VALUE read as JSON, else as a string)."""
    import json

    from flows.stages import ParameterError, override

    for item in settings:
        field, sep, value = item.partition("=")
        if not sep:
            raise ParameterError(f"--set {item!r}: give FIELD=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        config = override(config, field, parsed, stage)
    return config


def _race(args: argparse.Namespace) -> int:
    import hashlib
    import json
    from dataclasses import asdict, replace

    from flows.stages import ParameterError
    from hrlxf_agent.bundle import BundleError, load_bundle
    from tasks.race import PROFILES, run_race

    given = {k: v for k, v in (("iterations", args.iterations), ("workers", args.workers)) if v is not None}
    try:
        config = with_settings(PROFILES[args.profile](**given), args.settings, "race")
        if args.start not in (None, "rules"):
            config = replace(config, start=str(load_bundle(args.start).path.resolve()))
        config.validate()
    except (ParameterError, BundleError, ValueError) as e:
        print(f"hrlxf race: {e}", file=sys.stderr)
        return 2
    what = json.dumps({k: v for k, v in asdict(config).items() if k != "workers"}, sort_keys=True, default=str)
    run = Path(args.run_dir) if args.run_dir else data_root() / "race" / hashlib.sha256(what.encode()).hexdigest()[:12]
    from tasks.parallel import prefect_api

    with prefect_api():  # one API for every look's worlds
        doc = run_race(config, run, out_root=data_root() / "bundles", dask_address=args.dask_address)
    committed = [e for e in doc["iterations"] if e["decision"] == "committed"]
    print(f"race: {len(doc['iterations'])} blocks, {doc['units_played']} units played in {doc['seconds']} s, "
          f"{len(committed)} change(s) committed; {doc['family_wise_error']}")
    for e in doc["iterations"]:
        print(f"  it{e['iteration']} {', '.join(e['block'])}: {e['decision']}")
    print(f"strategy: {json.dumps(doc['strategy'])}\ndecisions: {run / 'decisions.json'} (decisions.png)")
    print(f"bundle: {doc['bundle']}" if doc["bundle"] else "bundle: none (nothing committed: the start stands)")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from flows.stages import ParameterError
    from tasks.finetune import PROFILES, FinetuneError, finetune, run_key, start_bundle

    given = {k: v for k, v in (("start", args.start), ("iterations", args.iterations), ("workers", args.workers))
             if v is not None}
    config = PROFILES[args.profile](**given)
    try:
        config = with_settings(config, args.settings, "finetune")
        config.validate()
        start = start_bundle(config.start, data_root())
        run = Path(args.run_dir) if args.run_dir else data_root() / "finetune" / f"{start.name}-{run_key(config, start)}"
        from tasks.parallel import prefect_api

        with prefect_api():  # one API for every iteration's rollouts (else each would start a server, ~8 s)
            summary = finetune(config, run, data_root(), dask_address=args.dask_address)
    except (ParameterError, FinetuneError, ValueError) as e:
        print(f"hrlxf finetune: {e}", file=sys.stderr)
        return 2
    last = summary["last"]
    print(f"finetune: {summary['iterations']} iterations, {summary['worlds']} worlds ({summary['dropped']} dropped) in "
          f"{summary['seconds']} s; unsafe {summary['unsafe']}, illegal {summary['illegal']}")
    for k in ("eval/vs_penguin", "eval/vs_start"):
        if last.get(k) is not None:
            hw = last.get(f"{k}_half_width")
            print(f"  {k.removeprefix('eval/')}: {last[k]:+.4f}" + (f" ± {hw:.4f}" if hw is not None else "")
                  + f" over {last.get('eval/worlds')} paired worlds")
    print(f"run: {summary['run']} (curves.png, metrics.jsonl, tb/)\nbundle: {summary['bundle']}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import importlib
    import json

    module = importlib.import_module(f"tasks.bench_{args.bench}")
    if args.bench == "tables":
        scales = [tuple(int(x) for x in text.split(",")) for text in (args.scales, args.baseline_scales)]
        config = module.Config(raw=str(data_root() / "raw"), run_id=args.run_id, scales=scales[0],
                               baseline=args.baseline, baseline_scales=scales[1], workers=args.workers,
                               baseline_mapped=args.baseline_mapped)
    elif args.bench == "loading":
        config = module.Config(lake=args.lake or str(data_root() / "lake"),
                               scales=tuple(int(x) for x in args.scales.split(",")),
                               loaders=tuple(args.loaders.split(",")))
    elif args.bench == "analyzer":
        config = module.Config(data=str(Path(args.data) if args.data else data_root()), runs=args.runs)
    elif args.bench == "store":
        config = module.Config(data=str(Path(args.data) if args.data else data_root()))
    else:
        extra = {"bundle": args.bundle} if getattr(args, "bundle", None) else {}
        config = module.Config(worlds=args.worlds, steps=args.steps, seed=args.seed, **extra)
    doc = module.run_bench(config)
    out = Path(args.out) if args.out else data_root() / "reports" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{args.bench}.json").write_text(json.dumps(doc, indent=2))
    print(module.render(doc))
    print(f"wrote {out / f'bench_{args.bench}.json'}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    """Serve the analyzer until Ctrl-C."""
    root = Path(args.data) if args.data else data_root()
    if not root.is_dir():
        print(f"hrlxf analyze: no data root at {root} (give --data DIR, or fill it with `make run`)", file=sys.stderr)
        return 2
    from hrlxf_analyzer.app import create_app

    print(f"hrlxf analyze: serving {root.resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        create_app(root).run(host=args.host, port=args.port, debug=False)
    except KeyboardInterrupt:
        pass
    return 0


def _collect(args: argparse.Namespace) -> int:
    """The flow's collect stage (a run of expert worlds under DATA/raw/<run id>); exit code 1 if a world failed."""
    rc, report = run_flow("collect", args.profile, until="collect", run_id=args.run_id, workers=args.workers,
                          dask_address=args.dask_address)
    if rc:
        return rc
    from tasks.collect import render

    summary = json.loads((Path(report["data"]) / report["stages"][0]["outputs"]["raw_run"] / "summary.json").read_text())
    print(render(summary))
    return 0 if summary["worlds_failed"] == 0 else 1


def _events(args: argparse.Namespace) -> int:
    """The flow's events stage; then what was quarantined."""
    return _lake_stages("events", ["events"], args.force)


def _tables(args: argparse.Namespace) -> int:
    """The flow's events and tables stages; then what every table holds and what was quarantined."""
    return _lake_stages("tables", ["events", "tables"], args.force)


def _lake_stages(command: str, stages: list[str], force: bool) -> int:
    import pyarrow.parquet as pq

    rc, _ = run_flow(command, "default", only=stages, force=stages if force else None)
    if rc:
        return rc
    lake = data_root() / "lake"
    for name in ("macro", "micro", "l4_distill") if "tables" in stages else ():
        files = sorted((lake / name).glob("*/*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        print(f"{name}: the table holds {len(files)} worlds, {rows} rows")
    quarantine = lake / "events" / "quarantine.parquet"
    held = pq.read_table(quarantine).to_pylist() if quarantine.exists() else []
    print(f"quarantined worlds: {len(held)}")
    for q in held:
        print(f"  {q['run_id']}/{q['world_id']}: {q['reason']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Validate everything, then the `hrlxf` flow on Prefect's ephemeral API (or the server PREFECT_API_URL names)."""
    overrides: dict[str, dict] = {}
    for item in args.settings:
        key, eq, text = item.partition("=")
        stage, dot, field = key.partition(".")
        if not (eq and dot and field):
            print(f"hrlxf run: --set {item!r}: write STAGE.FIELD=VALUE", file=sys.stderr)
            return 2
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides.setdefault(stage, {})[field] = value
    rc, _ = run_flow("run", profile=args.profile, force=args.force or None, overrides=overrides or None,
                     until=args.until, run_id=args.run_id, workers=args.workers, dask_address=args.dask_address)
    return rc


def run_flow(command: str, profile: str, only: list[str] | None = None, **params: Any) -> tuple[int, dict | None]:
    """The `hrlxf` flow (all of it, or ``only`` some stages, reading what earlier runs made) with its plan
    validated first, on Prefect's ephemeral API unless PREFECT_API_URL names a server; prints each stage's
    state and where its outputs are. Every stage command goes through here: one orchestrator, one cache,
    one LATEST rule. Returns (exit code, run report)."""
    data = data_root().resolve()
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(data / "prefect" / "home"))  # the run history stays with the data
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.stages import ParameterError, StageFailed, make_plan

    plan_params = {k: params.get(k) for k in ("force", "overrides", "until", "run_id", "workers")}
    try:
        make_plan(profile, **plan_params, only=only)
    except ParameterError as e:
        print(f"hrlxf {command}: {e}", file=sys.stderr)
        return 2, None
    Path(os.environ.get("PREFECT_HOME", data / "prefect" / "home")).mkdir(parents=True, exist_ok=True)
    from flows.pipeline import DataRootBusy, hrlxf  # imports Prefect (which reads PREFECT_HOME)
    from tasks.store import StoreError
    from tasks.parallel import prefect_api
    from tasks.report import md_table

    try:
        with prefect_api():
            report = hrlxf(profile=profile, **plan_params, only=only, dask_address=params.get("dask_address"))
    except StageFailed as e:
        print(f"hrlxf {command}: {e}", file=sys.stderr)
        print(f"earlier stages' outputs and caches are kept; report: {data / 'reports' / 'pipeline' / 'last.json'}", file=sys.stderr)
        return 1, None
    except (DataRootBusy, StoreError, ParameterError) as e:  # (ParameterError: a store's run of another recipe)
        print(f"hrlxf {command}: {e}", file=sys.stderr)
        return 2, None
    print("\n".join(md_table(["stage", "state", "seconds", "peak MB", "outputs"],
                             [[s["stage"], s["state"], s["seconds"], s["peak_mb"], ", ".join(s["outputs"].values())]
                              for s in report["stages"]])))
    for name, path in report["bundles"].items():
        print(f"{name}: {path}")
    if report["latest"]:
        print(f"LATEST: {'moved to' if report['latest']['move'] else 'stays at'} {report['latest']['to']} "
              f"({report['latest']['reason']})")
    print(f"LATEST bundle: {report['bundle'] or 'none'}")
    if only is None or "evaluate" in only:
        print(f"evaluation: {report['evaluation'] or 'not run (stopped before the evaluate stage)'}")
    if report["evaluation"]:
        print(f"            {Path(report['evaluation']).with_suffix('.md')} (the table), "
              f"{Path(report['evaluation']).parent / 'forest.png'} (the paired differences)")
    print(f"report: {report['report']} ({report['seconds']} s)")
    return 0, report


def _bundle_untrained(args: argparse.Namespace) -> int:
    from hrlxf_agent.bundle import set_latest, write_untrained_bundle
    from hrlxf_agent.paths import bundles_root

    out = Path(args.out) if args.out else bundles_root() / f"untrained-{args.mode}"
    path = write_untrained_bundle(out, mode=args.mode, seed=args.seed, base=args.base)
    if args.latest:
        set_latest(path)
    print(f"wrote {path}" + (" (LATEST)" if args.latest else ""))
    return 0


def _bundle_knobs(args: argparse.Namespace) -> int:
    from hrlxf_agent.bundle import BundleError
    from hrlxf_agent.paths import bundles_root
    from tasks.bundle import knob_bundle
    from tasks.candidates import CandidateError, parse_candidate

    settings: dict[str, float] = {}
    try:
        for text in args.settings:
            knob, sep, value = text.partition("=")
            try:
                settings[knob.strip()] = float(value)
            except ValueError:
                raise ValueError(f"--set {text!r}: give KNOB=THETA with a number") from None
        start = parse_candidate(args.start).bundle  # untrained:rules written on first use, latest resolved
        if start is None:
            raise ValueError(f"--from {args.start!r} is not a bundle (untrained:rules, latest or a bundle directory)")
        path = knob_bundle(Path(start), settings, Path(args.out) if args.out else bundles_root())
    except (BundleError, CandidateError, ValueError) as e:
        print(f"hrlxf bundle knobs: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from hrlxf_agent.paths import DataRootError, store_url

    args = build_parser().parse_args(argv)
    try:
        data_root()
        if (url := store_url()) is not None:
            if not getattr(args, "synced", False):
                raise DataRootError(f"HRLXF_DATA={url!r} is an object store, which only the pipeline's commands "
                                    f"(run, collect, events, tables, train, bundle build) sync with; give this "
                                    f"command a directory (this host's mirror of the store is {data_root()})")
            from tasks.store import data_store

            data_store().fs  # the protocol is known and its package installed
    except DataRootError as e:
        print(f"hrlxf {args.command}: {e}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
