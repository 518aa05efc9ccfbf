"""Agents that break worlds on purpose (used by the audit runner's failure tests)."""

import os

from scml_agents.scml2024.standard.team_penguin.penguinagent import PenguinAgent


class RaisingAgent(PenguinAgent):
    """Raises inside the world on day 2."""

    def before_step(self):
        if self.awi.current_step == 2:
            raise RuntimeError("boom on day 2")
        return super().before_step()


class DyingAgent(PenguinAgent):
    """Kills its whole process on day 2 (a worker that dies)."""

    def before_step(self):
        if self.awi.current_step == 2:
            os._exit(3)
        return super().before_step()


class HangingAgent(PenguinAgent):
    """Never returns from day 2 (a world that must time out)."""

    def before_step(self):
        if self.awi.current_step == 2:
            import time

            while True:
                time.sleep(0.05)
        return super().before_step()
