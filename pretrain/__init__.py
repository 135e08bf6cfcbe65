"""The `plan` command: the surface that drives both the planner and the executor."""
