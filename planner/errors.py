"""Project exceptions.  Only the CLI prints them and picks exit codes."""
from __future__ import annotations


class PlannerError(Exception):
    """A problem the user can fix; its message is one line."""


class SpecError(PlannerError):
    """Invalid spec: names the field path (``model.n_heads``) and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class InfeasibleError(PlannerError):
    """No strategy in the search space can run; the message carries the reasons and a fix."""
