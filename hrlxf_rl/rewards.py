"""Rewards from the world's own records (DESIGN.md section 5), in the score's unit (money / initial balance).

L2, one step a day t: r_t = profit_t + gamma Phi(s_{t+1}) - Phi(s_t) - shortfall_weight x shortfall_t.
profit_t is the day's balance change: the days' profits sum to the world's score - 1 (scml 0.8.4 scores a
factory by its final balance over its initial one; stock left at the end is worth nothing). Phi values
only the stock that can still become sales before the end, min(stock, n_lines x days left) at the output
price net of production: Phi is 0 after the last day whatever the stock, so hoarding earns nothing and the
shaping sums to -Phi(s_0) over a world.

L3, one episode a thread (a partner on a day): at its last decision the thread gets its share of the day's
reward (split evenly over the day's threads), the alignment of its deal with the goal gap of the deal's
bucket (units that fill the gap, less a penalty for units beyond it, in n_lines) and the advantage of its
price against the market (q x (p - trading price) for a sale, the reverse for a purchase, / initial balance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrlxf_models.planner import bucket_of


@dataclass
class RewardConfig:
    scale: float = 100.0  # every reward x scale: percent of the initial balance
    gamma: float = 0.99  # L2's discount (Phi's shaping uses the same)
    shortfall_weight: float = 0.25  # x shortfall quantity x output trading price / initial balance
    team_weight: float = 1.0  # L3: the thread's share of the day's reward
    alignment_weight: float = 0.0005  # L3: per n_lines of the goal gap filled (x scale)
    over_penalty: float = 0.5  # L3: alignment lost per n_lines beyond the gap
    advantage_weight: float = 1.0  # L3: the deal's price against the market

    def validate(self) -> None:
        if self.scale <= 0 or not 0 < self.gamma <= 1:
            raise ValueError(f"rewards: scale must be > 0 and gamma in (0, 1], got {self.scale}, {self.gamma}")
        for k in ("shortfall_weight", "team_weight", "alignment_weight", "over_penalty", "advantage_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"rewards.{k} = {getattr(self, k)} must be >= 0")


def potential(stock: np.ndarray, n_lines: np.ndarray, days_left: np.ndarray, price_out: np.ndarray,
              production_cost: np.ndarray, initial_balance: float) -> np.ndarray:
    """Phi: the stock that can still be produced and sold before the end, valued at the output price net of
    production, / initial balance. ``days_left`` counts today (0 after the last day)."""
    sellable = np.minimum(np.asarray(stock, dtype=float), np.asarray(n_lines, dtype=float) * np.maximum(0, days_left))
    return sellable * np.maximum(0.0, np.asarray(price_out, dtype=float) - production_cost) / initial_balance


def day_rewards(days: dict[str, np.ndarray], final_balance: float, shortfall: np.ndarray,
                config: RewardConfig) -> dict[str, np.ndarray]:
    """L2's reward per recorded day and its parts (each already x scale).

    ``days``: the state at the start of each day (step, balance, stock, n_lines, n_steps, price_out,
    production_cost, initial_balance), as the rollout recorder writes it; ``final_balance``: after the last
    day; ``shortfall``: scml's daily shortfall quantity (``world.stats``)."""
    steps = np.asarray(days["step"], dtype=int)
    initial = float(days["initial_balance"][0])
    balance = np.append(np.asarray(days["balance"], dtype=float), final_balance)
    profit = np.diff(balance) / initial
    phi = potential(days["stock"], days["n_lines"], days["n_steps"] - steps, days["price_out"], days["production_cost"], initial)
    phi_next = np.append(phi[1:], 0.0)  # after the last day nothing can be sold
    short = np.asarray(shortfall, dtype=float)[steps] * np.asarray(days["price_out"], dtype=float) / initial
    shaping = config.gamma * phi_next - phi
    reward = profit + shaping - config.shortfall_weight * short
    return {"reward": config.scale * reward, "profit": config.scale * profit, "shaping": config.scale * shaping,
            "shortfall": config.scale * short}


def thread_ids(steps: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """One id per (day, partner): the episodes of L3."""
    keys = np.char.add(np.char.add(np.asarray(steps).astype(str), "|"), np.asarray(partners).astype(str))
    return np.unique(keys, return_inverse=True)[1]


def thread_rewards(decisions: dict[str, np.ndarray], deals: dict[str, np.ndarray], day: dict[str, np.ndarray],
                   days: dict[str, np.ndarray], horizon: int, config: RewardConfig) -> dict[str, np.ndarray]:
    """L3's reward per decision (0 except at a thread's last decision) and ``done`` (1 there), with the parts.

    ``decisions`` in the order they were made (step, partner, is_buy from the role, gaps per bucket at the
    decision); ``deals``: step, partner, quantity, delivery, price of each agreement; ``day``: `day_rewards`."""
    n = len(decisions["step"])
    steps = np.asarray(decisions["step"], dtype=int)
    partners = np.asarray(decisions["partner"]).astype(str)
    ids = thread_ids(steps, partners)
    last = np.zeros(n, dtype=bool)
    seen: set[int] = set()
    for i in range(n - 1, -1, -1):
        if ids[i] not in seen:
            seen.add(ids[i])
            last[i] = True
    day_of = {int(s): i for i, s in enumerate(np.asarray(days["step"], dtype=int))}
    initial = float(days["initial_balance"][0])
    threads_per_day = {int(s): len(set(ids[steps == s])) for s in np.unique(steps)}
    deal_of = {(int(s), str(p)): (float(q), int(t), float(u)) for s, p, q, t, u in zip(
        deals.get("step", []), deals.get("partner", []), deals.get("quantity", []), deals.get("delivery", []),
        deals.get("price", []))}
    team = np.zeros(n, dtype=np.float32)
    align = np.zeros(n, dtype=np.float32)
    adv = np.zeros(n, dtype=np.float32)
    for i in np.flatnonzero(last):
        s, p = int(steps[i]), partners[i]
        d = day_of.get(s)
        if d is not None:
            team[i] = day["reward"][d] / threads_per_day[s]
        deal = deal_of.get((s, p))
        if deal is None or d is None:
            continue
        q, t, price = deal
        is_buy = bool(decisions["role"][i][0] > 0.5)
        gap = float(decisions["gaps"][i][bucket_of(max(0, t - s), horizon)])
        n_lines = float(days["n_lines"][d])
        align[i] = (min(q, gap) - config.over_penalty * max(0.0, q - gap)) / n_lines
        market = float(days["price_in"][d] if is_buy else days["price_out"][d])
        adv[i] = config.scale * q * ((market - price) if is_buy else (price - market)) / initial
    reward = config.team_weight * team + config.alignment_weight * config.scale * align + config.advantage_weight * adv
    return {"reward": reward.astype(np.float32), "done": last.astype(np.float32), "thread": ids,
            "team": team, "alignment": align, "advantage": adv}
