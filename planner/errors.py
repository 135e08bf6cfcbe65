"""Project exceptions.  Only the CLI prints them and picks exit codes."""
from __future__ import annotations


class PlannerError(Exception):
    """A problem the user can fix; its message is one line (a control character the user wrote,
    in a key say, is shown escaped: ``model.n_layers\\n``)."""

    def __str__(self) -> str:
        text = super().__str__()
        return text if text.isprintable() else "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class SpecError(PlannerError):
    """Invalid spec: names the field path (``model.n_heads``) and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class InfeasibleError(PlannerError):
    """No strategy in the search space can run; the message carries the reasons and a fix."""
