"""LitaAgentHRL: the four-layer agent (DESIGN.md section 3).

Per day (``before_step``): Snapshot -> StateBuilder -> L2 goal -> L4 monitor reset.
Per batch (``first_proposals`` / ``counter_all``): Snapshot (with the day's deals)
-> L1 bounds -> L4 broadcast c and alpha per thread -> L3 action per thread
(op -> delta -> (q, p)) -> L1 joint clip (the `ShieldHook`, the same code as
LitaAgentHS) -> SAO responses. Every learned layer has a rule-based stand-in
(`heuristics`) used when no bundle is loaded, and for any decision where a
model raises or returns non-finite numbers (one warning per layer).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from negmas.sao import ResponseType, SAOResponse
from scml.std import StdSyncAgent

from hrlxf_models.policy import ACCEPT, END, GREEDY, NO_DELTA, REJECT, goal_log_prob, l3_log_prob, l3_logits

from .bundle import Bundle, BundleError, load_bundle
from .heuristics import (
    GlobalMonitor, Goal, bucket_index, heuristic_action, heuristic_goal, rule_offer_for, teacher_alpha,
)
from .intercept import intercept
from .shield import Bounds, SafetyShield
from .shielded import ShieldHook
from .snapshot import DEFAULT_HORIZON, Snapshot, snapshot_from_awi
from .state import OP_INDEX, FeatureSpec, StateBuilder, batch_thread_features, op_of, round_features
from .strategy import Strategy, strategy_of

log = logging.getLogger("hrlxf")


ABLATIONS = ("l2", "l4")  # layers whose learned model can be replaced by its rule (the ablation study)


class HRLPolicy(StdSyncAgent):
    """The layers L2-L4 (L1 is applied by the shield hook around this class).

    ``executor``: the bundle's L3 weights to play ("final", or "bc": before AWR).
    ``ablate``: learned layers replaced by their rule: "l2" (the rule goal in place of the planner),
    "l4" (the teacher alpha in place of the coordinator).
    ``strategy``: offsets of the rule layers (`strategy.PARAMS`), over the bundle's own (a search's arm).
    """

    def __init__(self, *args, bundle: Any = None, executor: str = "final",
                 ablate: Any = (), strategy: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = set(ablate) - set(ABLATIONS)
        if unknown:
            raise ValueError(f"ablate: unknown layers {sorted(unknown)}; choose from {', '.join(ABLATIONS)}")
        self.strategy_offsets = dict(strategy or {})
        self.strategy: Strategy = strategy_of(self.strategy_offsets)  # a bad one fails here, before any world
        self.executor_weights = executor
        self.ablate = frozenset(ablate)
        self.bundle_spec = bundle
        self.horizon = DEFAULT_HORIZON  # the world's, from init on
        self.models: Bundle | None = None
        self.builder = StateBuilder(FeatureSpec(horizon=self.horizon))
        self.shield = SafetyShield()
        self.monitor = GlobalMonitor()
        self.initial_balance = 0.0
        self.version = 0
        self.goal: Goal | None = None
        self.rule_goal: Goal | None = None  # what the rule executor plays against, whatever L2 plans
        self.goal_source = "rules"  # "l2" when the planner made today's goal
        self.batch_alpha: dict[str, float] = {}
        self.history: dict[str, list[tuple]] = defaultdict(list)
        self._rel_time: dict[str, float] = {}
        self._batch_snapshot: Snapshot | None = None
        self.fallbacks: dict[str, int] = defaultdict(int)
        self.feature_log: list[dict[str, Any]] | None = None  # set to a list to keep the L2 inputs computed online
        self.l3_log: list[dict[str, Any]] | None = None  # set to a list to keep the L3 inputs computed online
        # online learning (`hrlxf_rl.rollout`): the layers in ``explore`` draw their actions from the policy
        # (``sampler``, with ``noise``'s spread for the continuous ones) and report each draw to ``recorder``;
        # otherwise (a bundle's play) every layer takes the modes
        self.explore: frozenset[str] = frozenset()
        self.sampler: Any = None
        self.noise: Any = None
        self.recorder: Any = None

    # ------------------------------------------------------------ lifecycle
    def init(self):
        super().init()
        self.initial_balance = float(self.awi.current_balance)
        self.horizon = int(self.awi.horizon)  # H is the world's horizon (a bundle must have been made for it)
        self.builder = StateBuilder(FeatureSpec(horizon=self.horizon))
        if self.bundle_spec is not None:
            try:
                models = load_bundle(self.bundle_spec, executor=self.executor_weights)
                if models.manifest.horizon != int(self.awi.horizon):
                    raise BundleError(f"{models.path}: horizon {models.manifest.horizon}, this world negotiates "
                                      f"{self.awi.horizon} days ahead")
                self.strategy = strategy_of(models.strategy.offsets, self.strategy_offsets)
                if models.has_networks:  # a rules bundle is the rule layers with its strategy
                    self.models = models
                    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
            except Exception as e:
                self._fallback("bundle", e)

    def before_step(self):
        super().before_step()
        self.history.clear()
        snap = self._snapshot({})
        if self.recorder is not None:
            self.recorder.day(self, snap)
        self.goal = self._plan(snap)
        self.monitor.reset(snap, self.goal)

    def plan_note(self) -> dict[str, Any] | None:
        """Today's goal for the tracker's day event (the analyzer draws it against what was committed)."""
        if self.goal is None or self.rule_goal is None:
            return None

        def game_units(g: Goal) -> dict[str, list[float]]:
            return {k: [float(x) for x in getattr(g, k)] for k in ("q_buy", "p_buy", "q_sell", "p_sell")}

        return {"goal": game_units(self.goal), "rule_goal": game_units(self.rule_goal), "source": self.goal_source}

    def on_negotiation_success(self, contract, mechanism):
        self.version += 1  # the snapshot the next decision sees has changed
        if self.recorder is not None:
            self.recorder.deal(self, contract)
        return super().on_negotiation_success(contract, mechanism)

    # ------------------------------------------------------------ decisions
    def first_proposals(self):
        responses = self._decide({}, {})
        return {p: r.outcome if r.response == ResponseType.REJECT_OFFER else None for p, r in responses.items()}

    def counter_all(self, offers, states):
        return self._decide(offers, states)

    def on_clipped(self, kind: str, offers: dict, responses: dict[str, SAOResponse]) -> None:
        """Called by the shield hook with what was finally sent: each thread's history, as L3 reads it."""
        snap = self._batch_snapshot
        if snap is None:
            return
        suppliers = set(self.awi.my_suppliers)
        for p, r in responses.items():
            op = op_of(r)
            out = r.outcome if r.response == ResponseType.REJECT_OFFER else None
            offer = offers.get(p)
            self.history[p].append(round_features(
                snap, p in suppliers, tuple(offer) if offer is not None else None, out, op, self._rel_time.get(p, 0.0), snap.horizon
            ))

    def snapshot_for_shield(self) -> Snapshot | None:
        """The snapshot this batch was decided on, if nothing changed since (saves building it twice)."""
        snap = self._batch_snapshot
        if snap is not None and snap.version == self.version and snap.step == self.awi.current_step:
            return snap
        return None

    def _snapshot(self, offers: dict) -> Snapshot:
        return snapshot_from_awi(self.awi, horizon=self.horizon, version=self.version,
                                 initial_balance=self.initial_balance, offers=offers)

    def _running(self) -> list[str]:
        out = []
        for p, (negotiator, _) in self.negotiators.items():
            nmi = getattr(negotiator, "nmi", None)
            if nmi is not None and not nmi.state.ended:
                out.append(p)
        return sorted(out)

    def _decide(self, offers: dict, states: dict) -> dict[str, SAOResponse]:
        self._batch_snapshot = None
        partners = self._running()
        try:
            return self._layers(offers, states, partners)
        except Exception as e:  # never crash a world; the shield still clips whatever goes out
            self._fallback("agent", e)
            return {p: SAOResponse(ResponseType.END_NEGOTIATION, None) for p in partners}

    def _layers(self, offers: dict, states: dict, partners: list[str]) -> dict[str, SAOResponse]:
        snap = self._snapshot(offers)
        self._batch_snapshot = snap
        bounds = self.shield.bounds(snap)
        suppliers = set(self.awi.my_suppliers)
        is_buy = {p: p in suppliers for p in partners}
        rel = {}
        for p in partners:
            state = states.get(p) or self.negotiators[p][0].nmi.state
            rel[p] = float(getattr(state, "relative_time", 0.0) or 0.0)
        self._rel_time = rel
        goal = self.goal or heuristic_goal(snap, self.strategy)
        committed = self.monitor.committed_today(snap)
        remaining = self.monitor.remaining(snap, committed)
        mean_rel = float(np.mean(list(rel.values()))) if rel else 0.0
        c = self.monitor.broadcast(snap, bounds, self.builder.money_scale(snap), mean_rel, committed)
        static = self.builder.static(snap)
        offer_of = {p: (tuple(offers[p]) if offers.get(p) is not None else None) for p in partners}
        alpha = self._coordinate(snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel)
        self.batch_alpha = alpha
        n_side = {True: sum(is_buy.values()), False: len(partners) - sum(is_buy.values())}

        def rules() -> dict[str, tuple[SAOResponse, int]]:
            """The rule executor, computed only when something reads it. It plays against the rule goal (as the
            micro table records it for the experts, who have no L2), so the residual over the rules trains
            and plays on the same base whatever L2 plans; unless the executor's ``rules_goal`` is "l2" (a
            bundle whose planner was tuned in play to steer the rules: `hrlxf_rl.search`)."""
            steered = self.models is not None and self.models.executor.config.rules_goal == "l2"
            rule_goal = goal if steered else self.rule_goal or heuristic_goal(snap, self.strategy)
            left = self.monitor.remaining(snap, committed, rule_goal)
            return {p: heuristic_action(snap, bounds, rule_goal, left, n_side[is_buy[p]], is_buy[p], offer_of[p], rel[p],
                                        self.strategy) for p in partners}

        if self.models is None:
            return {p: r for p, (r, _) in rules().items()}
        try:
            ex = self.models.executor.config
            reads_rules = ex.heuristic_prior or (ex.mode == "residual" and ex.base == "rules")
            return self._execute(snap, bounds, goal, c, static, alpha, partners, is_buy, offer_of, rel,
                                 rules() if reads_rules else None, remaining)
        except Exception as e:
            self._fallback("L3", e)
            return {p: r for p, (r, _) in rules().items()}

    # ------------------------------------------------------------ layers
    def _plan(self, snap: Snapshot) -> Goal:
        """L2: the day's goal (the planner's residual over the rule goal)."""
        rule = self.rule_goal = heuristic_goal(snap, self.strategy)
        self.goal_source = "rules"
        if self.models is not None and "l2" not in self.ablate:
            try:
                m = self.builder.macro(snap)
                base = rule.vector(snap)
                if self.feature_log is not None:
                    self.feature_log.append({"step": snap.step, "x_static": m.x_static, "x_temporal": m.x_temporal,
                                             "x_role": m.x_role, "rule_goal": base})
                with torch.no_grad():  # not inference_mode: see NO_GRAD_WHY
                    xs, xt, xr = (torch.from_numpy(m.x_static)[None], torch.from_numpy(m.x_temporal)[None],
                                  torch.from_numpy(m.x_role)[None])
                    mean, _ = self.models.planner.raw_goal(xs, xt, xr)
                    explore = self._explores("l2")
                    log_std = self.noise.log_std_goal if explore else None
                    raw = self._decoder("l2").draw(mean, log_std)
                    g = self.models.planner.goal_of(raw, torch.from_numpy(base)[None], xr)
                if explore and self.recorder is not None:
                    logp, _ = goal_log_prob(mean, raw, log_std, xr)
                    self.recorder.plan(self, snap, {"x_static": m.x_static, "x_temporal": m.x_temporal, "x_role": m.x_role,
                                                    "base_goal": base, "raw_goal": raw[0].numpy(), "logp": float(logp)})
                g = g[0].numpy()
                if not np.all(np.isfinite(g)):
                    raise FloatingPointError("planner returned non-finite values")
                self.goal_source = "l2"
                return Goal.from_vector(g, snap)
            except Exception as e:
                self._fallback("L2", e)
        return rule

    def _coordinate(self, snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel) -> dict[str, float]:
        """L4: a priority per thread (the coordinator's residual over the teacher's rule, or the teacher)."""
        teacher = {p: teacher_alpha(snap, bounds, remaining, is_buy[p], offer_of[p], rel[p], self.strategy)
                   for p in partners}
        if self.models is None or not partners or "l4" in self.ablate:
            return teacher
        try:
            feats = self._thread_features(snap, bounds, remaining, partners, is_buy, offer_of, rel)
            glob = np.concatenate([static, c]).astype(np.float32)
            with torch.no_grad():  # not inference_mode: see NO_GRAD_WHY
                a = self.models.coordinator_fn(
                    torch.from_numpy(feats)[None], torch.ones(1, len(partners), dtype=torch.bool), torch.from_numpy(glob)[None],
                    torch.tensor([[teacher[p] for p in partners]], dtype=torch.float32),
                )[0].numpy()
            if not np.all(np.isfinite(a)):
                raise FloatingPointError("coordinator returned non-finite values")
            return {p: float(x) for p, x in zip(partners, a)}
        except Exception as e:
            self._fallback("L4", e)
            return teacher

    def _thread_features(self, snap, bounds, remaining, partners, is_buy, offer_of, rel) -> np.ndarray:
        return batch_thread_features(snap, bounds, remaining, partners, is_buy, offer_of, rel)

    def _execute(self, snap, bounds: Bounds, goal: Goal, c, static_row, alpha, partners, is_buy, offer_of, rel,
                 rules, remaining) -> dict[str, SAOResponse]:
        """L3 for every thread of the batch in one forward pass; decoding op -> delta -> (q, p)
        (`hrlxf_models.policy`: the modes, or draws when L3 explores).

        ``rules``: the rule executor's (response, delta) per thread, when the bundle reads it (its prior
        for op and delta, or its offer as the residual base)."""
        if not partners:
            return {}
        ex = self.models.executor
        N, H = ex.config.history, snap.horizon
        B = len(partners)
        rounds = np.zeros((B, N, 12), dtype=np.float32)
        keep = np.zeros((B, N), dtype=bool)
        masks = np.zeros((B, H + 1), dtype=np.float32)
        rooms = np.zeros((B, H + 1), dtype=np.float32)  # L1's room per day, in units of n_lines (q, p read it at delta)
        roles = np.zeros((B, 2), dtype=np.float32)
        prior_op = np.zeros((B, 3), dtype=np.float32)
        prior_delta = np.zeros((B, H + 1), dtype=np.float32)
        for i, p in enumerate(partners):
            past = self.history.get(p, [])[-(N - 1):] + [round_features(snap, is_buy[p], offer_of[p], None, None, rel[p], H)]
            rounds[i, N - len(past):] = np.stack(past)
            keep[i, N - len(past):] = True
            masks[i] = bounds.time_mask_buy if is_buy[p] else bounds.time_mask_sell
            rooms[i] = (bounds.q_safe_buy if is_buy[p] else bounds.q_safe_sell)[: H + 1] / snap.n_lines
            roles[i] = self.builder.role_one_hot(is_buy[p])
            if rules is not None:
                rule, rule_k = rules[p]
                prior_op[i, OP_INDEX[op_of(rule)]] = ex.config.heuristic_prior
                prior_delta[i, min(max(rule_k, 0), H)] = ex.config.heuristic_prior
        static = np.repeat(static_row[None], B, axis=0)
        goal_vec = np.repeat(goal.vector(snap)[None], B, axis=0)
        broadcast = np.repeat(c[None], B, axis=0)
        alphas = np.asarray([[alpha[p]] for p in partners], dtype=np.float32)
        has_offer = np.asarray([offer_of[p] is not None for p in partners])
        if self.l3_log is not None:  # a test's record of the inputs L3 reads; off by default
            for i, p in enumerate(partners):
                self.l3_log.append({"partner": p, "step": snap.step, "round": int(self.negotiators[p][0].nmi.state.step),
                                    "static": static[i], "goal": goal_vec[i], "role": roles[i], "broadcast": c, "alpha": alpha[p],
                                    "rounds": rounds[i], "keep": keep[i], "time_mask": masks[i], "room": rooms[i]})
        decoder = self._decoder("l3")
        with torch.no_grad():  # not inference_mode: see NO_GRAD_WHY
            out = self.models.executor_fn(
                torch.from_numpy(static), torch.from_numpy(goal_vec), torch.from_numpy(roles), torch.from_numpy(broadcast),
                torch.from_numpy(alphas), torch.from_numpy(rounds), torch.from_numpy(keep), torch.from_numpy(masks),
            )
            if not (torch.isfinite(out["op"]).all() and torch.isfinite(out["h"]).all()):
                raise FloatingPointError("executor returned non-finite values")
            op_logits, delta_logits = l3_logits(out["op"], out["delta"], torch.from_numpy(prior_op),
                                                torch.from_numpy(prior_delta), torch.from_numpy(has_offer))
            ops = decoder.pick(op_logits)
            deltas = torch.full((B,), NO_DELTA, dtype=torch.long)
            counter = ops == REJECT
            if counter.any():
                deltas[counter] = decoder.pick(delta_logits[counter])
        responses: dict[str, SAOResponse] = {}
        wanted: list[tuple[int, str, int]] = []  # (row, partner, delta) of the counter-offers to price
        for i, p in enumerate(partners):
            op = int(ops[i])
            if op == ACCEPT:
                responses[p] = SAOResponse(ResponseType.ACCEPT_OFFER, offer_of[p])
            elif op == END:
                responses[p] = SAOResponse(ResponseType.END_NEGOTIATION, None)
            else:
                wanted.append((i, p, int(deltas[i])))
        raw_qp = torch.zeros(B, 2)
        mean_qp = torch.zeros(B, 2)
        if wanted:
            offers, mean, raw = self._offers(snap, bounds, goal, is_buy, wanted, out["h"], rooms, rules, decoder)
            responses.update(offers)
            rows = torch.tensor([i for i, _, _ in wanted])
            mean_qp[rows], raw_qp[rows] = mean, raw
        if self.recorder is not None and self._explores("l3"):
            logp, _ = l3_log_prob(op_logits, delta_logits, ops, deltas, mean_qp, raw_qp, self.noise.log_std_qp.detach())
            self.recorder.decisions(self, snap, partners, {
                "static": static, "goal": goal_vec, "role": roles, "broadcast": broadcast, "alpha": alphas,
                "rounds": rounds, "keep": keep, "time_mask": masks, "room": rooms, "prior_op": prior_op,
                "prior_delta": prior_delta, "has_offer": has_offer, "op": ops.numpy(), "delta": deltas.numpy(),
                "raw_qp": raw_qp.numpy(), "logp": logp.numpy(),
                "gaps": np.stack([(remaining[0] if is_buy[p] else remaining[1]) for p in partners]).astype(np.float32),
            }, {"threads": self._thread_features(snap, bounds, remaining, partners, is_buy, offer_of, rel),
                "global": np.concatenate([static_row, c]).astype(np.float32)})
        return responses

    def _offers(self, snap: Snapshot, bounds: Bounds, goal: Goal, is_buy: dict, wanted: list, h: torch.Tensor,
                rooms: np.ndarray, rules: dict | None, decoder: Any) -> tuple[dict[str, SAOResponse], torch.Tensor, torch.Tensor]:
        """(q, p) of every counter-offer at once, read at its chosen day: around the base (residual) or
        absolute (direct). Returns the offers, the heads' (q, p) output and the raw values played.

        The base is L1's baseline offer for the chosen day, or (``base="rules"``) the rule executor's
        counter-offer when it is for that day: an untrained residual L3 then offers what the rules do."""
        idx = bucket_index(snap.horizon)
        on_rules = self.models.executor.config.base == "rules" and rules is not None
        rows, base_q, base_p, catalogs = [], [], [], []
        for i, p, k in wanted:
            buy = is_buy[p]
            catalog = snap.catalog_price_in if buy else snap.catalog_price_out
            base = rule_offer_for(rules[p][0] if on_rules else None, snap.step + k) \
                or self.shield.baseline(snap, bounds, buy, k)
            if base is None:
                base_q.append(1.0 / snap.n_lines)
                base_p.append((goal.p_buy if buy else goal.p_sell)[idx[k]] / catalog)
            else:
                base_q.append(base[0] / snap.n_lines)
                base_p.append(base[2] / catalog)
            rows.append(i)
            catalogs.append(catalog)
        sel = torch.tensor(rows)
        with torch.no_grad():  # not inference_mode: see NO_GRAD_WHY
            mean_q, mean_p = self.models.executor_fn.quantity_price_heads(
                h[sel], torch.tensor([k for _, _, k in wanted]), torch.from_numpy(rooms[rows]))
            if not (torch.isfinite(mean_q).all() and torch.isfinite(mean_p).all()):
                raise FloatingPointError("executor returned non-finite values")
            mean = torch.stack([mean_q, mean_p], dim=-1)
            raw = decoder.draw(mean, self.noise.log_std_qp if decoder.sampling else None)
            q, price = self.models.executor.quantity_price(raw[:, 0], raw[:, 1], torch.tensor(base_q), torch.tensor(base_p))
        result = {}
        for j, (i, p, k) in enumerate(wanted):
            quantity = max(1, int(round(float(q[j]) * snap.n_lines)))
            result[p] = SAOResponse(ResponseType.REJECT_OFFER, (quantity, snap.step + k, float(price[j]) * catalogs[j]))
        return result, mean, raw

    def _explores(self, layer: str) -> bool:
        return layer in self.explore and self.sampler is not None and self.noise is not None

    def _decoder(self, layer: str) -> Any:
        return self.sampler if self._explores(layer) else GREEDY

    def _fallback(self, layer: str, error: Exception) -> None:
        if not self.fallbacks[layer]:
            log.warning("%s: %s failed (%s: %s); using the rule-based %s from now on where it fails",
                        getattr(self, "id", "?"), layer, type(error).__name__, error, layer)
        self.fallbacks[layer] += 1


#: NO_GRAD_WHY: TorchScript specialises a compiled method, shared by every instance of the class, on its first
#: runs; in a process that first ran it with autograd (a test, training code), a later call under
#: torch.inference_mode failed with "Inference tensors cannot be saved for backward" and L3 fell back to the
#: rules (tests/test_models.py then tests/test_hrl_agent.py). no_grad works either way.
_Shielded = intercept(HRLPolicy, ShieldHook, "Shielded")


class LitaAgentHRL(_Shielded):  # type: ignore[misc, valid-type]
    """The HRL-XF agent: ``LitaAgentHRL(bundle=None | "latest" | path)``; every batch behind the L1 shield."""
