"""Sizing questions, answered by running the whole search: the fewest GPUs on which the spec's
search space has a plan (within a time or cost bound), and the model a budget trains best.
Neither is a formula of one plan (planner/capacity/inverse.py solves those), so both search:
bisection over GPU counts checked down to a lower bound, and budget mode's candidate widths."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from planner.capacity.budget import FINE_WIDTHS as WIDTHS
from planner.capacity.budget import (Candidate, evaluate, family_shape, offload_allowed,
                                     plan_budget, states_lower_bound_bytes)
from planner.capacity.inverse import Answer
from planner.capacity.scaling import law_of, model_flops_per_token, training_tokens
from planner.errors import SpecError
from planner.estimate.predict import SECONDS_PER_DAY, Estimate, usable_bytes
from planner.model.shape import param_counts
from planner.search.engine import divisors, precisions, search, why_infeasible
from planner.spec.spec import Spec

#: the most nodes a GPU count question tries
MAX_NODES = 4096


def _layouts(spec: Spec):
    """(nodes, gpus_per_node) by GPU count: part of one node, then whole nodes."""
    per_node = spec.cluster.gpus_per_node
    yield from ((1, g) for g in divisors(per_node))
    yield from ((n, per_node) for n in range(2, MAX_NODES + 1))


def _on(spec: Spec, nodes: int, per_node: int) -> Spec:
    cluster = spec.cluster.model_copy(update={"nodes": nodes, "gpus_per_node": per_node})
    return spec.model_copy(update={"cluster": cluster,
                                   "search": spec.search.model_copy(update={"dp": "auto"})})


@dataclass(frozen=True)
class Bounds:
    """What a run may take besides memory: wall-clock days and money for the spec's tokens."""

    days: Optional[float] = None
    usd: Optional[float] = None

    def __bool__(self) -> bool:
        return self.days is not None or self.usd is not None

    def words(self) -> str:
        parts = ([f"in at most {self.days:g} days"] if self.days is not None else []) + (
            [f"for at most ${self.usd:,.0f}"] if self.usd is not None else [])
        return " and ".join(parts)

    def broken(self, spec: Spec, e: Estimate, tokens: float) -> str:
        """Which bound the plan breaks, with its numbers ("" when it meets them)."""
        days = e.days_to_train(tokens)
        if self.days is not None and days > self.days:
            return (f"time: {days:,.1f} days > {self.days:g} with its fastest plan "
                    f"({e.plan.label})")
        if self.usd is not None:
            cost = e.gpu_hours(tokens) * price_of(spec)
            if cost > self.usd:
                return f"cost: ${cost:,.0f} > ${self.usd:,.0f} with {e.plan.label}"
        return ""


def price_of(spec: Spec) -> float:
    price, _ = spec.cluster.price
    if price is None:
        raise SpecError("cluster.price_per_gpu_hour", f"a cost question needs a price: the "
                        f"catalog has none for {spec.cluster.gpu.name}; set "
                        f"cluster.price_per_gpu_hour")
    return price


def _tokens_for_bounds(spec: Spec, bounds: Bounds) -> float:
    tokens = training_tokens(spec)
    if bounds and tokens is None:
        raise SpecError("training.tokens", "a time or cost bound needs the tokens to train "
                        "(training.tokens; budget mode picks them itself)")
    return tokens or 0.0


def fewest_gpus_lower_bound(spec: Spec, bounds: Bounds, tokens: float) -> int:
    """No fewer GPUs can meet the time bound under the time model: every model FLOP runs on
    some GPU at no more than its best dtype's peak times its best kernel efficiency (GEMMs,
    attention), and recomputation, communication and bubbles only add time."""
    if bounds.days is None:
        return 1
    gpu = spec.cluster.gpu
    peak = max(gpu.peak_tflops.get(p.value, 0.0) for p in precisions(spec)) or max(
        gpu.peak_tflops.values())
    best = peak * 1e12 * max(
        gpu.efficiency.gemm_max, gpu.efficiency.attention_fwd, gpu.efficiency.attention_bwd, 1e-9)
    flops = model_flops_per_token(spec.model) * tokens
    return max(1, math.floor(flops / (best * bounds.days * SECONDS_PER_DAY)))


def fewest_gpus(spec: Spec, *, executable: bool = False, days: Optional[float] = None,
                usd: Optional[float] = None) -> Answer:
    """The fewest GPUs (part of one node, else whole nodes) on which the spec's search space has a
    feasible plan (with ``executable``, one the backend's executor can run) that trains the
    spec's tokens within ``days`` and ``usd`` when given.

    Doubling over the node counts that are powers of two (other counts rarely divide the global
    batch) brackets the answer, bisection narrows it, and every count below it down to a lower
    bound is then checked one by one: a fixed global batch makes feasibility and time irregular in
    the GPU count (a count that does not divide the batch needs tensor or pipeline parallelism),
    so the first count that works is not found by bisection alone.  The lower bound is memory's
    (the model states sharded over every GPU must fit) and, with a time bound, the time model's
    (every FLOP at the GPU's best peak and efficiency)."""
    bounds = Bounds(days, usd)
    tokens = _tokens_for_bounds(spec, bounds)
    layouts = list(_layouts(spec))
    results: dict[int, object] = {}

    def why_not(i: int) -> str:
        if i not in results:
            results[i] = search(_on(spec, *layouts[i]), executable=executable)
        best = results[i].best
        if best is None:
            return why_infeasible(results[i])
        return bounds.broken(spec, best, tokens) if bounds else ""

    probes = [i for i, (nodes, _) in enumerate(layouts) if nodes & (nodes - 1) == 0]
    lo = -1
    for hi in probes:
        if not why_not(hi):
            break
        lo = hi
    else:
        return Answer("fewest GPUs" + (f" {bounds.words()}" if bounds else ""), None,
                      f"nothing fits on up to {MAX_NODES} nodes"
                      f"{' ' + bounds.words() if bounds else ''}: {why_not(probes[-1])}",
                      "bisection")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if not why_not(mid) else (mid, hi)
    floor = max(fewest_gpus_lower_bound(spec, bounds, tokens),
                _memory_floor_gpus(spec))
    below = [i for i in range(hi - 1, -1, -1) if layouts[i][0] * layouts[i][1] >= floor]
    for i in below[:MAX_CHECKED_BELOW]:
        if not why_not(i):
            hi = i
    method = "bisection, then every count above the lower bound" if len(
        below) <= MAX_CHECKED_BELOW else f"bisection, then {MAX_CHECKED_BELOW} counts below"
    nodes, per_node = layouts[hi]
    binding = "one GPU is enough" if hi == 0 else _gpus_binding(layouts, hi, why_not, results,
                                                                 bounds)
    question = "fewest GPUs" + (f" to train {tokens:.3g} tokens {bounds.words()}" if bounds
                                else "")
    return Answer(question, nodes * per_node, binding, method, estimate=results[hi].best,
                  label=f"{nodes} node(s) x {per_node} GPUs", tokens=tokens or None)


def _gpus_binding(layouts, hi: int, why_not, results: dict, bounds: Bounds) -> str:
    """What rejects the next smaller count; when that is the batch's divisibility and a bound is
    given, also the nearest smaller count that has a plan and the bound it breaks."""
    def gpus(i: int) -> int:
        return layouts[i][0] * layouts[i][1]

    first = f"on {gpus(hi - 1):,} GPU{'s' if gpus(hi - 1) > 1 else ''}: {why_not(hi - 1)}"
    if not bounds or results[hi - 1].best is not None:
        return first
    near = next((i for i in range(hi - 2, -1, -1)
                 if i in results and results[i].best is not None), None)
    if near is None:
        return first
    return f"{first}; the nearest count below with a plan, {gpus(near):,} GPUs: {why_not(near)}"


#: counts checked one by one below the bisection's answer (each is one search, ~10-50 ms)
MAX_CHECKED_BELOW = 256


def _memory_floor_gpus(spec: Spec) -> int:
    """Fewest GPUs whose memory could hold the model states sharded over all of them (no plan
    without offload needs less; 1 when offload is allowed)."""
    if offload_allowed(spec):
        return 1
    states = states_lower_bound_bytes(spec, param_counts(spec.model).total)
    return max(1, math.floor(states * spec.cluster.world_size / usable_bytes(spec)))


def largest_model(spec: Spec, tokens_per_param: Optional[float] = None) -> Answer:
    """The model the budget trains best: budget mode's pick (planner/capacity/budget.py, the
    family shape with the lowest predicted loss when each trains the tokens the budget buys it),
    so ``plan SPEC --max model`` and budget mode cannot disagree.  With ``tokens_per_param``:
    the widest shape that trains that many tokens per parameter within the budget (bisection
    over widths)."""
    if spec.training.budget is None:
        raise SpecError("training.budget", "largest_model needs a budget")
    if tokens_per_param is not None:
        return _widest_at_ratio(spec, tokens_per_param)
    result = plan_budget(spec)
    pick = result.pick
    if pick is None:
        first = result.candidates[0]
        return Answer("largest model", None, f"{first.model.name}: {first.reason}",
                      "budget search")
    wider = [c for c in result.candidates if c.model.d_model > pick.model.d_model]
    if not wider:
        binding = f"the widest shape considered (d_model {pick.model.d_model})"
    elif not wider[0].feasible:
        binding = f"{wider[0].model.name} ({wider[0].params / 1e9:.3g}B): {wider[0].reason}"
    else:
        w = wider[0]
        binding = (f"the budget: {w.model.name} ({w.params / 1e9:.3g}B) would train "
                   f"{w.tokens:.3g} tokens ({w.tokens_per_param:.1f}/param) to a predicted "
                   f"loss of {w.loss:.4f} > {pick.loss:.4f}")
    m = pick.model
    return Answer("largest model", pick.params, binding, "budget search (lowest predicted loss)",
                  estimate=pick.best,
                  label=f"{m.name}, {m.n_layers} layers x {m.d_model}, {pick.params / 1e9:.3g}B "
                        f"parameters on {pick.tokens:.3g} tokens, predicted loss "
                        f"{pick.loss:.4f}", tokens=pick.tokens)


def _widest_at_ratio(spec: Spec, tokens_per_param: float) -> Answer:
    law = law_of(spec)
    probes: dict[int, tuple[Candidate, float]] = {}

    def probe(i: int) -> tuple[Candidate, float]:
        if i not in probes:
            model = family_shape(spec.model, WIDTHS[i])
            counts = param_counts(model)
            need = tokens_per_param * law.params(counts)
            probes[i] = (evaluate(spec, Candidate(model, counts.total), law), need)
        return probes[i]

    def ok(i: int) -> bool:
        c, need = probe(i)
        return c.feasible and c.tokens >= need

    if not ok(0):
        return Answer("largest model", None, _model_binding(*probe(0)), "bisection")
    lo, hi = 0, len(WIDTHS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    c, _ = probe(lo)
    binding = (f"the widest shape considered (d_model {WIDTHS[-1]})" if hi == len(WIDTHS)
               else _model_binding(*probe(hi)))
    m = c.model
    return Answer("largest model", c.params, binding, "bisection", estimate=c.best,
                  label=f"{m.name}, {m.n_layers} layers x {m.d_model}, {c.params / 1e9:.3g}B "
                        f"parameters on {c.tokens:.3g} tokens")


def _model_binding(c: Candidate, need: float) -> str:
    name = f"{c.model.name} ({c.params / 1e9:.3g}B)"
    if not c.feasible:
        return f"{name}: {c.reason}"
    return (f"budget: {name} trains {c.tokens:.3g} tokens within it, its compute-optimal "
            f"count is {need:.3g}")
