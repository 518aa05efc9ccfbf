"""Agents with scripted random draws (the common-random-numbers tests of tests/test_evaluate.py).

``DrawRecorder`` (an opponent) notes what it draws from Python's and numpy's generators at the start of
each day; ``QuietAgent`` and ``NoisyAgent`` play alike but the noisy one draws more at the end of each
day, as a candidate that samples more than another would.
"""

import random

import numpy as np
from scml.std.agents import GreedyStdAgent


class DrawRecorder(GreedyStdAgent):
    """Records (day, random.random(), numpy.random.random()) at the start of each day."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = []

    def before_step(self):
        self.draws.append((self.awi.current_step, random.random(), float(np.random.random())))
        return super().before_step()


class QuietAgent(GreedyStdAgent):
    """Draws nothing of its own."""


class NoisyAgent(GreedyStdAgent):
    """Draws three numbers from each generator at the end of every day."""

    def step(self):
        for _ in range(3):
            random.random()
            np.random.random()
        return super().step()
