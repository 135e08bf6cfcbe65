"""The executor's own exception.  Only the CLI (pretrain/cli.py) prints it and picks the exit
code, as it does for the planner's PlannerError."""
from __future__ import annotations


class ExecutorError(Exception):
    """A problem with a run the user can fix (a path, a checkpoint, a plan this machine cannot
    launch); its message is one line."""
