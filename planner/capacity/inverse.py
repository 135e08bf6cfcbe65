"""Inverse questions: the largest micro-batch or sequence length that fits, and the Answer every
question gives (planner/capacity/sizing.py answers the fewest GPUs and the largest model with
it).  Each answer names the constraint that binds: what rejects the very next value.

Memory questions are solved with sympy.  For a fixed plan, the memory at any one moment of the step
is a polynomial in the micro-batch (affine) and in the sequence length (affine with a fused
attention kernel, quadratic with eager attention's s x s scores and probabilities).  The solver
samples the planner's own estimate at degree + 1 values, interpolates the exact polynomial in
rational arithmetic, checks it at one more value, and solves required(x) = usable.  The peak can
move to another moment, and gradient accumulation changes with x, so the formula is piecewise: the
root is checked against the real estimate and the polynomial refitted around it, with bisection
as the fallback.
"""
from __future__ import annotations

import bisect
import copy
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from planner.capacity.scaling import training_tokens
from planner.capacity.whatif import set_path
from planner.errors import InfeasibleError, SpecError
from planner.estimate.predict import Estimate, estimate, usable_bytes
from planner.plan.strategy import Plan
from planner.search.engine import SearchResult, grad_accum, search, why_infeasible
from planner.search.rules import check
from planner.spec.loading import spec_from_dict, spec_to_dict
from planner.spec.spec import MAX_MICRO_BATCH, Spec
from planner.spec.units import AttentionKernel, GiB

if TYPE_CHECKING:
    import sympy

#: valid values above the memory boundary that are still checked one by one: memory need not be
#: monotone (the micro-batch that ends gradient accumulation drops the carried gradients; fewer
#: micro-batches than pipeline stages keep fewer in flight)
CHECK_ABOVE = 64


@dataclass(frozen=True)
class Answer:
    question: str
    value: Optional[int]  #: None when not even the smallest value works
    binding: str  #: the constraint that rejects the next value
    method: str  #: "sympy" or "bisection"
    memory_limit: Optional[float] = None  #: real root of required(x) = usable
    expression: Optional[str] = None  #: the fitted required(x), GiB
    estimate: Optional[Estimate] = None  #: of the answer
    label: str = ""  #: what the value stands for, when a number is not enough
    tokens: Optional[float] = None  #: what the answer's plan trains (for its time and cost)

    def __str__(self) -> str:
        what = f" = {self.label}" if self.label else ""
        return f"{self.question}: {self.value}{what} (binding: {self.binding}; {self.method})"


@dataclass(frozen=True)
class _Point:
    x: int
    est: Optional[Estimate]  #: None when the value does not give a valid spec
    invalid: str  #: the rule (or spec error) the value breaks; "" when valid

    @property
    def fits(self) -> bool:
        """Fits with the spec's allocator fragmentation (a tight value is not an answer to
        'the largest that fits': it runs only if the allocator fragments less)."""
        return self.est is not None and self.est.fits_comfortably


@dataclass
class _Variable:
    """One quantity to maximise: its candidate values and how each becomes a (spec, plan)."""

    name: str
    values: Sequence[int]  #: candidates, ascending
    degree: int  #: of required(x) within one regime
    build: Callable[[int], tuple[Optional[Spec], Optional[Plan], str]]
    end: str  #: what binds when the largest candidate works
    choices: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)

    def choice(self, x: int) -> tuple[Optional[Spec], Optional[Plan], str]:
        """(spec, plan, the rule or spec error the value breaks, or "")."""
        if x not in self.choices:
            spec, plan, invalid = self.build(x)
            if spec is not None and not invalid:
                why = check(spec, plan)
                invalid = "" if why is None else f"{why.rule}: {why.reason}"
            self.choices[x] = (spec, plan, invalid)
        return self.choices[x]

    def valid(self, x: int) -> bool:
        return not self.choice(x)[2]

    def __call__(self, x: int) -> _Point:
        if x not in self.points:
            spec, plan, invalid = self.choice(x)
            est = None if spec is None else estimate(spec, plan, with_time=False)
            self.points[x] = _Point(x, est, invalid)
        return self.points[x]


# --------------------------------------------------------------------------- the memory solver

def _fit(var: _Variable, xs: list[int]) -> Optional["sympy.Expr"]:
    """required(x) through the first degree + 1 samples, if the last sample agrees."""
    import sympy  # here, not at the top: only the memory questions need it (0.2 s to import)
    pts = [var(x) for x in xs]
    if any(p.est is None for p in pts) or len(pts) < var.degree + 2:
        return None
    x = sympy.Symbol("x")
    poly = sympy.expand(sympy.interpolate(
        [(p.x, sympy.Rational(p.est.required_bytes)) for p in pts[:-1]], x))
    last = pts[-1]
    if abs(float(poly.subs(x, last.x)) - last.est.required_bytes) > 1e-9 * last.est.required_bytes:
        return None
    return poly


def _root(poly: "sympy.Expr", usable: float, near: float) -> float:
    """Where the polynomial rises through usable (inf: never; -inf: already above)."""
    import sympy
    x = sympy.Symbol("x")
    slope = sympy.diff(poly, x)
    rising = [float(r) for r in sympy.solve(sympy.Eq(poly, sympy.Rational(usable)), x)
              if r.is_real and float(slope.subs(x, r)) > 0]
    if rising:
        return min(rising, key=lambda r: abs(r - near))
    return math.inf if float(poly.subs(x, near)) <= usable else -math.inf


def _memory_boundary(var: _Variable, usable: float) -> tuple[int, str, Optional[float], str]:
    """(index of the last value whose memory fits, -1 if none; method; root; expression).

    Doubling brackets the boundary; the polynomial is fitted on the values ending at the first
    one that does not fit (the moment that binds), solved, and checked on both sides of the root.
    A failed check narrows the bracket and refits there; samples that straddle a change of regime
    (another moment peaks, gradient accumulation reaches 1) halve it instead."""
    values = var.values

    def ok(i: int) -> bool:
        return _mem_ok(var(values[i]), usable)

    lo, hi = -1, 0
    while hi < len(values) and ok(hi):
        lo, hi = hi, 2 * hi + 1
    if hi >= len(values):
        if ok(len(values) - 1):
            return len(values) - 1, "bisection", None, None
        hi = len(values) - 1
    while hi - lo > 1:
        poly = _fit(var, values[max(0, hi - var.degree - 1):hi + 1])
        if poly is None:  # the samples straddle a change of regime: halve the bracket
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
            continue
        root = _root(poly, usable, values[hi])
        i = min(max(bisect.bisect_right(values, root) - 1, lo), hi - 1)
        if i >= 0 and not ok(i):
            hi = i
        elif ok(i + 1):
            lo = i + 1
        else:
            import sympy
            return i, "sympy", root, f"{sympy.N(poly / GiB, 6)} GiB"
    return lo, "bisection", None, None


def _mem_ok(p: _Point, usable: float) -> bool:
    return p.est is not None and p.est.required_bytes <= usable


def _binding(var: _Variable, i: int, usable: float, memory_max: Optional[int]) -> str:
    """What rejects the value after index i: a rule, or memory at the moment it peaks."""
    if i + 1 >= len(var.values):
        return var.end
    nxt = var(var.values[i + 1])
    if nxt.est is None:
        return nxt.invalid
    if nxt.invalid and _mem_ok(nxt, usable):
        return f"{nxt.invalid}; memory alone allows {var.name} up to {memory_max}"
    return (f"memory at {nxt.est.memory.moment} ({var.name} {nxt.x} needs "
            f"{nxt.est.required_bytes / GiB:.2f} GiB, {usable / GiB:.2f} usable)")


def _solve(question: str, var: _Variable, usable: float) -> Answer:
    values = var.values
    boundary, method, root, expr = _memory_boundary(var, usable)
    memory_max = values[boundary] if boundary >= 0 else None
    above = []  # memory need not be monotone (see CHECK_ABOVE): check the next valid values too
    for k in range(boundary + 1, len(values)):
        if var.valid(values[k]):
            above.append(k)
            if len(above) == CHECK_ABOVE:
                break
    boundary = max((k for k in above if var(values[k]).fits), default=boundary)
    best = next((k for k in range(boundary, -1, -1)
                 if var.valid(values[k]) and var(values[k]).fits), None)
    if best is None:
        first = var(values[0])
        why = first.invalid or _binding(var, -1, usable, memory_max)
        return Answer(question, None, why, method, root, expr)
    return Answer(question, values[best], _binding(var, best, usable, memory_max), method, root,
                  expr, var(values[best]).est)


# ------------------------------------------------------------------------------ the questions

def _best_plan(spec: Spec, plan: Optional[Plan]) -> Plan:
    if plan is not None:
        return plan
    result = search(spec)
    if result.best is None:
        raise InfeasibleError(why_infeasible(result))
    return result.best.plan


def largest_micro_batch(spec: Spec, plan: Optional[Plan] = None) -> Answer:
    """The largest micro-batch that fits with the plan's other choices (default: the best plan);
    gradient accumulation follows from the global batch, as in the search."""
    plan = _best_plan(spec, plan)
    gb = spec.global_batch_sequences
    share = max(1, gb // plan.dp)

    def build(mb: int):
        return spec, replace(plan, micro_batch=mb, grad_accum=grad_accum(spec, plan.dp, mb)), ""

    var = _Variable("micro_batch", range(1, min(share, MAX_MICRO_BATCH) + 1), 1, build,
                    f"the global batch: {gb} sequences over dp {plan.dp} leave {share} per rank")
    return _solve("largest micro-batch", var, usable_bytes(spec))


def seq_len_values(spec: Spec, multiple_of: int, cap: int) -> list[int]:
    """Multiples of multiple_of up to cap; with global_batch_tokens, only its divisors."""
    tokens = spec.training.global_batch_tokens
    values = range(multiple_of, cap + 1, multiple_of)  # cap / multiple_of steps, whatever tokens
    return list(values) if tokens is None else [s for s in values if tokens % s == 0]


def _with_seq_len(written: dict, s: int) -> tuple[Optional[Spec], str]:
    data = copy.deepcopy(written)
    set_path(data, "model.seq_len", s)
    try:
        return spec_from_dict(data), ""
    except SpecError as exc:
        return None, str(exc)


def largest_seq_len(spec: Spec, plan: Optional[Plan] = None, multiple_of: int = 128,
                    cap: int = 2**20) -> Answer:
    """The largest sequence length (a multiple of multiple_of) that trains on the spec's cluster.
    Without a plan the search re-plans at every length (parallel degrees, ZeRO, micro-batch and
    recompute all change with it); with one, the plan's choices are held and only gradient
    accumulation follows (a memory formula, solved with sympy).  The global batch keeps its
    definition (tokens or sequences)."""
    values = seq_len_values(spec, multiple_of, cap)
    if plan is None:
        return _replanned_seq_len(spec, values, cap)
    written = spec_to_dict(spec)

    def build(s: int):
        edited, why = _with_seq_len(written, s)
        if edited is None:
            return None, None, why
        return edited, replace(plan, grad_accum=grad_accum(edited, plan.dp, plan.micro_batch)), ""

    degree = 2 if spec.model.attention is AttentionKernel.EAGER else 1
    var = _Variable("seq_len", values, degree, build, f"the largest value considered ({cap})")
    return _solve("largest seq_len", var, usable_bytes(spec))


#: lengths above the bisection's answer that are still searched (feasibility need not be
#: monotone in the length: a length that divides the batch differently can fit again)
CHECK_ABOVE_REPLANNED = 8


def _replanned_seq_len(spec: Spec, values: list[int], cap: int) -> Answer:
    written = spec_to_dict(spec)
    results: dict[int, tuple[Optional[SearchResult], str]] = {}

    def run(i: int) -> tuple[Optional[SearchResult], str]:
        if i not in results:
            edited, why = _with_seq_len(written, values[i])
            result = None if edited is None else search(edited)
            results[i] = (result, why if result is None else (
                "" if result.best is not None else why_infeasible(result)))
        return results[i]

    def ok(i: int) -> bool:
        return not run(i)[1]

    lo, hi = -1, 0
    while hi < len(values) and ok(hi):
        lo, hi = hi, 2 * hi + 1
    hi = min(hi, len(values))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    for i in range(lo + 1, min(lo + 1 + CHECK_ABOVE_REPLANNED, len(values))):
        if ok(i):
            lo = i
    method = "bisection, re-planned at each length"
    if lo < 0:
        return Answer("largest seq_len", None, f"seq_len {values[0]}: {run(0)[1]}", method)
    binding = (f"the largest value considered ({cap})" if lo + 1 >= len(values)
               else f"seq_len {values[lo + 1]}: {run(lo + 1)[1]}")
    best = run(lo)[0].best
    return Answer("largest seq_len", values[lo], binding, method, estimate=best,
                  label=f"with {best.plan.label}", tokens=training_tokens(run(lo)[0].spec))
