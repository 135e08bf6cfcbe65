"""Plan search: per-axis generators, a product, the rules and the memory check as filters, a
ranking key.  The search dimensions are data (AXES), so adding one does not add a loop level."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from planner.backends.base import Backend
from planner.backends.deepspeed import DEEPSPEED
from planner.backends.registry import backend_for
from planner.estimate.memory import host_offload_bytes, peak_bytes
from planner.estimate.predict import (Estimate, estimate, floor_bytes_needed, required_bytes,
                                      usable_bytes)
from planner.estimate.timing import throughput
from planner.plan.rule import Rejected, check_rules, first_failing
from planner.errors import SpecError
from planner.plan.strategy import CP_KINDS, Plan, PlanBatch, column
from planner.search.rules import first_failure, rules_for
from planner.spec.spec import MIN_CP_TOKENS, SearchSpec, Spec
from planner.spec.units import (AttentionKernel, ContextParallel, GiB, Offload, Precision,
                                Recompute, ZeroStage)

MAX_AUTO_MICRO_BATCH = 256
#: the most candidates one search builds and evaluates (2 million: about 3 s and 0.5 GiB on one
#: CPU core); a larger space is an error naming its axes, not minutes of work.  The shipped specs
#: have under 1,500; Llama-2-7B on 1024 x 1024 GPUs, default axes, 4,752; a 16,384-layer model on
#: 840 x 990 GPUs (highly composite: many tp and pp), about 200,000
MAX_CANDIDATES = 2_000_000


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending, from the pairs (d, n/d) with d <= sqrt(n): O(sqrt n)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def _axis(value, auto: Sequence) -> tuple:
    return tuple(auto) if value == "auto" else tuple(value)


def _tps_pps(spec: Spec) -> tuple[tuple, tuple, tuple]:
    """The tp, pp and cp values: 'auto' tp takes the divisors of the node size that divide the
    world size, 'auto' pp the divisors of the world size up to the layer count, 'auto' cp 1 and
    the divisors of the world size that divide the sequence and leave each rank MIN_CP_TOKENS."""
    s, ws = spec.search, spec.cluster.world_size
    tps = _axis(s.tp, [t for t in divisors(spec.cluster.gpus_per_node) if ws % t == 0])
    pps = _axis(s.pp, [p for p in divisors(ws) if p <= spec.model.n_layers])
    seq = spec.model.seq_len
    cps = _axis(s.cp, [1] + [c for c in divisors(ws) if c > 1 and seq % c == 0
                             and seq // c >= MIN_CP_TOKENS])
    return tps, pps, cps


def _auto_dp_pairs(spec: Spec, tps: tuple, pps: tuple, cps: tuple = (1,)) -> np.ndarray:
    """The (tp, pp, cp) triples whose product divides the world size, tp-major (an 'auto' dp
    takes what is left); tested as one array."""
    tp, pp, cp = (a.ravel() for a in np.meshgrid(np.array(tps, dtype=np.int64),
                                                 np.array(pps, dtype=np.int64),
                                                 np.array(cps, dtype=np.int64), indexing="ij"))
    keep = spec.cluster.world_size % (tp * pp * cp) == 0
    return np.stack([tp[keep], pp[keep], cp[keep]], axis=1)


def parallel_degrees(spec: Spec) -> Iterator[tuple[int, int, int, int]]:
    """(dp, tp, pp, cp).  'auto' tp takes the divisors of the node size, 'auto' pp the
    divisors of the world size up to the layer count, 'auto' dp what is left."""
    s, ws = spec.search, spec.cluster.world_size
    tps, pps, cps = _tps_pps(spec)
    if s.dp == "auto":
        for tp, pp, cp in _auto_dp_pairs(spec, tps, pps, cps).tolist():
            yield ws // (tp * pp * cp), tp, pp, cp
        return
    for tp, pp, cp in itertools.product(tps, pps, cps):
        for dp in s.dp:
            yield dp, tp, pp, cp


def cp_kinds(spec: Spec, cp: int) -> tuple[int, ...]:
    """How the cp ranks attend, as column codes: one (Ulysses, unused) without context
    parallelism; 'auto' both kinds."""
    if cp == 1:
        return (0,)
    kinds = _axis(spec.search.cp_kind, list(ContextParallel))
    return tuple(CP_KINDS.index(k) for k in kinds)


def grad_accum(spec: Spec, dp: int, micro_batch: int) -> int:
    """Micro-batches per optimizer step: the global batch over dp x micro-batch (at least 1; a
    remainder is the batch-divisibility rule's to reject)."""
    return max(1, spec.global_batch_sequences // (dp * micro_batch))


def micro_batches(spec: Spec, dp: int) -> tuple[int, ...]:
    """'auto': powers of two up to the per-rank share of the global batch."""
    if spec.search.micro_batch != "auto":
        return tuple(spec.search.micro_batch)
    per_rank = max(1, spec.global_batch_sequences // dp)
    return tuple(b for b in (2**i for i in range(9)) if b <= min(per_rank, MAX_AUTO_MICRO_BATCH))


def precisions(spec: Spec) -> tuple[Precision, ...]:
    """'auto': the first of bf16, fp16, fp32 the GPU supports (fp32 is never preferred)."""
    if spec.search.precision != "auto":
        return tuple(spec.search.precision)
    order = (Precision.BF16, Precision.FP16, Precision.FP32)
    return next(((p,) for p in order if spec.cluster.gpu.supports(p)), (Precision.BF16,))


def recomputes(spec: Spec) -> tuple[Recompute, ...]:
    """'auto': selective only matters when eager attention keeps s² tensors."""
    eager = spec.model.attention is AttentionKernel.EAGER
    auto = [Recompute.NONE] + ([Recompute.SELECTIVE] if eager else []) + [Recompute.FULL]
    return _axis(spec.search.recompute, auto)


def expert_degrees(spec: Spec, dp: int) -> tuple[int, ...]:
    """Expert-parallel degrees: 1 for a dense model; 'auto' the divisors of the experts that
    divide dp (DeepSpeed-MoE: num_experts % ep == 0 and ep | world / pp)."""
    if not spec.model.moe_layers:
        return (1,)
    if spec.search.ep != "auto":
        return tuple(spec.search.ep)
    return tuple(e for e in divisors(spec.model.moe.experts) if dp % e == 0)


#: the axes crossed with every (dp, tp, pp, micro_batch); each maps a spec to its values
AXES = {
    "zero": lambda spec: _axis(spec.search.zero, list(ZeroStage)),
    "precision": precisions,
    "recompute": recomputes,
    "offload": lambda spec: _axis(spec.search.offload, list(Offload)),
    "sequence_parallel": lambda spec: _axis(spec.search.sequence_parallel, [False, True]),
}


def candidates(spec: Spec) -> Iterator[Plan]:
    """Every candidate, one by one (the batch below holds the same, in the same order)."""
    batch = candidate_batch(spec)
    return (batch.plan(i) for i in range(len(batch)))


def check_size(spec: Spec) -> int:
    """The number of candidates, counted from the axes' sizes before any is built (an 'auto'
    micro-batch counted at its most values); over MAX_CANDIDATES, a SpecError naming the axes."""
    s = spec.search
    tps, pps, cps = _tps_pps(spec)
    if s.dp == "auto":
        sizes = {"(dp, tp, pp, cp)": len(_auto_dp_pairs(spec, tps, pps, cps))}
        blame = {"(dp, tp, pp, cp)": ("tp", "pp")}
    else:
        sizes, blame = {"dp": len(s.dp), "tp": len(tps), "pp": len(pps), "cp": len(cps)}, {}
    if len(cps) > 1:
        sizes["cp_kind"] = len(_axis(s.cp_kind, list(ContextParallel)))
    sizes["micro_batch"] = len(micro_batches(spec, dp=1))  # dp 1: the largest per-rank share
    if spec.model.moe_layers:  # at most the experts' divisors, whatever dp
        sizes["ep"] = len(expert_degrees(spec, dp=math.prod(divisors(spec.model.moe.experts))))
    sizes.update({name: len(AXES[name](spec)) for name in AXES})
    total = math.prod(sizes.values())
    if total > MAX_CANDIDATES:
        largest = sorted((n for n in sizes if sizes[n] > 1), key=lambda n: -sizes[n])[:2]
        fields = [f"search.{a}" for n in largest for a in blame.get(n, (n,))]
        terms = " x ".join(f"{n} {k:,}" for n, k in sizes.items())
        raise SpecError("search", f"up to {total:,} candidates ({terms}), over the "
                                  f"{MAX_CANDIDATES:,} one search evaluates; list fewer values "
                                  f"in {' or '.join(fields)}")
    return total


def candidate_batch(spec: Spec) -> PlanBatch:
    """The product of the axes as columns: (dp, tp, pp) x micro-batch x the other axes."""
    check_size(spec)
    others = list(itertools.product(*[AXES[name](spec) for name in AXES]))
    codes = {name: column(name, [v[i] for v in others]) for i, name in enumerate(AXES)}
    rows = [(dp, tp, pp, mb, grad_accum(spec, dp, mb), ep, cp, kind)
            for dp, tp, pp, cp in parallel_degrees(spec) for mb in micro_batches(spec, dp)
            for ep in expert_degrees(spec, dp) for kind in cp_kinds(spec, cp)]
    outer = np.array(rows, dtype=np.int64).reshape(-1, 8)
    k = len(others)
    cols = {name: np.repeat(outer[:, i], k) for i, name in
            enumerate(("dp", "tp", "pp", "micro_batch", "grad_accum", "ep", "cp", "cp_kind"))}
    for name, values in codes.items():
        cols[name] = np.tile(values, len(outer))
    return PlanBatch(**cols)


class _Lazy(Sequence):
    """A sequence whose items are built on first access (the search ranks thousands of plans
    as arrays; only the few a report shows become Estimate objects)."""

    def __init__(self, n: int, build: Callable[[int], object]):
        self._n, self._build, self._cache = n, build, {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        if i not in self._cache:
            self._cache[i] = self._build(i)
        return self._cache[i]


@dataclass
class SearchResult:
    spec: Spec
    feasible: Sequence[Estimate]  #: ranked, best first (built on access)
    rejected: Sequence[Rejected]  #: built on access
    evaluated: int = 0
    by_reason: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  #: reason -> first rejected plan's line
    backend: Backend = DEEPSPEED
    executable: bool = False  #: only plans the backend's executor can run were ranked
    #: rank (index into feasible) of the first plan the executor can run; None: none can
    first_executable: Optional[int] = 0

    @property
    def best(self) -> Union[Estimate, None]:
        return self.feasible[0] if len(self.feasible) else None

    @property
    def best_executable(self) -> Union[Estimate, None]:
        """What ``plan --execute`` would run: the best plan the backend's executor can run."""
        if self.first_executable is None or not len(self.feasible):
            return None
        return self.feasible[self.first_executable]


def search(spec: Spec, *, backend: Optional[Backend] = None,
           executable: bool = False) -> SearchResult:
    """All candidates as one batch: the rules (the backend's included; with ``executable``, its
    executor's too), then peak memory, then step time for what fits, ranked fastest first (ties:
    more free memory).  Without ``executable``, a ranked plan the executor cannot run carries the
    reason in ``Estimate.not_executable``.  ``backend``: the spec's runtime.backend unless
    given."""
    backend = backend or backend_for(spec)
    rules = rules_for(backend, executable=executable)
    batch = candidate_batch(spec)
    failed = first_failure(spec, batch, rules)
    passed = np.flatnonzero(failed < 0)
    ok = batch.take(passed)
    cluster = spec.cluster
    peak = peak_bytes(spec, ok, backend)
    required = required_bytes(spec, peak)
    usable = usable_bytes(spec)
    host = host_offload_bytes(spec, ok, backend) * cluster.gpus_per_node
    # tight plans (they fit only if the allocator fragments less than assumed) run too
    floor = floor_bytes_needed(peak, spec.runtime.cuda_context_gib * GiB)
    fits = (floor <= usable) & (host <= cluster.host_memory_gib * GiB)
    fit_index = passed[fits]
    step = throughput(spec, ok.take(fits), backend).step.total if len(fit_index) \
        else np.zeros(0)
    # a comfortable plan ranks above a tight one unless the tight one is TIGHT_SLACK faster
    tight = required[fits] > usable
    ranked = fit_index[np.lexsort((required[fits],
                                   np.round(step * np.where(tight, 1 + TIGHT_SLACK, 1.0), 9)))]
    rejected_index = np.flatnonzero(~np.isin(np.arange(len(batch)), fit_index))
    blocked = (first_failing(backend.executor_rules, spec, batch.take(ranked))
               if backend.executor_rules else np.full(len(ranked), -1))
    runnable = np.flatnonzero(blocked < 0)

    def ranked_estimate(i: int) -> Estimate:
        plan = batch.plan(int(ranked[i]))
        est = estimate(spec, plan, backend=backend)
        if blocked[i] < 0:
            return est
        return replace(est, not_executable=backend.executor_rules[blocked[i]].why(spec, plan))

    def rejection(i: int) -> Rejected:
        plan = batch.plan(int(rejected_index[i]))
        why = check_rules(rules, spec, plan)
        return why or Rejected(plan, OOM, estimate(spec, plan, with_time=False,
                                                   backend=backend).oom_reason())

    reasons = np.array([rules[f].key if f >= 0 else OOM for f in failed[rejected_index]])
    by_reason = Counter(reasons.tolist())
    examples = {}
    for key in by_reason:
        r = rejection(int(np.flatnonzero(reasons == key)[0]))
        examples[key] = f"{r.plan.label}: {r.reason}"
    return SearchResult(
        spec, _Lazy(len(ranked), ranked_estimate), _Lazy(len(rejected_index), rejection),
        len(batch), by_reason, examples, backend, executable,
        int(runnable[0]) if len(runnable) else None)


OOM = "out of memory"
#: how much faster a tight plan must be to rank above a comfortable one
TIGHT_SLACK = 0.03


def why_infeasible(result: SearchResult) -> str:
    """One line: how many candidates each rule (or memory) rejected, most common first; with no
    candidate at all, why the degrees the search space allows make none."""
    if result.evaluated == 0:
        s, ws = result.spec.search, result.spec.cluster.world_size
        pinned = [f"{a}={list(v)}" for a in ("dp", "tp", "pp", "cp")
                  if (v := getattr(s, a)) != "auto"]
        allowed = f" with {', '.join(pinned)}" if pinned else ""
        return (f"no candidate: no dp x tp x pp x cp{allowed} makes the world size of {ws:,} "
                f"GPUs (search.dp, search.tp, search.pp, search.cp)")
    reasons = ", ".join(f"{key}: {n}" for key, n in result.by_reason.most_common(3))
    return f"no feasible plan among {result.evaluated} candidates ({reasons})"


__all__ = ["search", "candidates", "candidate_batch", "check_size", "MAX_CANDIDATES", "SearchResult", "SearchSpec", "OOM",
           "why_infeasible"]
