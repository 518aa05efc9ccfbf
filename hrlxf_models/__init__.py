"""The learned layers as plain torch nn.Modules with dataclass configs.

planner (L2), executor (L3), coordinator (L4). Lightning and the losses live in
training code only; the runtime agent imports these modules and nothing else.
"""

from .coordinator import Coordinator, CoordinatorConfig
from .executor import Executor, ExecutorConfig
from .planner import GOAL_DIM, Planner, PlannerConfig

__all__ = ["Coordinator", "CoordinatorConfig", "Executor", "ExecutorConfig", "GOAL_DIM", "Planner", "PlannerConfig"]
