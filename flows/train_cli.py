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


def _evaluate(args: argparse.Namespace) -> int:
    if args.mode == "tournament":
        return _tournament(args)
    from tqdm import tqdm

    from hrlxf_agent.paths import bundles_root
    from hrlxf_agent.registry import UnknownAgentError
    from tasks.candidates import CandidateError, parse_candidate
    from tasks.evaluate import EvalConfig, apply_latest, evaluate, markdown, resolve_candidates, units_dir

    config = EvalConfig(worlds=args.worlds, steps=args.steps, seed=args.seed, reference=args.reference,
                        workers=args.workers, agents_per_world=_range(args.factories),
                        candidates=_csv(args.candidates),
                        **({"opponents": _csv(args.opponents)} if args.opponents else {}))
    bundles = list(args.bundle or [])
    current = _current_latest() if args.promote else None
    out = Path(args.out) if args.out else data_root() / "reports" / "evaluation"
    try:
        config.validate()
        candidates = resolve_candidates(config, bundles + ([current] if current else []))
    except (CandidateError, UnknownAgentError, ValueError) as e:
        print(f"hrlxf evaluate: {e}", file=sys.stderr)
        return 2
    worlds_dir = units_dir(out / "worlds", config)
    new = [parse_candidate(b).label for b in bundles]
    latest_label = parse_candidate(current).label if current else None
    pairs = [(n, latest_label) for n in new if latest_label and n != latest_label]
    with tqdm(total=config.worlds * len(candidates), desc="evaluate worlds", unit="world") as bar:

        def progress(row: dict) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{row['agent']} w{row['world']} " + ("FAILED" if row["error"] else f"{row.get('score', 0):.3f}"))

        bar.update(config.worlds * len(candidates) - len(_missing(config, candidates, worlds_dir)))
        doc = evaluate(config, out, bundles + ([current] if current else []), worlds_dir=worlds_dir,
                       progress=progress, extra_pairs=pairs, latest=(latest_label, new) if args.promote else None)
    if args.promote:
        decision = apply_latest(doc, bundles_root())
        print(f"LATEST {'moved to' if decision['move'] else 'stays at'} {decision['to']}: {decision['reason']}")
    print(markdown(doc))
    print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'} and {out / 'forest.png'} (worlds: {worlds_dir})")
    return 0


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise SystemExit(f"hrlxf evaluate: --factories takes LO-HI (e.g. 8-12), got {text!r}") from None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _current_latest() -> str | None:
    from hrlxf_agent.bundle import BundleError, resolve_bundle

    try:
        path = resolve_bundle("latest")
    except BundleError:
        return None
    return str(path) if path is not None and (path / "manifest.json").is_file() else None


def _missing(config: Any, candidates: list, worlds_dir: Path) -> list:
    from tasks.evaluate import todo, units

    return todo(units(config, candidates, worlds_dir))


def _tournament(args: argparse.Namespace) -> int:
    from hrlxf_agent.bundle import BundleError
    from tasks.tournament import TournamentConfig, markdown, run_tournament

    config = TournamentConfig(configs=args.configs, steps=args.steps, seed=args.seed)
    out = Path(args.out) if args.out else data_root() / "reports" / "tournament"
    try:
        doc = run_tournament([Path(b) if b != "latest" else b for b in args.bundle or []], out, config)
    except (BundleError, ValueError) as e:
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
    ev.add_argument("--mode", choices=("paired", "tournament"), default="paired",
                    help="paired (default) or scml's anac2024_std with real rotations")
    ev.add_argument("--bundle", action="append", default=None,
                    help="bundle path or 'latest' (repeatable); a candidate, in front of --candidates")
    ev.add_argument("--candidates", default="rules,LitaAgentHS,PenguinAgent",
                    help="comma-separated: agent names, rules, untrained[:direct], bundle paths, latest, "
                         "VARIANTS:BUNDLE with VARIANTS from bc, nol2, nol4 joined by + (default: rules,LitaAgentHS,PenguinAgent)")
    ev.add_argument("--reference", default="PenguinAgent", help="paired differences are taken against it")
    ev.add_argument("--opponents", default=None, help="comma-separated opponents (default: the collection's experts)")
    ev.add_argument("--worlds", type=int, default=30, help="paired: world configurations (every candidate plays each)")
    ev.add_argument("--configs", type=int, default=4, help="tournament: configurations (x rotations of the competitors)")
    ev.add_argument("--steps", type=int, default=50)
    ev.add_argument("--factories", default="8-12", help="paired: factories per world, LO-HI (the default collection's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--workers", type=int, default=2, help="paired: parallel world processes")
    ev.add_argument("--promote", action="store_true",
                    help="paired: also play the current LATEST and point LATEST at the best --bundle only if it is "
                         "better with an interval that excludes 0")
    ev.add_argument("--out", default=None, help="output directory (default: DATA/reports/evaluation, or .../tournament)")
    ev.set_defaults(func=_evaluate)
