"""DeepSpeed's rules (and the arithmetic ones) as predicates: a plan passes or gets a Rejected
value naming the rule and the operands.  Each rule cites where DeepSpeed enforces it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .plan import Plan
from .spec import Spec
from .units import Offload, Optimizer, ZeroStage

CPU_OPTIMIZERS = (Optimizer.ADAM, Optimizer.ADAMW)


@dataclass(frozen=True)
class Rejected:
    plan: Plan
    rule: str  #: short, stable key used to count rejections by reason
    reason: str  #: one line with the operands


Rule = Callable[[Spec, Plan], Optional[str]]


def world_size(spec: Spec, p: Plan) -> Optional[str]:
    ws = spec.cluster.world_size
    if p.world_size != ws:
        return f"dp({p.dp}) * tp({p.tp}) * pp({p.pp}) != world size ({ws})"
    return None


def tp_divides_heads(spec: Spec, p: Plan) -> Optional[str]:
    """Megatron / AutoTP shard whole heads: tp must divide query and key/value heads."""
    m = spec.model
    if m.n_heads % p.tp or m.n_kv_heads % p.tp:
        return f"tp ({p.tp}) does not divide n_heads ({m.n_heads}) and n_kv_heads ({m.n_kv_heads})"
    if m.d_ff % p.tp:
        return f"tp ({p.tp}) does not divide d_ff ({m.d_ff})"
    return None


def tp_within_node(spec: Spec, p: Plan) -> Optional[str]:
    """Tensor parallelism all-reduces twice per layer: it is kept inside one NVLink domain."""
    g = spec.cluster.gpus_per_node
    if p.tp > g or g % p.tp:
        return f"tp ({p.tp}) does not fit inside a node of {g} GPUs"
    return None


def pp_layers(spec: Spec, p: Plan) -> Optional[str]:
    if p.pp > spec.model.n_layers:
        return f"pp ({p.pp}) exceeds n_layers ({spec.model.n_layers})"
    return None


def pipeline_zero(spec: Spec, p: Plan) -> Optional[str]:
    """deepspeed/runtime/pipe/engine.py: 'ZeRO-2 and ZeRO-3 are incompatible with pipeline
    parallelism'."""
    if p.pp > 1 and p.zero >= ZeroStage.GRADIENTS:
        return f"pipeline parallelism (pp={p.pp}) needs ZeRO 0 or 1, not {int(p.zero)}"
    return None


def pipeline_offload(spec: Spec, p: Plan) -> Optional[str]:
    """The pipeline engine runs ZeRO-1 at most, and DeepSpeed's pipeline schedule does not drive
    parameter offload; optimizer offload with pipelines is not a supported combination."""
    if p.pp > 1 and p.offload is not Offload.NONE:
        return f"pipeline parallelism (pp={p.pp}) does not combine with offload ({p.offload.value})"
    return None


def offload_stage(spec: Spec, p: Plan) -> Optional[str]:
    """deepspeed/runtime/zero/config.py and engine: offload_optimizer needs ZeRO >= 1;
    offload_param and NVMe offload exist only in ZeRO-3 (ZeRO-Infinity)."""
    if p.offload is Offload.NONE:
        return None
    if p.zero == ZeroStage.NONE:
        return f"offload ({p.offload.value}) needs ZeRO 1-3, not 0"
    if (p.offload.params_off_gpu or p.offload.uses_nvme) and p.zero != ZeroStage.PARAMETERS:
        return f"offload ({p.offload.value}) needs ZeRO-3, not {int(p.zero)}"
    return None


def offload_optimizer_kind(spec: Spec, p: Plan) -> Optional[str]:
    """engine.py:2384-2399: offload swaps in DeepSpeed's CPU optimizers, which exist for Adam,
    AdamW, Adagrad and Lion; another optimizer with offload raises ZeRORuntimeException."""
    if p.offload is not Offload.NONE and spec.training.optimizer not in CPU_OPTIMIZERS:
        return (f"offload ({p.offload.value}) needs a DeepSpeed CPU optimizer (adam, adamw), "
                f"not {spec.training.optimizer.value}")
    return None


def precision_supported(spec: Spec, p: Plan) -> Optional[str]:
    gpu = spec.cluster.gpu
    if not gpu.supports(p.precision):
        return f"{gpu.name} has no {p.precision.value} support"
    return None


def batch_divisible(spec: Spec, p: Plan) -> Optional[str]:
    """DeepSpeed: train_batch_size = micro_batch * gradient_accumulation_steps * dp."""
    gb = spec.global_batch_sequences
    if gb % (p.dp * p.micro_batch):
        return (f"global batch ({gb} sequences) is not divisible by dp ({p.dp}) * "
                f"micro_batch ({p.micro_batch})")
    return None


def sequence_parallel_needs_tp(spec: Spec, p: Plan) -> Optional[str]:
    if p.sequence_parallel and p.tp == 1:
        return "sequence parallelism needs tp > 1"
    return None


#: (key, predicate) in the order they are checked; the first failing rule is the reason
RULES: tuple[tuple[str, Rule], ...] = (
    ("world size", world_size),
    ("tp vs heads", tp_divides_heads),
    ("tp beyond node", tp_within_node),
    ("pp vs layers", pp_layers),
    ("pipeline needs ZeRO 0/1", pipeline_zero),
    ("pipeline with offload", pipeline_offload),
    ("offload vs ZeRO stage", offload_stage),
    ("offload vs optimizer", offload_optimizer_kind),
    ("precision unsupported", precision_supported),
    ("batch not divisible", batch_divisible),
    ("sequence parallel without tp", sequence_parallel_needs_tp),
)


def check(spec: Spec, plan: Plan) -> Optional[Rejected]:
    for key, rule in RULES:
        reason = rule(spec, plan)
        if reason is not None:
            return Rejected(plan, key, reason)
    return None
