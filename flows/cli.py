"""`hrlxf`: one command line, a subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from hrlxf_agent.paths import data_root


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _audit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hrlxf_agent.registry import UnknownAgentError
    from tasks.audit import AuditConfig, markdown_table, run_audit

    config = AuditConfig(
        agents=_csv(args.agents), opponents=_csv(args.opponents), worlds=args.worlds,
        steps=args.steps, seed=args.seed, workers=args.workers,
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
    print(f"wrote {out / 'audit.json'} and {out / 'audit.md'}")
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
    audit.set_defaults(func=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
