"""Execution backends: what each can run (rules of the same form as planner/search/rules.py) and
the memory and time mechanisms the estimators price for it.  planner/backends/base.py is the seam;
deepspeed/ is the one backend today."""
