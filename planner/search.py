"""Plan search: per-axis generators, a product, the rules and the memory check as filters, a
ranking key.  The search dimensions are data (AXES), so adding one does not add a loop level."""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

from .estimate import Estimate, estimate
from .plan import Plan
from .rules import Rejected, check
from .spec import SearchSpec, Spec
from .units import AttentionKernel, Offload, Precision, Recompute, ZeroStage

MAX_AUTO_MICRO_BATCH = 256


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _axis(value, auto: Sequence) -> tuple:
    return tuple(auto) if value == "auto" else tuple(value)


def parallel_degrees(spec: Spec) -> Iterator[tuple[int, int, int]]:
    """(dp, tp, pp) triples.  'auto' tp takes the divisors of the node size, 'auto' pp the
    divisors of the world size up to the layer count, 'auto' dp what is left."""
    s, ws = spec.search, spec.cluster.world_size
    tps = _axis(s.tp, [t for t in divisors(spec.cluster.gpus_per_node) if ws % t == 0])
    pps = _axis(s.pp, [p for p in divisors(ws) if p <= spec.model.n_layers])
    for tp, pp in itertools.product(tps, pps):
        if s.dp == "auto":
            if ws % (tp * pp) == 0:
                yield ws // (tp * pp), tp, pp
        else:
            for dp in s.dp:
                yield dp, tp, pp


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


#: the axes crossed with every (dp, tp, pp, micro_batch); each maps a spec to its values
AXES = {
    "zero": lambda spec: _axis(spec.search.zero, list(ZeroStage)),
    "precision": precisions,
    "recompute": recomputes,
    "offload": lambda spec: _axis(spec.search.offload, list(Offload)),
    "sequence_parallel": lambda spec: _axis(spec.search.sequence_parallel, [False, True]),
}


def candidates(spec: Spec) -> Iterator[Plan]:
    others = [AXES[name](spec) for name in AXES]
    gb = spec.global_batch_sequences
    for dp, tp, pp in parallel_degrees(spec):
        for mb in micro_batches(spec, dp):
            grad_accum = max(1, gb // (dp * mb))
            for values in itertools.product(*others):
                yield Plan(dp, tp, pp, micro_batch=mb, grad_accum=grad_accum,
                           **dict(zip(AXES, values)))


def rank_key(e: Estimate) -> tuple:
    """Fastest to train first (every plan runs the same global batch, so step time decides);
    ties go to the plan with more free memory."""
    return (round(e.step_time_s, 9), -e.free_bytes)


@dataclass
class SearchResult:
    spec: Spec
    feasible: list[Estimate]  #: ranked, best first
    rejected: list[Rejected]
    evaluated: int = 0
    by_reason: Counter = field(default_factory=Counter)

    @property
    def best(self) -> Union[Estimate, None]:
        return self.feasible[0] if self.feasible else None


def search(spec: Spec) -> SearchResult:
    feasible: list[Estimate] = []
    rejected: list[Rejected] = []
    n = 0
    for plan in candidates(spec):
        n += 1
        why = check(spec, plan)
        if why is None:
            est = estimate(spec, plan, with_time=False)
            if est.fits:
                feasible.append(est.timed(spec))
                continue
            why = Rejected(plan, "out of memory", est.oom_reason())
        rejected.append(why)
    feasible.sort(key=rank_key)
    return SearchResult(spec, feasible, rejected, n, Counter(r.rule for r in rejected))


__all__ = ["search", "candidates", "SearchResult", "SearchSpec", "rank_key"]
