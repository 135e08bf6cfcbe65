"""Budget mode: which model size gives the lowest predicted loss for a budget on this cluster.

Candidate shapes come from a family rule (``family_shape``), each gets its best feasible plan from
the same search as ``plan SPEC``, the budget becomes the tokens that plan trains (seconds on this
cluster x its tokens/s, or a FLOP budget / the exact FLOPs per token), and the scaling law
(planner/scaling.py) predicts each candidate's loss.  The lowest loss is the pick.

The vectorised search plans a candidate in about 10 ms, so every candidate is searched (the
table shows the whole trade-off); only shapes whose model states cannot fit even sharded over
every GPU are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

from planner.capacity.scaling import Law, law_of, model_flops_per_token
from planner.errors import SpecError
from planner.estimate.predict import SECONDS_PER_DAY, Estimate, usable_bytes
from planner.model.shape import param_counts
from planner.search.engine import SearchResult, search, why_infeasible
from planner.spec.spec import BudgetSpec, ModelSpec, Spec
from planner.spec.units import OPTIMIZER_STATE_BYTES, Activation, GiB, Offload

#: widths of the candidates, ~60M to ~800B parameters with a 32k vocabulary
D_MODEL_LADDER = (512, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 7168, 8192,
                  10240, 12288, 14336, 16384, 20480)
#: widths the pick is refined over between its ladder neighbours: multiples of 256 (heads of 128,
#: SwiGLU d_ff a multiple of 256)
FINE_WIDTHS = tuple(range(512, 20480 + 1, 256))
HEAD_DIM = 128  #: Llama, GPT-3 >= 2.7B, Chinchilla
#: bytes per parameter of weights + gradients + fp32 master (2 + 2 + 4, or 4 + 4 + 0 in fp32) on
#: top of the optimizer states: what ZeRO-3 shards over every GPU (Rajbhandari et al. 2020, 3.1)
MODEL_STATE_BYTES = 8


def aspect_ratio(d_model: int) -> float:
    """d_model / n_layers: 64 up to d_model 1024 (GPT-2, GPT-3 small: 768/12, 1024/16), 128 from
    4096 on (Llama 7B 4096/32, 13B 5120/40, GPT-3 175B 12288/96), log-linear between (TinyLlama
    2048/22).  Kaplan et al. 2020 (fig. 5) find the loss within a few percent over 20-200."""
    if d_model <= 1024:
        return 64.0
    if d_model >= 4096:
        return 128.0
    return 64.0 * 2 ** (math.log2(d_model / 1024) / 2)


def _round_up(x: float, multiple: int) -> int:
    return int(-(-x // multiple) * multiple)


def family_shape(template: ModelSpec, d_model: int) -> ModelSpec:
    """The template's family at width d_model: heads of 128, depth from the aspect ratio, the
    template's GQA group size where it divides the heads, SwiGLU d_ff = 8/3 d rounded up to 256
    (Llama) or 4 d (GELU); vocabulary, sequence length and block style from the template."""
    heads = max(1, d_model // HEAD_DIM)
    group = template.n_heads // template.n_kv_heads
    kv = heads // group if heads % group == 0 else heads
    swiglu = template.activation is Activation.SWIGLU
    d_ff = _round_up(8 * d_model / 3, 256) if swiglu else 4 * d_model
    n_layers = max(2, round(d_model / aspect_ratio(d_model)))
    fields = template.model_dump(exclude={"preset", "name", "n_layers", "d_model", "n_heads",
                                          "n_kv_heads", "d_ff", "head_dim", "hf_config"})
    return ModelSpec.model_validate({**fields, "name": f"{template.arch.value}-d{d_model}",
                                     "n_layers": n_layers, "d_model": d_model, "n_heads": heads,
                                     "n_kv_heads": kv, "d_ff": d_ff})


def family_shapes(template: ModelSpec) -> list[ModelSpec]:
    return [family_shape(template, d) for d in D_MODEL_LADDER]


def budget_seconds(budget: BudgetSpec, world_size: int) -> Optional[float]:
    """Wall-clock seconds the budget buys on this cluster; None for a FLOP budget."""
    if budget.flops is not None:
        return None
    if budget.days is not None:
        return budget.days * SECONDS_PER_DAY
    gpu_hours = budget.gpu_hours if budget.gpu_hours is not None else (
        budget.dollars / budget.price_per_gpu_hour)
    return gpu_hours * 3600.0 / world_size


def affordable_tokens(spec: Spec, model: ModelSpec, best: Estimate) -> float:
    """Tokens the budget trains on this model with this plan, in whole optimizer steps."""
    seconds = budget_seconds(spec.training.budget, spec.cluster.world_size)
    if seconds is None:
        tokens = spec.training.budget.flops / model_flops_per_token(model)
    else:
        tokens = best.tokens_per_s * seconds
    return math.floor(tokens / best.flops.tokens) * best.flops.tokens


def states_lower_bound_bytes(spec: Spec, params: int) -> float:
    """Per-GPU model states with everything sharded over every GPU (ZeRO-3 at dp = world size):
    no plan without offload needs less."""
    per_param = MODEL_STATE_BYTES + OPTIMIZER_STATE_BYTES[spec.training.optimizer]
    return per_param * params / spec.cluster.world_size


@dataclass(frozen=True)
class Candidate:
    model: ModelSpec
    params: int
    result: Optional[SearchResult] = None  #: None when not searched
    tokens: float = 0.0  #: what the budget trains (0 when nothing fits)
    loss: Optional[float] = None  #: predicted, nats/token
    reason: str = ""  #: why the candidate cannot train ("" when it can)
    refined: bool = False  #: a width between the ladder's, searched around the ladder's pick

    @property
    def best(self) -> Optional[Estimate]:
        return None if self.result is None else self.result.best

    @property
    def feasible(self) -> bool:
        return self.loss is not None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def days(self) -> Optional[float]:
        return self.best.days_to_train(self.tokens) if self.feasible else None


@dataclass(frozen=True)
class BudgetResult:
    spec: Spec
    law: Law
    candidates: list[Candidate]  #: by size, smallest first

    @property
    def pick(self) -> Optional[Candidate]:
        feasible = [c for c in self.candidates if c.feasible]
        return min(feasible, key=lambda c: c.loss) if feasible else None


def planned_spec(spec: Spec, model: ModelSpec, tokens: Optional[float] = None) -> Spec:
    """The budget spec with a chosen model and, once known, its tokens (plan mode again); a
    dollars budget's price becomes the cluster's, so the pick's cost is at that price."""
    training, cluster = spec.training, spec.cluster
    if tokens is not None:
        training = training.model_copy(update={"tokens": tokens, "budget": None})
        price = spec.training.budget.price_per_gpu_hour
        if price is not None and cluster.price_per_gpu_hour is None:  # a dollars budget's price
            cluster = cluster.model_copy(update={"price_per_gpu_hour": price})
    return spec.model_copy(update={"model": model, "training": training, "cluster": cluster})


def evaluate(spec: Spec, candidate: Candidate, law: Law) -> Candidate:
    """Search one candidate: its best plan, the tokens the budget buys with it, the loss."""
    model, n = candidate.model, candidate.params
    states = states_lower_bound_bytes(spec, n)
    usable = usable_bytes(spec)
    if states > usable and not offload_allowed(spec):
        ws = spec.cluster.world_size
        over = f"sharded over all {ws} GPUs" if ws > 1 else "on its one GPU"
        return replace(candidate, reason=f"model states alone need {states / GiB:,.0f} GiB per "
                       f"GPU even {over} ({usable / GiB:.0f} usable)")
    result = search(planned_spec(spec, model))
    if result.best is None:
        return replace(candidate, result=result, reason=why_infeasible(result))
    tokens = affordable_tokens(spec, model, result.best)
    if tokens <= 0:
        return replace(candidate, result=result, reason="the budget does not buy one step")
    result = replace(result, spec=planned_spec(spec, model, tokens))
    loss = law.loss(law.params(param_counts(model)), tokens)
    return replace(candidate, result=result, tokens=tokens, loss=loss)


def offload_allowed(spec: Spec) -> bool:
    axis = spec.search.offload
    return axis == "auto" or any(o is not Offload.NONE for o in axis)


def _candidate(spec: Spec, law: Law, d_model: int, refined: bool = False) -> Candidate:
    model = family_shape(spec.model, d_model)
    return evaluate(spec, Candidate(model, param_counts(model).total, refined=refined), law)


def _refine(spec: Spec, law: Law, ladder: list[Candidate]) -> list[Candidate]:
    """Every width of FINE_WIDTHS strictly between the ladder pick's neighbours: the ladder's
    steps are up to 25 % in width (~2x in parameters), which the law's loss resolves."""
    feasible = [c for c in ladder if c.feasible]
    if not feasible:
        return []
    i = ladder.index(min(feasible, key=lambda c: c.loss))
    lo = ladder[i - 1].model.d_model if i > 0 else 0
    hi = ladder[i + 1].model.d_model if i + 1 < len(ladder) else FINE_WIDTHS[-1] + 1
    done = {c.model.d_model for c in ladder}
    return [_candidate(spec, law, d, refined=True) for d in FINE_WIDTHS
            if lo < d < hi and d not in done]


def plan_budget(spec: Spec,
                progress: Optional[Callable[[int, int], None]] = None) -> BudgetResult:
    """Every family candidate for the spec's budget, evaluated on its cluster (smallest first;
    ``progress(done, total)`` after each ladder width):
    the ladder's widths, then the widths of FINE_WIDTHS around the lowest predicted loss.  The
    one algorithm behind budget mode and ``largest_model`` (planner/capacity/sizing.py)."""
    if spec.training.budget is None:
        raise SpecError("training.budget", "budget mode needs a budget (gpu_hours, days, flops "
                        "or dollars)")
    law = law_of(spec)
    ladder = []
    for d in D_MODEL_LADDER:
        ladder.append(_candidate(spec, law, d))
        if progress is not None:
            progress(len(ladder), len(D_MODEL_LADDER))
    candidates = sorted(ladder + _refine(spec, law, ladder), key=lambda c: c.model.d_model)
    return BudgetResult(spec, law, candidates)
