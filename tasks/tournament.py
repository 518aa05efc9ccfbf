"""The tournament and league modes of the evaluation (``hrlxf evaluate --mode tournament|league``): scml's own
``anac2024_std``, one world configuration at a time.

Kept beside the paired evaluation (`tasks.evaluate`, the default) so that figures stay comparable with the
official results. Tournament mode: LitaAgentHRL with each bundle given (one per L3 mode), LitaAgentHRL on
rules alone, LitaAgentHS and PenguinAgent, with and against the 2025 winners, 50 steps. League mode
(`TournamentConfig.league`): the competitors named (a bundle of ours, the rules, experts by name), the
number of steps sampled per configuration as scml samples it (``anac_config_generator``'s ``n_steps=(50,
200)``, left unset), scml's own sizes and time limits. Every one of ours (and Penguin) is audited inside the
tournament's worker processes: the `AuditHook` verdicts are written to files summed afterwards.

Rotations are real: in scml 0.8.4, ``anac_assigner_std`` with ``max_worlds_per_config`` set takes a
"fair" branch that rotates the same permutation by one step for every world, so every world of a
configuration gives each competitor the same factory (replays). Left at None, it rotates the
competitors over the configuration's slots, one world per rotation: each competitor holds each
competitor slot once. Which factory each competitor held in each world is read back from the played
worlds and reported (``assignments``, ``rotations``).

Scored as the league scores it: ``anac2024_std`` ranks by ``metric=truncated_mean`` (scml/utils.py:3233),
which negmas' ``evaluate_tournament`` applies to every agent type's per-world scores
(negmas/tournaments/tournaments.py:2785-2786); ``total_scores`` is that statistic over every
configuration's scores, with a bootstrap over configurations for its interval and the ranks'. A world that
raises (or that a parallel run kills past 1.05 x its time limit) leaves no results.json, so negmas drops
it: no score rows, not zeros (compile_results skips it, tournaments.py:2594-2595); a world that reaches
its time limit stops and is scored as played (tournaments.py:842-845 and 867-868). Both are listed (``failed_worlds``).

Each configuration is one unit of work (`tasks.parallel.run_jobs`: a fresh process, on a Dask cluster
when given one), its rows in ``<worlds_dir>/<key>/c<index>.json``, the key a digest of what plays.
``tournament.json``, ``tournament.md``, ``scores.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hrlxf_agent.audit import AuditHook
from hrlxf_agent.hrl import LitaAgentHRL
from hrlxf_agent.intercept import intercept
from hrlxf_agent.penguin import LitaAgentHS as _HS
from hrlxf_agent.registry import OWN_AGENTS, WINNERS_2025, UnknownAgentError, resolve
from tasks.paired import slot_of

TOURNAMENT_SCHEMA_VERSION = 3
AUDIT_DIR_ENV = "HRLXF_EVAL_AUDIT"


class FileAuditHook(AuditHook):
    """The audit verdicts of one agent instance, kept in a JSON file (tournament workers are other processes)."""

    def __init__(self, agent: Any):
        super().__init__(agent)
        root = os.environ.get(AUDIT_DIR_ENV)
        self.path = Path(root) / f"{type(agent).__name__}-{uuid.uuid4().hex}.json" if root else None

    def write(self, agent: Any) -> None:
        if self.path is None:
            return
        c = self.counts
        doc = {"agent_type": type(agent).__name__, "decisions": c.decisions, "unsafe_any": c.unsafe_any,
               "illegal": c.illegal, "off_grid": c.off_grid}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def on_day(self, agent: Any) -> None:
        self.write(agent)

    def on_batch(self, agent: Any, kind: str, offers: Any, responses: Any) -> Any:
        out = super().on_batch(agent, kind, offers, responses)
        if agent.awi.current_step >= agent.awi.n_steps - 1:  # no later on_day will write the last day
            self.write(agent)
        return out


def _audited(cls: type) -> type:
    return intercept(cls, FileAuditHook, "Evaluated")


# Module-level classes: the tournament's worker processes import competitors by name.
class LitaAgentHRLResidual(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with a residual-mode bundle."""


class LitaAgentHRLDirect(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with a direct-mode bundle."""


class LitaAgentHRLRules(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with no bundle: the rule-based layers."""


class LitaAgentHS(_audited(_HS)):  # type: ignore[misc]
    """PenguinAgent behind the L1 shield."""


class PenguinAgent(_audited(resolve("PenguinAgent"))):  # type: ignore[misc]
    """The 2024 champion, audited."""


_BY_MODE = {"residual": LitaAgentHRLResidual, "direct": LitaAgentHRLDirect}
REFERENCE_AGENTS = (LitaAgentHRLRules, LitaAgentHS, PenguinAgent)  # what every bundle is measured beside


#: audited classes a field may name (`competitor_class` takes these before the registry's); the bundle classes
#: come only with a bundle
AUDITED = {cls.__name__: cls for cls in REFERENCE_AGENTS}
#: names of this project's agents: "ours" in the league's reports
OURS = frozenset({*(c.__name__ for c in _BY_MODE.values()), *AUDITED, *OWN_AGENTS} - {"PenguinAgent"})
#: the 2025 std final as quoted in the reference's runner (docs/SCML_FACTS: not checked against an official page)
OFFICIAL_2025 = {"AS0": 1.0088, "PenguinAgent": 0.9922, "XenoSotaAgent": 0.9601, "UltraSuperMiracleSoraFinalAgentZ": 0.9369}
#: the league's default field beside the bundles: our rules and the four finalists
LEAGUE_COMPETITORS = ("LitaAgentHRLRules", *OFFICIAL_2025)
MODES = ("tournament", "league")


@dataclass
class TournamentConfig:
    """One run of scml's ``anac2024_std``, a configuration at a time (`league` gives the official settings)."""

    configs: int = 4  # world configurations; each is played once per rotation of the competitors over its slots
    steps: int | None = 50  # None: sampled per configuration as scml samples it (n_steps=(50, 200))
    opponents: tuple[str, ...] = WINNERS_2025  # tournament mode: beside the bundles and REFERENCE_AGENTS
    competitors: tuple[str, ...] | None = None  # if given, the whole field beside the bundles (opponents unused)
    competitors_per_world: int | None = None  # None: every competitor in every world (scml draws 2-4 if unset)
    parallelism: str = "parallel"  # inside a configuration when it runs alone; "serial" when several run at once
    workers: int = 1  # configurations played at once on this machine (each in a process of its own)
    baseline: str = "PenguinAgent"
    seed: int = 0
    bootstrap: int = 2000  # resamples of configurations for the total scores' intervals and ranks
    mode: str = "tournament"  # a label for the reports: "tournament" or "league"

    def worlds(self, n_competitors: int) -> int:
        return self.configs * n_competitors

    def field_names(self) -> tuple[str, ...]:
        """The competitors named beside the bundles."""
        if self.competitors is not None:
            return tuple(self.competitors)
        return (*(c.__name__ for c in REFERENCE_AGENTS), *self.opponents)

    def validate(self) -> None:
        if self.configs < 1:
            raise ValueError(f"configs must be >= 1, got {self.configs}")
        if self.steps is not None and self.steps < 3:
            raise ValueError(f"steps must be >= 3 or None (sampled as scml samples it), got {self.steps}")
        if self.parallelism not in ("parallel", "serial"):
            raise ValueError(f"parallelism must be 'parallel' or 'serial', got {self.parallelism!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.competitors_per_world is not None and self.competitors_per_world < 2:
            raise ValueError(f"competitors_per_world must be >= 2 or None (all), got {self.competitors_per_world}")
        what = "competitors" if self.competitors is not None else "opponents"
        names = self.field_names()
        for name in names:
            try:
                competitor_class(name)
            except UnknownAgentError as e:
                raise UnknownAgentError(f"{what}: {e}") from None
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"{what}: named more than once: {', '.join(doubles)}")

    @classmethod
    def smoke(cls) -> "TournamentConfig":
        return cls(configs=1, steps=10)

    @classmethod
    def league(cls, configs: int = 10, competitors: Sequence[str] = LEAGUE_COMPETITORS, **overrides: Any) -> "TournamentConfig":
        """The league as scml plays it: steps sampled per configuration (50-200), scml's sizes and time limits,
        the competitors rotated over every configuration's slots."""
        return cls(**{"configs": configs, "steps": None, "competitors": tuple(competitors), "mode": "league",
                      **overrides})


def competitor_class(name: str) -> type:
    """Our audited classes by their names, anything else through the registry (an unknown name raises)."""
    return AUDITED.get(name) or resolve(name)


def competitors(bundles: Sequence[Path], config: TournamentConfig) -> tuple[list[type], list[dict[str, Any]]]:
    from hrlxf_agent.bundle import load_bundle

    types: list[type] = []
    params: list[dict[str, Any]] = []
    for path in bundles:
        bundle = load_bundle(path)  # a bad bundle fails here, before any world
        cls = _BY_MODE[bundle.manifest.l3_mode]
        if cls in types:
            raise ValueError(f"two bundles with L3 mode {bundle.manifest.l3_mode!r}: give one per mode")
        types.append(cls)
        params.append({"controller_params": {"bundle": str(bundle.path.resolve())}})
    for name in config.field_names():
        cls = competitor_class(name)
        if cls.__name__ in {t.__name__ for t in types}:
            raise ValueError(f"competitors: {name!r} plays as {cls.__name__}, which is already in the field")
        types.append(cls)
        params.append({})
    return types, params


def play_key(types: Sequence[type], params: Sequence[dict[str, Any]], config: TournamentConfig) -> str:
    """What plays, as a short digest: the settings that shape the worlds, each competitor's code and bundle
    (`tasks.candidates`: the same content keys as the paired rows) and the libraries' versions (so other
    settings or an edit to an agent's code never reuse a configuration's results)."""
    from tasks.candidates import agent_code, bundle_content, library_versions
    from tasks.fingerprint import canonical

    what = {"steps": config.steps, "seed": config.seed, "competitors_per_world": config.competitors_per_world,
            "competitors": [{"class": f"{t.__module__}:{t.__qualname__}", "code": agent_code(t),
                             "bundle": bundle_content(p["controller_params"]["bundle"]) if p.get("controller_params") else None}
                            for t, p in zip(types, params)],
            "versions": library_versions()}
    return hashlib.sha256(canonical(what).encode()).hexdigest()[:12]


def configuration_of(world: str) -> str:
    """scml names a tournament world ``<configuration>.<rotation>``."""
    return str(world).rsplit(".", 1)[0]


def _short(agent_type: str) -> str:
    return str(agent_type).split(".")[-1].split(":")[-1]


def rotation_check(assignments: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per configuration: its worlds, how many distinct competitor -> factory assignments they had, and
    whether they are real rotations (every world's assignment differs from every other's)."""
    by_config: dict[str, list[tuple]] = {}
    for world, held in assignments.items():
        by_config.setdefault(configuration_of(world), []).append(tuple(sorted(held.items())))
    return {c: {"worlds": len(a), "distinct_assignments": len(set(a)), "real_rotations": len(set(a)) == len(a)}
            for c, a in sorted(by_config.items())}


# ------------------------------------------------------------------------ the league's statistic


def league_total_scores(table: Any) -> dict[str, float]:
    """Each agent's total score exactly as the league computes it: negmas' ``evaluate_tournament`` with the
    metric ``anac2024_std`` passes (``truncated_mean``) over every per-agent-per-world score of ``table``
    (columns agent, world, score)."""
    from negmas.tournaments.tournaments import evaluate_tournament
    from scml.utils import truncated_mean  # the very function anac2024_std passes as its metric

    scores = table.rename(columns={"agent": "agent_type"})[["agent_type", "world", "score"]]
    total = evaluate_tournament(tournament_path=None, scores=scores, metric=truncated_mean).total_scores
    return {str(a): float(s) for a, s in zip(total["agent_type"], total["score"])}


def bootstrap_total_scores(table: Any, resamples: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(agents, matrix resamples x agents): configurations drawn with replacement, the league's statistic
    recomputed on their rows. ``truncated_mean`` is called directly, as ``evaluate_tournament`` applies it to
    each agent type (negmas/tournaments/tournaments.py:2785-2786), without the t-tests it runs on the side."""
    from scml.utils import truncated_mean

    configs = sorted(table["configuration"].unique())
    agents = sorted(table["agent"].unique())
    cells = {key: g["score"].to_numpy(dtype=float) for key, g in table.groupby(["agent", "configuration"])}
    picks = np.random.default_rng(seed).integers(0, len(configs), size=(resamples, len(configs)))
    out = np.full((resamples, len(agents)), np.nan)
    for b, pick in enumerate(picks):
        chosen = [configs[i] for i in pick]
        for j, agent in enumerate(agents):
            parts = [cells[(agent, c)] for c in chosen if (agent, c) in cells]
            if parts:
                out[b, j] = truncated_mean(np.concatenate(parts))
    return agents, out


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1 + how many agents score strictly more (ties share the better rank), along the last axis; NaN stays NaN."""
    x = np.asarray(scores, dtype=float)
    ranks = 1.0 + (x[..., None, :] > x[..., :, None]).sum(axis=-1)
    return np.where(np.isnan(x), np.nan, ranks)


def _interval(values: np.ndarray, discrete: bool = False) -> list[float] | None:
    v = values[~np.isnan(values)]
    if not len(v):
        return None
    lo, hi = np.quantile(v, [0.025, 0.975], method="inverted_cdf" if discrete else "linear")
    return [int(lo), int(hi)] if discrete else [float(lo), float(hi)]


def total_score_table(table: Any, resamples: int, seed: int = 0) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """{agent: score, ci95, rank, rank_ci, worlds, ours} and the bootstrap's draws per agent.

    The intervals resample configurations (the unit that shares a market); with fewer than
    `tasks.stats.MIN_SAMPLES` configurations they are None."""
    from tasks.stats import MIN_SAMPLES

    totals = league_total_scores(table)
    names = sorted(totals)
    ranks = ranks_of(np.array([totals[n] for n in names]))
    draws: dict[str, np.ndarray] = {}
    boot_ranks: dict[str, np.ndarray] = {}
    if table["configuration"].nunique() >= MIN_SAMPLES:
        agents, boots = bootstrap_total_scores(table, resamples, seed)
        draws = {name: boots[:, agents.index(name)] for name in names}
        boot_ranks = dict(zip(agents, ranks_of(boots).T))
    worlds = table.groupby("agent")["world"].nunique()
    out = {name: {"score": totals[name], "ci95": _interval(draws[name]) if draws else None, "rank": int(ranks[i]),
                  "rank_ci": _interval(boot_ranks[name], discrete=True) if draws else None,
                  "worlds": int(worlds.get(name, 0)), "ours": name in OURS}
           for i, name in enumerate(names)}
    return dict(sorted(out.items(), key=lambda kv: kv[1]["rank"])), draws


def _share_above(a: np.ndarray, b: np.ndarray) -> float | None:
    both = ~(np.isnan(a) | np.isnan(b))
    return float((a[both] > b[both]).mean()) if both.any() else None


def official_order(totals: dict[str, float], draws: dict[str, np.ndarray],
                   official: dict[str, float] = OFFICIAL_2025) -> dict[str, Any]:
    """The measured order of the official finalists present, its Kendall tau against the official order, and
    for each pair adjacent in the official order the share of bootstrap resamples in which it holds
    ("holds" at >= 97.5%, "reversed" at <= 2.5%, else "unresolved"; None without a bootstrap)."""
    from scipy.stats import kendalltau

    present = [n for n in sorted(official, key=lambda n: -official[n]) if n in totals]
    measured = sorted(present, key=lambda n: -totals[n])
    tau = float(kendalltau([official[n] for n in present], [totals[n] for n in present])[0]) \
        if len(present) >= 2 else None
    tau = tau if tau is not None and math.isfinite(tau) else None  # ties in the measured scores: undefined
    pairs = []
    for upper, lower in zip(present, present[1:]):
        share = _share_above(draws[upper], draws[lower]) if upper in draws and lower in draws else None
        verdict = None if share is None else "holds" if share >= 0.975 else "reversed" if share <= 0.025 else "unresolved"
        pairs.append({"upper": upper, "lower": lower, "measured_holds": totals[upper] > totals[lower],
                      "bootstrap_share": share, "verdict": verdict})
    return {"official": {n: official[n] for n in present}, "official_order": present, "measured_order": measured,
            "kendall_tau": tau, "adjacent_pairs": pairs}


def configs_needed(n: int, half_width: float | None, gap: float) -> int | None:
    """Configurations at which the 95% interval of a difference would exclude 0, if its half-width shrinks as
    1/sqrt(n): n x (half_width / |gap|)^2; None when the gap is 0 or there is no interval."""
    if half_width is None or gap == 0 or not math.isfinite(gap):
        return None
    return max(1, math.ceil(n * (half_width / abs(gap)) ** 2))


def configs_to_resolve(totals: dict[str, float], draws: dict[str, np.ndarray], n: int,
                       ours: Iterable[str] = OURS) -> dict[str, Any]:
    """For each adjacent pair of the measured ranking: the gap, the bootstrap interval of the difference, and
    the configurations it would take to resolve it (`configs_needed`); and those pairs of our best agent."""
    ranking = sorted(totals, key=lambda a: -totals[a])
    pairs = []
    for upper, lower in zip(ranking, ranking[1:]):
        gap = totals[upper] - totals[lower]
        ci = half = None
        if upper in draws and lower in draws:
            ci = _interval(draws[upper] - draws[lower])
            half = (ci[1] - ci[0]) / 2 if ci else None
        pairs.append({"upper": upper, "lower": lower, "gap": gap, "ci95": ci, "half_width": half,
                      "resolved": bool(ci and (ci[0] > 0 or ci[1] < 0)), "n_needed": configs_needed(n, half, gap)})
    mine = set(ours)
    best = next((a for a in ranking if a in mine), None)
    return {"configurations": n, "pairs": pairs, "our_best": best,
            "our_best_pairs": [p for p in pairs if best in (p["upper"], p["lower"])]}


# ------------------------------------------------------------------------ the report


def league_table(scores: Any) -> Any:
    """Rows (agent short name, configuration, world, score) from scml's score rows; the configuration is the
    played one (``configuration`` column) or, for older rows, the world name's."""
    table = scores.assign(agent=scores["agent_type"].map(_short))
    if "configuration" not in table:
        table = table.assign(configuration=table["world"].map(configuration_of))
    return table[["agent", "configuration", "world", "score"]]


def summarize(scores: Any, audits: list[dict[str, Any]], config: TournamentConfig,
              failed_worlds: Sequence[dict[str, Any]] = (), failed_configurations: Sequence[dict[str, Any]] = (),
              shapes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per agent type: mean score and interval, audit sums, paired differences, who held which factory; the
    league's total scores with bootstrap intervals and ranks, the official-order check and what it takes to
    resolve each rank.

    The rotations of one configuration share its market, so they are averaged first: the mean intervals are
    over configurations (n = configs), not worlds; the bootstrap resamples configurations too.
    """
    from tasks.stats import mean_interval

    per_world = scores.groupby(["agent_type", "world"])["score"].mean().unstack("agent_type")
    per_world.columns = [_short(c) for c in per_world.columns]
    per_config = per_world.groupby([configuration_of(w) for w in per_world.index]).mean()
    agents: dict[str, Any] = {}
    for name in per_world.columns:
        entry: dict[str, Any] = {"worlds": int(per_world[name].notna().sum()),
                                 "score": mean_interval(per_config[name].dropna().tolist()),
                                 "world_scores": mean_interval(per_world[name].dropna().tolist())}
        mine = [a for a in audits if a["agent_type"] == name]
        if mine:
            entry.update({k: int(sum(a[k] for a in mine)) for k in ("decisions", "unsafe_any", "illegal", "off_grid")})
        agents[name] = entry
    pairs = [(name, config.baseline) for name in per_world.columns if name != config.baseline]
    if {"LitaAgentHRLResidual", "LitaAgentHRLDirect"} <= set(per_world.columns):
        pairs.append(("LitaAgentHRLResidual", "LitaAgentHRLDirect"))
    paired = {f"{a} - {b}": mean_interval((per_config[a] - per_config[b]).dropna().tolist())
              for a, b in pairs if a in per_config and b in per_config}
    assignments: dict[str, dict[str, str]] = {}
    if "agent_name" in scores:
        for row in scores.itertuples():
            assignments.setdefault(str(row.world), {})[_short(row.agent_type)] = slot_of(row.agent_name)
    table = league_table(scores)
    n_configurations = int(table["configuration"].nunique())
    total, draws = total_score_table(table, config.bootstrap, config.seed)
    totals = {a: t["score"] for a, t in total.items()}
    return {"schema_version": TOURNAMENT_SCHEMA_VERSION, "mode": config.mode, "config": asdict(config),
            "worlds": int(len(per_world)), "configurations": int(len(per_config)), "agents": agents, "paired": paired,
            "total_scores": total,
            "statistic": {"name": "truncated_mean", "function": "negmas.helpers.numeric.truncated_mean",
                          "defaults": "Tukey fence: scores above Q3 + 2 IQR dropped, none below",
                          "over": "every per-agent-per-world score of every configuration",
                          "bootstrap": {"unit": "configuration", "n": n_configurations, "resamples": config.bootstrap}},
            "official_order": official_order(totals, draws),
            "configs_to_resolve": configs_to_resolve(totals, draws, n_configurations),
            "failed_worlds": list(failed_worlds), "failed_configurations": list(failed_configurations),
            "shapes": shapes or {},
            "assignments": assignments, "rotations": rotation_check(assignments),
            "per_world": per_world.reset_index().to_dict(orient="list")}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_world = doc["per_world"]
    names = sorted((k for k in per_world if k != "world"), key=lambda k: -doc["agents"][k]["score"]["mean"])
    data = [[v for v in per_world[k] if v is not None and not math.isnan(v)] for k in names]
    steps = doc["config"]["steps"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.5))
    ax.boxplot(data, vert=False, showmeans=True)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean score per world ({doc['worlds']} worlds, "
                  + (f"{steps} steps)" if steps else "steps sampled per configuration)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(x: dict[str, Any]) -> str:
    return f"± {x['half_width']:.4f}" if x.get("half_width") is not None else "(too few)"


def _range(ci: list[float] | None, spec: str = ".4f") -> str:
    return f"[{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else "(too few configurations)"


def _league_markdown(doc: dict[str, Any]) -> list[str]:
    from tasks.report import md_table

    stat = doc["statistic"]
    lines = ["", f"Total scores as the league computes them ({stat['name']} over {stat['over']}); 95% intervals "
             f"and ranks from a bootstrap over {stat['bootstrap']['n']} configurations "
             f"({stat['bootstrap']['resamples']} resamples):", "",
             *md_table(["rank", "agent", "total score", "95% CI", "rank 95% CI", "worlds"],
                       [[t["rank"], f"**{a}**" if t["ours"] else a, f"{t['score']:.4f}", _range(t["ci95"]),
                         _range(t["rank_ci"], "d"), t["worlds"]] for a, t in doc["total_scores"].items()], left=2)]
    off = doc["official_order"]
    tau = f"{off['kendall_tau']:+.2f}" if off["kendall_tau"] is not None else "n/a (fewer than 2 finalists)"
    lines += ["", f"Official 2025 order: {' > '.join(off['official_order']) or '(none present)'}; measured: "
              f"{' > '.join(off['measured_order']) or '-'}; Kendall tau {tau}", ""]
    if off["adjacent_pairs"]:
        lines += md_table(["official pair", "measured", "bootstrap share holding", "verdict"],
                          [[f"{p['upper']} > {p['lower']}", "holds" if p["measured_holds"] else "reversed",
                            "-" if p["bootstrap_share"] is None else f"{p['bootstrap_share']:.1%}", p["verdict"] or "-"]
                           for p in off["adjacent_pairs"]], left=2)
    res = doc["configs_to_resolve"]
    lines += ["", f"Configurations to resolve each adjacent rank (now {res['configurations']}; n x (half-width / gap)^2):",
              "", *md_table(["pair", "gap", "95% CI of the difference", "resolved", "configurations needed"],
                            [[f"{p['upper']} > {p['lower']}", f"{p['gap']:+.4f}", _range(p["ci95"]),
                              "yes" if p["resolved"] else "no", p["n_needed"] if p["n_needed"] is not None else "-"]
                             for p in res["pairs"]])]
    if res["our_best"]:
        near = ", ".join(f"{p['upper']} > {p['lower']}: {p['n_needed'] if p['n_needed'] is not None else '-'}"
                         for p in res["our_best_pairs"]) or "no neighbour"
        lines += ["", f"Our best, {res['our_best']}, against its neighbours: {near} configurations."]
    if doc.get("shapes"):
        lines += ["", "Configurations as scml generated them:", "",
                  *md_table(["configuration", "steps", "processes", "factories per process", "time limit (s)"],
                            [[c, s.get("steps"), s.get("processes"), s.get("factories_per_process"), s.get("time_limit")]
                             for c, s in sorted(doc["shapes"].items())])]
    lines += ["", "Failed worlds (negmas drops a world that raised or was killed: no score rows; one stopped at its "
              "time limit is scored as played):", ""]
    lines += md_table(["configuration", "world", "scored", "what happened"],
                      [[w["configuration"], w["world"], "yes" if w["scored"] else "no", w["reason"]]
                       for w in doc["failed_worlds"]], left=4) if doc["failed_worlds"] else ["none"]
    if doc["failed_configurations"]:
        lines += ["", "Failed configurations (not played; a rerun plays them again):", "",
                  *md_table(["configuration", "error"], [[f["configuration"], f["error"].splitlines()[-1][:200]]
                                                         for f in doc["failed_configurations"]], left=2)]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    from tasks.report import md_table

    rows = []
    for name, a in sorted(doc["agents"].items(), key=lambda kv: -kv[1]["score"]["mean"]):
        s = a["score"]
        rows.append([name, a["worlds"], f"{s['mean']:.4f}", _pm(s),
                     a.get("unsafe_any", "-"), a.get("illegal", "-"), a.get("decisions", "-")])
    title = "League" if doc.get("mode") == "league" else "Tournament"
    lines = [f"{title} (scml anac2024_std): {doc['worlds']} worlds = {doc.get('configurations', '?')} configurations "
             "x rotations; intervals over configurations (Student t)", "",
             *md_table(["agent", "worlds", "mean score", "95% CI", "unsafe_any", "illegal", "decisions"], rows)]
    lines += ["", *md_table(["paired difference (per configuration)", "mean", "95% CI", "configurations"],
                            [[k, f"{v['mean']:+.4f}", _pm(v), v["n"]] for k, v in doc["paired"].items()])]
    if "total_scores" in doc:
        lines += _league_markdown(doc)
    if doc.get("assignments"):
        names = sorted({n for held in doc["assignments"].values() for n in held})
        lines += ["", "Factory held by each competitor in each world (index@level):", "",
                  *md_table(["world", *names], [[w, *(held.get(n, "-") for n in names)]
                                                for w, held in sorted(doc["assignments"].items())])]
        bad = [c for c, r in doc["rotations"].items() if not r["real_rotations"]]
        lines += ["", "Rotations: " + (f"REPLAYS in {', '.join(bad)}" if bad else
                                       "every world of every configuration has its own assignment")]
    return "\n".join(lines)


# ------------------------------------------------------------------------ playing the configurations


@dataclass(frozen=True)
class ConfigurationJob:
    """One world configuration's tournament (all its rotations): the unit a task runner spreads."""

    bundles: tuple[str, ...]
    config: TournamentConfig
    index: int
    out_dir: str  # where ``c<index>.json`` goes (the tournament's files beside it)
    parallelism: str = "serial"  # inside the configuration
    show_progress: bool = False  # a bar over its worlds (when it runs alone here)

    @property
    def result(self) -> Path:
        return Path(self.out_dir) / f"c{self.index:03d}.json"

    @property
    def failure(self) -> Path:
        return Path(self.out_dir) / f"c{self.index:03d}.failed.json"


def configuration_jobs(bundles: Sequence[Path], worlds_dir: Path, config: TournamentConfig,
                       parallelism: str | None = None, show_progress: bool = False) -> list[ConfigurationJob]:
    """The configurations not played yet in ``worlds_dir`` (a rerun plays only the missing ones)."""
    from hrlxf_agent.bundle import resolve_bundle

    names = tuple(str(Path(resolve_bundle(b) or b).resolve()) for b in bundles)  # "latest" -> the bundle it names
    jobs = [ConfigurationJob(names, config, i, str(worlds_dir), parallelism or config.parallelism, show_progress)
            for i in range(config.configs)]
    return [j for j in jobs if not j.result.exists()]


def planned_worlds(tournament_dir: Path) -> dict[str, dict[str, Any]]:
    """Every world negmas planned in a tournament directory (``configs/*.json``): name -> its world_params."""
    out = {}
    for f in sorted((Path(tournament_dir) / "configs").glob("*.json")):
        params = json.loads(f.read_text())
        out[params["world_params"]["name"]] = {"dir": params.get("__dir_name"), **params["world_params"]}
    return out


def shape_of(world_params: dict[str, Any]) -> dict[str, Any]:
    """The size and limits scml drew for a configuration (all its worlds share them)."""
    from collections import Counter

    per_process = Counter(world_params.get("agent_processes", []))
    return {"steps": world_params.get("n_steps"), "processes": world_params.get("n_processes"),
            "factories_per_process": [per_process[p] for p in sorted(per_process)],
            **{k: world_params.get(k) for k in ("time_limit", "neg_time_limit", "neg_step_time_limit", "neg_n_steps")}}


def world_failures(tournament_dir: Path, scored: set[str], index: int) -> list[dict[str, Any]]:
    """Worlds of a tournament directory that did not count whole: planned but without score rows (negmas
    dropped them: the world raised, or a parallel run killed it past its time limit), and scored worlds that
    stopped early (the time limit) or recorded exceptions (``results.json``'s world_stats)."""
    tournament_dir = Path(tournament_dir)
    out = []
    for name, params in planned_worlds(tournament_dir).items():
        if name in scored:
            continue
        progress = Path(params["dir"] or "", "_current_scores.json")  # negmas writes it after every step
        last = json.loads(progress.read_text()) if params["dir"] and progress.is_file() else {}
        where = (f"last step recorded {last['step']} of {params['n_steps']} at {last.get('time', 0):.0f} s "
                 f"(time limit {params.get('time_limit')} s)") if "step" in last else "no step recorded"
        out.append({"configuration": f"c{index:03d}", "world": name, "scored": False,
                    "reason": f"dropped: no score rows (it raised, or was killed past its time limit); {where}"})
    for results in sorted(tournament_dir.glob("*/results.json")):
        for stats in json.loads(results.read_text()).get("world_stats", []):
            problems = []
            if stats.get("executed_n_steps", 0) < stats.get("planned_n_steps", 0):
                problems.append(f"stopped after {stats['executed_n_steps']} of {stats['planned_n_steps']} steps "
                                f"({stats.get('execution_time', 0):.0f} s: the time limit), scored as played")
            kinds = [k for k in ("simulation_exceptions", "contract_exceptions", "mechanism_exceptions", "other_exceptions")
                     if stats.get(k)]
            if kinds or stats.get("n_agent_exceptions") or stats.get("n_negotiator_exceptions"):
                problems.append(f"exceptions recorded ({', '.join(kinds) or 'none of the world'}; agents "
                                f"{stats.get('n_agent_exceptions', 0)}, negotiators {stats.get('n_negotiator_exceptions', 0)})")
            if problems:
                out.append({"configuration": f"c{index:03d}", "world": stats["name"], "scored": True,
                            "reason": "; ".join(problems)})
    return out


def anac_arguments(config: TournamentConfig, types: Sequence[type], params: Sequence[dict[str, Any]],
                   parallelism: str, tournament_path: Path) -> dict[str, Any]:
    """``anac2024_std``'s arguments for one configuration. Left out, n_steps is drawn per configuration by scml's
    config generator (``n_steps=(50, 200)``, scml/utils.py:253,281); sizes and time limits are never passed:
    scml's own (2-4 processes, at least 4 factories each; time_limit 900 s, neg_time_limit 60 s,
    neg_step_time_limit 20 s)."""
    return dict(
        # every competitor in every world, rotated over the configuration's slots: max_worlds_per_config
        # left at None, scml's fair branch (any number given) replays one assignment (module docstring)
        competitors=list(types), competitor_params=list(params), n_configs=1,
        n_competitors_per_world=config.competitors_per_world or len(types),
        max_worlds_per_config=None, n_runs_per_world=1, tournament_path=str(tournament_path),
        parallelism=parallelism, compact=True, verbose=False,
        **({"n_steps": config.steps} if config.steps is not None else {}))


def play_configuration(job: ConfigurationJob, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Play one configuration in scml's ``anac2024_std``; write its scores, audit verdicts, shape and failed
    worlds to ``job.result``."""
    import random

    from scml.utils import anac2024_std

    config = job.config
    root = Path(job.out_dir) / f"c{job.index:03d}"
    audit_dir = root / "audit"
    shutil.rmtree(root, ignore_errors=True)  # a half-played configuration is played again
    audit_dir.mkdir(parents=True)
    types, params = competitors([Path(b) for b in job.bundles], config)
    seed = config.seed * 100_003 + job.index  # the configuration scml generates depends on these generators
    random.seed(seed)
    np.random.seed(seed % 2**32)
    old = os.environ.get(AUDIT_DIR_ENV)
    os.environ[AUDIT_DIR_ENV] = str(audit_dir.resolve())
    try:
        results = anac2024_std(**anac_arguments(config, types, params, job.parallelism, root / "tournament"),
                               tournament_progress_callback=(lambda *_: progress()) if progress is not None else None)
    finally:
        if old is None:
            os.environ.pop(AUDIT_DIR_ENV, None)
        else:
            os.environ[AUDIT_DIR_ENV] = old
    columns = ["agent_type", "agent_name", "world", "score"]
    scores = (results.scores[columns].astype({"agent_type": str, "agent_name": str, "world": str})
              if len(results.scores) else None)
    planned = planned_worlds(Path(results.path))
    doc = {"index": job.index, "scores": scores.to_dict(orient="records") if scores is not None else [],
           "audits": [json.loads(f.read_text()) for f in sorted(audit_dir.glob("*.json"))],
           "bundles": {cls.__name__: p["controller_params"]["bundle"] for cls, p in zip(types, params) if p},
           "shape": shape_of(next(iter(planned.values()))) if planned else {},
           "failed_worlds": world_failures(Path(results.path), set(scores["world"]) if scores is not None else set(),
                                           job.index)}
    tmp = job.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, default=float))
    os.replace(tmp, job.result)
    job.failure.unlink(missing_ok=True)
    return {"index": job.index, "worlds": len(planned), "scored_worlds": int(scores["world"].nunique()) if scores is not None else 0}


def _failed(job: ConfigurationJob, error: str) -> dict[str, Any]:
    """Record a configuration that did not play (a rerun plays it again: ``job.result`` is not written)."""
    row = {"index": job.index, "configuration": f"c{job.index:03d}", "error": error}
    job.failure.parent.mkdir(parents=True, exist_ok=True)
    job.failure.write_text(json.dumps(row))
    return row


def play_configuration_unit(job: ConfigurationJob) -> dict[str, Any]:
    """A unit of `tasks.parallel.run_jobs`: `play_configuration`, its error recorded instead of raised."""
    import traceback

    bar = None
    if job.show_progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"configuration {job.index} worlds", unit="world", leave=False)
    try:
        return play_configuration(job, bar.update if bar is not None else None)
    except Exception as e:  # noqa: BLE001 - one configuration's failure is its row, not the run's end
        return _failed(job, "".join(traceback.format_exception(e)).rstrip())
    finally:
        if bar is not None:
            bar.close()


def configuration_died(job: ConfigurationJob) -> dict[str, Any]:
    """The row of a configuration whose process (or Dask task) died."""
    return _failed(job, "the process playing this configuration died")


def read_configurations(worlds_dir: Path, config: TournamentConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(played configurations' documents, failed ones {index, error}) for every configuration of ``config``."""
    played, failed = [], []
    for i in range(config.configs):
        done, failure = Path(worlds_dir) / f"c{i:03d}.json", Path(worlds_dir) / f"c{i:03d}.failed.json"
        if done.is_file():
            played.append(json.loads(done.read_text()))
        elif failure.is_file():
            failed.append(json.loads(failure.read_text()))
        else:
            failed.append({"index": i, "configuration": f"c{i:03d}",
                           "error": "not played (its process was lost before it recorded anything)"})
    return played, failed


def run_tournament(bundles: Sequence[Path] | Path, out: Path, config: TournamentConfig, progress: bool = True,
                   worlds_dir: Path | None = None, dask_address: str | None = None) -> dict[str, Any]:
    """Play every configuration not played yet under ``worlds_dir`` (default ``out/configurations``), in a
    subdirectory keyed by what plays; each configuration a unit of `tasks.parallel.run_jobs` (``config.workers``
    at once here, or on the Dask cluster at ``dask_address``). Then write ``out/tournament.json``,
    ``tournament.md`` and ``scores.png``. Bad input (an unknown competitor, a bad bundle) fails before any world."""
    import pandas as pd

    from tasks import parallel

    config.validate()
    bundles = [bundles] if isinstance(bundles, (str, Path)) else list(bundles)
    types, params = competitors(bundles, config)  # resolves every competitor and loads every bundle now
    if config.competitors_per_world is not None and config.competitors_per_world > len(types):
        raise ValueError(f"competitors_per_world: {config.competitors_per_world}, but the field has {len(types)}")
    out = Path(out)
    root = Path(worlds_dir) if worlds_dir is not None else out / "configurations"
    worlds_dir = root / play_key(types, params, config)
    worlds_dir.mkdir(parents=True, exist_ok=True)
    todo = configuration_jobs(bundles, worlds_dir, config)
    together = bool(dask_address) or min(config.workers, len(todo)) > 1  # 2 cores: one pool, not one per configuration
    todo = [replace(j, parallelism="serial" if together else config.parallelism, show_progress=progress and not together)
            for j in todo]
    if todo:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"{config.mode} configurations", unit="configuration")
        try:
            parallel.run_jobs(play_configuration_unit, todo, config.workers, configuration_died,
                              (lambda _row: bar.update(1)) if bar is not None else None, dask_address,
                              name=lambda j: f"{config.mode}-c{j.index:03d}")
        finally:
            if bar is not None:
                bar.close()
    played, failed = read_configurations(worlds_dir, config)
    rows = [{**row, "configuration": f"c{doc['index']:03d}"} for doc in played for row in doc["scores"]]
    if not rows:
        errors = "; ".join(f"{f['configuration']}: {f['error'].splitlines()[-1]}" for f in failed) or "no scored world"
        raise RuntimeError(f"no configuration of {worlds_dir} has a scored world: {errors}")
    doc = summarize(pd.DataFrame(rows), [a for d in played for a in d["audits"]], config,
                    failed_worlds=[w for d in played for w in d.get("failed_worlds", [])], failed_configurations=failed,
                    shapes={f"c{d['index']:03d}": d.get("shape", {}) for d in played})
    doc["bundles"] = played[0]["bundles"]
    doc["configurations_dir"] = str(worlds_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tournament.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    os.replace(tmp, out / "tournament.json")
    (out / "tournament.md").write_text(markdown(doc) + "\n")
    plot(doc, out / "scores.png")
    return doc
