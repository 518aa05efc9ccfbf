"""`hrlxf train l2|l3|l4|all`, `hrlxf backfill`, `hrlxf bundle build`, `hrlxf evaluate [--mode paired|tournament]`.

The stages run directly, without Prefect (the `hrlxf run` flow orchestrates
and caches them); outputs go under DATA/models unless told otherwise.
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


def models_root(args: argparse.Namespace) -> Path:
    return Path(args.models) if getattr(args, "models", None) else data_root() / "models"


def lake_of(args: argparse.Namespace) -> Path:
    return Path(args.lake) if getattr(args, "lake", None) else data_root() / "lake"


def _preset(cls: type, smoke: bool, **kwargs: Any) -> Any:
    return cls.smoke(**kwargs) if smoke else cls(**kwargs)


def _stage_errors() -> tuple[type, ...]:
    from tasks.training import DivergedError, TrainingDataError

    return (TrainingDataError, DivergedError, ValueError)


def run_train(layer: str, lake: Path, models: Path, smoke: bool, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """One training stage (or all of them, then a bundle per L3 variant); returns what each wrote."""
    from hrlxf_models.executor import VARIANTS
    from tasks.backfill import BackfillConfig, backfill
    from tasks.bundle import BundleConfig, assemble
    from tasks.train_l2 import L2Config, train_l2
    from tasks.train_l3 import L3Config, train_l3
    from tasks.train_l4 import L4Config, train_l4

    done: dict[str, Any] = {}
    if layer in ("l2", "all"):
        done["l2"] = train_l2(lake, models / "l2", _preset(L2Config, smoke))
    if layer in ("backfill", "all"):
        done["backfill"] = backfill(lake, models / "l2", BackfillConfig())
    if layer in ("l3", "all"):
        for mode in modes:
            if mode not in VARIANTS:
                raise ValueError(f"unknown L3 variant {mode!r}: choose from {', '.join(VARIANTS)}")
            done[f"l3-{mode}"] = train_l3(lake, models / f"l3-{mode}", _preset(L3Config, smoke, **VARIANTS[mode]))
    if layer in ("l4", "all"):
        done["l4"] = train_l4(lake, models / "l4", _preset(L4Config, smoke))
    if layer == "all":
        root = models.parent / "bundles" if models.name == "models" else models / "bundles"
        first = not (root / "LATEST").exists()  # LATEST moves on evidence only: `hrlxf evaluate --bundle B --promote`
        for i, mode in enumerate(modes):
            done[f"bundle-{mode}"] = str(assemble(models / "l2", models / f"l3-{mode}", models / "l4", root,
                                                  BundleConfig(set_latest=first and i == 0)))
    return done


def _train(args: argparse.Namespace) -> int:
    try:
        done = run_train(args.layer, lake_of(args), models_root(args), args.smoke, tuple(args.modes.split(",")))
    except _stage_errors() as e:
        print(f"hrlxf train {args.layer}: {e}", file=sys.stderr)
        return 2
    for name, result in done.items():
        if isinstance(result, str):
            print(f"{name}: {result}")
        elif "final" in result:
            f = result["final"]
            print(f"{name}: val op accuracy {f['op_accuracy']:.3f} (majority {f['op_majority_baseline']:.3f}), "
                  f"delta accuracy {f['delta_accuracy']:.3f}, q MAE {f['q_mae_items']:.2f} items, "
                  f"p MAE {100 * f['p_mae_catalog_share']:.2f}% of catalog")
        elif "val_mean_baseline" in result:
            print(f"{name}: val MSE {result['val']['mse']:.4f} (mean-goal baseline {result['val_mean_baseline']['mse']:.4f}), "
                  f"q MAE {result['val']['q_mae_items']:.2f} items, p MAE {100 * result['val']['p_mae_catalog_share']:.2f}%")
        elif "val" in result:
            print(f"{name}: val alpha MAE {result['val']['mae']:.4f}, rank agreement {result['val']['rank_agreement']:.3f}")
        else:
            print(f"{name}: {json.dumps(result)}")
    return 0


def _bundle_build(args: argparse.Namespace) -> int:
    from hrlxf_agent.paths import bundles_root
    from tasks.bundle import BundleConfig, assemble, metrics_table

    models = models_root(args)
    try:
        path = assemble(models / "l2", models / f"l3-{args.mode}", models / "l4", bundles_root(),
                        BundleConfig(set_latest=args.latest))
    except _stage_errors() as e:
        print(f"hrlxf bundle build: {e}", file=sys.stderr)
        return 2
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
    train = sub.add_parser("train", help="offline training stages (L2 BC, goal_hat backfill, L3 BC/AWR, L4 distillation)")
    train.add_argument("layer", choices=("l2", "backfill", "l3", "l4", "all"), help="'all' also builds both bundles")
    train.add_argument("--lake", default=None, help="lake directory (default: DATA/lake)")
    train.add_argument("--models", default=None, help="stage outputs (default: DATA/models)")
    train.add_argument("--modes", default=",".join(MODES),
                       help="L3 variants to train: residual (over L1's baseline), direct, rules (residual over the rules)")
    train.add_argument("--smoke", action="store_true", help="one epoch each, tiny minimum data (for tests)")
    train.set_defaults(func=_train)

    build = bundle_sub.add_parser("build", help="assemble a bundle from the trained stages")
    build.add_argument("--mode", choices=MODES, default="residual", help="which L3 to put in")
    build.add_argument("--models", default=None, help="stage outputs (default: DATA/models)")
    build.add_argument("--latest", action="store_true", help="point DATA/bundles/LATEST at it")
    build.set_defaults(func=_bundle_build)

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
