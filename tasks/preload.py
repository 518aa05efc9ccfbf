"""What the fork server of `tasks.parallel.in_fresh_process` imports once, before it forks any unit.

A speed-up only: a unit forked from the server finds these modules imported (tasks.tables brings torch, 1.2 s
a unit otherwise; pyarrow imports pandas on its first ``pa.array``, 0.3 s a unit otherwise), and importing a
module changes no unit's result. In a module of its own, of literals only, so that a stage's code version
(`tasks.code_version`, which counts strings naming project modules in code that runs) does not take these
modules for code the stage runs: an edit to the evaluation's code does not recompute the tables.
"""

#: a world of collect, of the evaluation, a rollout, a world's lake tables, its goal_hat
PRELOAD = ("tasks.collect", "tasks.evaluate", "hrlxf_rl.rollout", "tasks.events", "tasks.world_tables", "tasks.micro",
           "tasks.l4_distill", "tasks.goal_hat", "pandas", "pyarrow.compute")
