"""Online learning in real worlds (DESIGN.md section 5): rollouts, L3 by thread-level MAPPO, L2 by PPO.

- `rollout`: one real std world with our agent sampling in its slots against a league; what it records.
- `rewards`: the day's reward (L2) and each thread's (L3), from the world's own records.
- `ppo`: GAE and the clipped losses, pure functions.
- `mappo`: the L3 update (shared actor, centralised critic over the active threads).
- `l2_ppo`: the L2 update (one step a day).
- `racing`: the racing gate over the strategy template (its statistics; the race that plays it is `tasks/race.py`,
  the pipeline's `finetune` stage).
The PPO loop, its checkpoints and its logs are `hrlxf finetune` (`tasks/finetune.py`).
"""
