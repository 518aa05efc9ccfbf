"""`hrlxf train l2|backfill|l3|l4|all`, `hrlxf bundle build`, `hrlxf evaluate [--mode paired|tournament]`.

`hrlxf train` and `hrlxf bundle build` run the pipeline's own stages through its flow (`flows.cli.run_flow`
with ``only``): the same cache, outputs under DATA/models and DATA/bundles, the same LATEST rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hrlxf_agent.paths import data_root

#: the names of `hrlxf_models.executor.VARIANTS` (models/l3-<variant>), spelled out: the CLI loads no torch to parse
MODES = ("residual", "direct", "rules")


#: an L3 variant -> (its training stage, its bundle stage, the train_l3 config it needs)
L3_STAGE = {"residual": ("train_l3", "bundle", {}), "rules": ("train_l3_rules", "bundle_rules", {}),
            "direct": ("train_l3", "bundle", {"mode": "direct"})}


def train_runs(layer: str, modes: tuple[str, ...]) -> list[tuple[list[str], dict[str, dict]]]:
    """The flow runs `hrlxf train LAYER --modes ...` makes: (stages, overrides) each. The direct L3 is the
    train_l3 stage with another config, so it gets a run of its own (its L3 and bundle only) after the rest."""
    for mode in modes:
        if mode not in L3_STAGE:
            raise ValueError(f"--modes: unknown L3 variant {mode!r}: choose from {', '.join(L3_STAGE)}")

    def stages(variants: list[str], with_l2_l4: bool) -> list[str]:
        wanted = lambda *layers: layer in (*layers, "all")  # noqa: E731
        return ([s for s, lay in (("train_l2", "l2"), ("backfill", "backfill")) if with_l2_l4 and wanted(lay)]
                + [L3_STAGE[m][0] for m in variants if wanted("l3")]
                + (["train_l4"] if with_l2_l4 and wanted("l4") else [])
                + [L3_STAGE[m][1] for m in variants if layer == "all"])

    runs = [(stages([m for m in modes if m != "direct"], True), {})]
    if "direct" in modes:
        runs.append((stages(["direct"], False), {"train_l3": L3_STAGE["direct"][2]}))
    return [(s, o) for s, o in runs if s]


def _train(args: argparse.Namespace) -> int:
    from flows.cli import run_flow

    try:
        runs = train_runs(args.layer, tuple(m.strip() for m in args.modes.split(",") if m.strip()))
    except ValueError as e:
        print(f"hrlxf train: {e}", file=sys.stderr)
        return 2
    for stages, overrides in runs:
        rc, report = run_flow("train", "smoke" if args.smoke else "default", only=stages,
                              overrides=overrides or None, force=stages if args.force else None)
        if rc:
            return rc
        for stage in report["stages"]:
            print(f"{stage['stage']}: {_headline(stage['summary'])}")
    return 0


def _headline(result: dict[str, Any]) -> str:
    """One line of a training stage's validation figures (its run-report summary)."""
    if "final" in result:
        f = result["final"]
        return (f"val op accuracy {f['op_accuracy']:.3f} (majority {f['op_majority_baseline']:.3f}), "
                f"delta accuracy {f['delta_accuracy']:.3f}, q MAE {f['q_mae_items']:.2f} items, "
                f"p MAE {100 * f['p_mae_catalog_share']:.2f}% of catalog")
    if "val_mean_baseline" in result:
        return (f"val MSE {result['val']['mse']:.4f} (mean-goal baseline {result['val_mean_baseline']['mse']:.4f}), "
                f"q MAE {result['val']['q_mae_items']:.2f} items, p MAE {100 * result['val']['p_mae_catalog_share']:.2f}%")
    if "val" in result and "mae" in result["val"]:
        return f"val alpha MAE {result['val']['mae']:.4f}, rank agreement {result['val']['rank_agreement']:.3f}"
    return json.dumps(result)


def _bundle_build(args: argparse.Namespace) -> int:
    from flows.cli import run_flow
    from hrlxf_agent.bundle import set_latest
    from hrlxf_agent.paths import bundles_root
    from tasks.bundle import metrics_table

    _, stage, config = L3_STAGE[args.mode]
    rc, report = run_flow("bundle build", "smoke" if args.smoke else "default", only=[stage],
                          overrides={"train_l3": config} if config else None)
    if rc:
        return rc
    path = Path(report["bundles"][stage])
    if args.latest:
        set_latest(path, bundles_root())
    print(metrics_table(path))
    print(f"wrote {path}" + (" (LATEST)" if args.latest else ""))
    return 0


CANDIDATES_DEFAULT = "rules,LitaAgentHS,PenguinAgent"  # paired; league: tasks.tournament.LEAGUE_COMPETITORS


def _evaluate(args: argparse.Namespace) -> int:
    if args.mode in ("tournament", "league"):
        return _tournament(args)
    from hrlxf_agent.paths import bundles_root
    from hrlxf_agent.registry import UnknownAgentError
    from tasks.candidates import CandidateError, parse_candidate
    from tasks.evaluate import EvalConfig, apply_latest, parse_opponents, parse_sizes, parse_steps, resolve_candidates

    bundles = list(args.bundle or [])
    current = _current_latest() if args.promote else None
    out = Path(args.out) if args.out else data_root() / "reports" / "evaluation"
    try:  # every bad name, pool, size or length fails here, before any world
        lengths = parse_steps(args.steps or "50")
        configs = [EvalConfig(worlds=args.worlds, steps=n, seed=args.seed, reference=args.reference,
                              workers=args.workers, agents_per_world=parse_sizes(args.sizes), crn=args.crn,
                              candidates=_csv(args.candidates or CANDIDATES_DEFAULT),
                              opponents=parse_opponents(args.opponents))
                   for n in lengths]
        for config in configs:
            config.validate()
        candidates = resolve_candidates(configs[0], bundles + ([current] if current else []))
    except (CandidateError, UnknownAgentError, ValueError) as e:
        print(f"hrlxf evaluate: {e}", file=sys.stderr)
        return 2
    new = [parse_candidate(b).label for b in bundles]
    latest_label = parse_candidate(current).label if current else None
    pairs = [(n, latest_label) for n in new if latest_label and n != latest_label]
    pairs += [(n, c.label) for n in new for c in candidates if c.label not in (n, latest_label)]  # the bundle vs each
    for config in configs:  # one report per length; several lengths: out/steps-<n>/
        here = out if len(configs) == 1 else out / f"steps-{config.steps}"
        doc = _paired_run(config, candidates, here, bundles + ([current] if current else []), pairs,
                          (latest_label, new) if args.promote else None)
        if args.promote and config is configs[-1]:
            decision = apply_latest(doc, bundles_root())
            print(f"LATEST {'moved to' if decision['move'] else 'stays at'} {decision['to']}: {decision['reason']}")
    return 0


def _paired_run(config: Any, candidates: list, out: Path, bundles: list[str], pairs: list,
                latest: tuple | None) -> dict:
    """One paired evaluation with a progress bar; prints its report."""
    from tqdm import tqdm

    from tasks.evaluate import evaluate, markdown, todo, units, units_dir

    worlds_dir = units_dir(out / "worlds", config)
    every = units(config, candidates, worlds_dir)
    with tqdm(total=len(every), desc=f"evaluate units ({config.steps} steps)", unit="unit") as bar:

        def progress(row: dict) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{row['agent']} w{row['world']} " + ("FAILED" if row["error"] else f"{row.get('score', 0):.3f}"))

        bar.update(len(every) - len(todo(every)))
        doc = evaluate(config, out, bundles, worlds_dir=worlds_dir, progress=progress, extra_pairs=pairs, latest=latest)
    print(markdown(doc))
    print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'} and {out / 'forest.png'} (worlds: {worlds_dir})")
    return doc


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _current_latest() -> str | None:
    from hrlxf_agent.bundle import BundleError, resolve_bundle

    try:
        path = resolve_bundle("latest")
    except BundleError:
        return None
    return str(path) if path is not None and (path / "manifest.json").is_file() else None


def _tournament(args: argparse.Namespace) -> int:
    """``--mode tournament`` (scml's anac2024_std, 50 steps, our references and the 2025 winners) or ``--mode league``
    (the official settings: steps sampled 50-200, scml's sizes and time limits, the competitors given)."""
    from hrlxf_agent.bundle import BundleError
    from hrlxf_agent.registry import UnknownAgentError
    from tasks.tournament import LEAGUE_COMPETITORS, TournamentConfig, markdown, run_tournament

    text = args.steps or ("sampled" if args.mode == "league" else "50")
    try:
        steps = None if text == "sampled" and args.mode == "league" else int(text)
    except ValueError:
        print(f"hrlxf evaluate: --steps {text!r}: give one number (or 'sampled' in league mode)", file=sys.stderr)
        return 2
    if args.mode == "league":  # "rules" is LitaAgentHRL on its rule layers, audited, in the league's field
        field = tuple({"rules": "LitaAgentHRLRules"}.get(n, n) for n in _csv(args.candidates)) if args.candidates \
            else LEAGUE_COMPETITORS
        config = TournamentConfig.league(configs=args.configs, competitors=field, seed=args.seed, workers=args.workers,
                                         steps=steps)
    else:
        config = TournamentConfig(configs=args.configs, steps=steps, seed=args.seed)
    out = Path(args.out) if args.out else data_root() / "reports" / args.mode
    try:
        doc = run_tournament([Path(b) if b != "latest" else b for b in args.bundle or []], out, config,
                             dask_address=args.dask_address)
    except (BundleError, UnknownAgentError, ValueError, RuntimeError) as e:  # RuntimeError: no scored world
        print(f"hrlxf evaluate: {e}", file=sys.stderr)
        return 2
    print(markdown(doc))
    print(f"wrote {out / 'tournament.json'}, {out / 'tournament.md'} and {out / 'scores.png'}")
    return 0


def add_parsers(sub: Any, bundle_sub: Any) -> None:
    """Register the training subcommands on the `hrlxf` parser."""
    train = sub.add_parser("train", help="offline training stages (L2 BC, goal_hat backfill, L3 BC/AWR, L4 distillation), "
                                          "run and cached by the pipeline's flow")
    train.add_argument("layer", choices=("l2", "backfill", "l3", "l4", "all"), help="'all' also builds the bundles")
    train.add_argument("--modes", default="residual,rules",
                       help="L3 variants: residual (over L1's baseline), rules (residual over the rules), direct")
    train.add_argument("--smoke", action="store_true", help="the smoke profile: one epoch each, tiny minimum data (tests)")
    train.add_argument("--force", action="store_true", help="retrain even when the cache holds this training")
    train.set_defaults(func=_train, synced=True)

    build = bundle_sub.add_parser("build", help="assemble a bundle from the trained stages (DATA/models)")
    build.add_argument("--mode", choices=MODES, default="residual", help="which L3 to put in")
    build.add_argument("--smoke", action="store_true", help="the smoke profile's bundle settings")
    build.add_argument("--latest", action="store_true", help="point DATA/bundles/LATEST at it")
    build.set_defaults(func=_bundle_build, synced=True)

    ev = sub.add_parser("evaluate", help="paired evaluation: candidates in the same slots of the same worlds, "
                                         "differences against PenguinAgent with intervals (or scml's tournament)")
    ev.add_argument("--mode", choices=("paired", "tournament", "league"), default="paired",
                    help="paired (default); tournament: scml's anac2024_std with real rotations; league: the same at "
                         "the official settings, scored by scml's total scores with intervals and ranks")
    ev.add_argument("--bundle", action="append", default=None,
                    help="bundle path or 'latest' (repeatable); a candidate, in front of --candidates")
    ev.add_argument("--candidates", default=None,
                    help="comma-separated: agent names, rules, untrained[:direct], bundle paths, latest, "
                         f"VARIANTS:BUNDLE with VARIANTS from bc, nol2, nol4 joined by + (default: {CANDIDATES_DEFAULT}); "
                         "league: the field beside the bundles (default: rules and the 2025 finalists)")
    ev.add_argument("--reference", default="PenguinAgent", help="paired differences are taken against it")
    ev.add_argument("--opponents", default="collection",
                    help="paired: a pool (collection: the collection's experts; heldout: the std agents of scml-agents "
                         "that neither the collection nor the search's league plays; winners) or comma-separated agents")
    ev.add_argument("--worlds", type=int, default=30, help="paired: world configurations (every candidate plays each)")
    ev.add_argument("--configs", type=int, default=4, help="tournament, league: configurations (x rotations of the competitors)")
    ev.add_argument("--steps", default=None, help="steps per world (default 50); paired: several comma-separated "
                                                  "(50,100,200) give one report each under OUT/steps-N; league: "
                                                  "'sampled' by default (scml draws 50-200 per configuration)")
    ev.add_argument("--sizes", default="collection",
                    help="paired: factories per world: official (scml's own 2-3 processes of 4-8), collection (8-12) or LO-HI")
    ev.add_argument("--crn", choices=("daily", "once"), default="daily",
                    help="paired: reseed every generator from (world seed, day) each day (default), or once per world")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--workers", type=int, default=2, help="paired: parallel world processes; league: configurations at once")
    ev.add_argument("--dask-address", default=None, help="league / tournament: play the configurations on this Dask scheduler")
    ev.add_argument("--promote", action="store_true",
                    help="paired: also play the current LATEST and point LATEST at the best --bundle only if it is "
                         "better with an interval that excludes 0")
    ev.add_argument("--out", default=None, help="output directory (default: DATA/reports/evaluation, or .../tournament)")
    ev.set_defaults(func=_evaluate)
