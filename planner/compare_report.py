"""``plan SPEC --compare AXIS=V1,V2``: a Comparison (planner/capacity/compare.py) as one aligned
table, a column per value and a row per memory and time term, or as one JSON object.  The rows
add up as the text report's do: the memory terms to the peak allocated, the peak plus the
allocator's fragmentation and the CUDA context to what the plan requires, the time terms to the
step time.  Nothing here computes an estimate; it only formats."""
from __future__ import annotations

from typing import Any, Callable, Optional

from tabulate import tabulate

from planner.capacity.compare import Comparison, Variant
from planner.estimate.predict import Estimate
from planner.estimate.timing import StepTime
from planner.model.memory_terms import TERMS
from planner.report import TERM_LABELS, TIME_LABELS, estimate_json
from planner.spec.units import GiB

#: StepTime's terms, in its order (a new term without a label is a KeyError in every table)
TIME_TERMS = tuple(k for k in StepTime().as_dict() if k != "total")

#: a row: its label, the value of an estimate, how a value and a difference are written
Row = tuple[str, Callable[[Estimate], Any], Callable[[Any], str], Optional[Callable[[Any], str]]]


def _gib(x: float) -> str:
    return f"{x / GiB:.3f}"


def _dgib(x: float) -> str:
    return f"{x / GiB:+.3f}"


def _s(x: float) -> str:
    return f"{x:.4g}"


def _ds(x: float) -> str:
    return f"{x:+.4g}"


def _days(x: float) -> str:
    # a tiny spec trains in minutes: 0.0 days would hide the difference
    return f"{x:,.1f}" if abs(x) >= 1 else f"{x:.2g}"


def _ddays(x: float) -> str:
    return f"{x:+,.1f}" if abs(x) >= 1 else f"{x:+.2g}"


def _rows(c: Comparison) -> list[tuple[str, list[Row]]]:
    """The table's sections and rows, in the text report's order."""
    spec, tokens = c.spec, c.tokens
    frag, headroom = spec.runtime.allocator_fragmentation, spec.search.memory_headroom
    memory: list[Row] = [(TERM_LABELS[t], (lambda e, t=t: getattr(e.memory, t)), _gib, _dgib)
                         for t in TERMS]
    memory += [
        ("= peak allocated", lambda e: e.memory.total, _gib, _dgib),
        (f"+ allocator fragmentation ({frag:.0%} of allocated)",
         lambda e: e.reserved_bytes - e.memory.total, _gib, _dgib),
        ("+ CUDA context (outside the allocator)", lambda e: e.cuda_context_bytes, _gib, _dgib),
        ("= required", lambda e: e.required_bytes, _gib, _dgib),
        (f"usable (capacity less {headroom:.0%} headroom)", lambda e: e.usable_bytes, _gib, None),
        ("free (usable - required)", lambda e: e.free_bytes, _gib, _dgib),
        ("verdict", lambda e: e.verdict, str, None),
    ]
    if any(v.estimate is not None and v.estimate.host_bytes_per_node for v in c.variants):
        memory.append(("host RAM for offload per node", lambda e: e.host_bytes_per_node, _gib,
                       _dgib))
    time: list[Row] = [(TIME_LABELS[k], (lambda e, k=k: getattr(e.time.step, k)), _s, _ds)
                       for k in TIME_TERMS]
    time += [
        ("= step", lambda e: e.step_time_s, _s, _ds),
        ("tokens/s", lambda e: e.tokens_per_s, lambda x: f"{x:,.0f}", lambda x: f"{x:+,.0f}"),
        ("MFU", lambda e: e.mfu, lambda x: f"{x:.1%}", lambda x: f"{x * 100:+.1f} pp"),
    ]
    if tokens:
        time.append((f"days for {tokens:.3g} tokens", lambda e: e.days_to_train(tokens), _days,
                     _ddays))
    return [("per-GPU memory (GiB):", memory), ("step time (s):", time)]


def _header(v: Variant, axis: str) -> str:
    return f"{axis}={v.text}"


def compare_text(c: Comparison, source: str = "") -> str:
    """The plans compared, one line each (a rejected value with its rule's reason), then the
    table; with two estimated values, a column of the second minus the first."""
    spec, axis = c.spec, c.axis
    title = f" ({spec.name})" if spec.name else ""
    lines = [f"pretrain-planner: {source}{title}, compare {axis}",
             f"best plan  {c.best.plan.label}",
             f"columns    the best plan with {axis} set to each value (dp and grad_accum follow, "
             f"as the search derives them)", ""]
    width = max(len(_header(v, axis)) for v in c.variants)
    for v in c.variants:
        head = _header(v, axis).ljust(width)
        if v.rejected is not None:
            lines.append(f"  {head}  {v.plan.label}: rejected ({v.rejected.rule}): "
                         f"{v.rejected.reason}")
            continue
        notes = ["the best plan"] if v.is_best else []
        notes += ["tight"] if v.estimate.verdict == "tight" else []
        notes += ([f"plan --execute cannot run it: {v.estimate.not_executable}"]
                  if v.estimate.not_executable else [])
        lines.append(f"  {head}  {v.plan.label}" + (f" ({'; '.join(notes)})" if notes else ""))
    diff = c.difference
    headers = [""] + [_header(v, axis) for v in c.variants]
    if diff is not None:
        headers.append(f"{c.variants[1].text} - {c.variants[0].text}")
    table = []
    for section, rows in _rows(c):
        table.append([section] + [""] * (len(headers) - 1))
        for label, value, fmt, dfmt in rows:
            cells = ["rejected" if v.estimate is None and label == "verdict" else
                     "" if v.estimate is None else fmt(value(v.estimate)) for v in c.variants]
            if diff is not None:
                cells.append("" if dfmt is None else dfmt(value(diff[1]) - value(diff[0])))
            table.append([label] + cells)
    lines += ["", tabulate(table, headers=headers, disable_numparse=True,
                           colalign=("left",) + ("right",) * (len(headers) - 1))]
    return "\n".join(lines)


def compare_json(c: Comparison, source: str = "") -> dict[str, Any]:
    """One object: each value's plan, its rule's rejection or its estimate (as the report's JSON
    writes a plan, docs/json-report.md), and, for two estimated values, second minus first."""
    diff = c.difference
    difference = None
    if diff is not None:
        a, b = diff
        difference = {
            "memory_gib": {k: b.memory.as_gib()[k] - a.memory.as_gib()[k]
                           for k in a.memory.as_gib()},
            "required_gib": (b.required_bytes - a.required_bytes) / GiB,
            "step_time_breakdown_s": {k: b.time.step.as_dict()[k] - a.time.step.as_dict()[k]
                                      for k in a.time.step.as_dict()},
            "tokens_per_s": b.tokens_per_s - a.tokens_per_s,
            "mfu": b.mfu - a.mfu,
            "days_to_train": (b.days_to_train(c.tokens) - a.days_to_train(c.tokens)
                              if c.tokens else None),
        }
    return {
        "mode": "compare",
        "spec": source,
        "name": c.spec.name,
        "axis": c.axis,
        "best_plan": {"label": c.best.plan.label, "strategy": c.best.plan.to_dict()},
        "values": [{"value": v.plan.to_dict()[c.axis], "label": v.plan.label,
                    "strategy": v.plan.to_dict(), "is_best": v.is_best,
                    "rejected": (None if v.rejected is None else
                                 {"rule": v.rejected.rule, "reason": v.rejected.reason}),
                    "estimate": (None if v.estimate is None else
                                 estimate_json(v.estimate, c.tokens))}
                   for v in c.variants],
        "difference": difference,
    }


__all__ = ["compare_text", "compare_json", "TIME_LABELS", "TIME_TERMS"]
