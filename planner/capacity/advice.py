"""Advice beside a plan: the nearest fix for a spec with no feasible plan (which relaxation of the
search space makes something fit, and the fewest GPUs on which the spec's own search space does:
one algorithm, planner/capacity/sizing.py's fewest_gpus), and whether the global batch caps the
cluster's scaling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from planner.capacity.sizing import fewest_gpus
from planner.capacity.whatif import edit
from planner.errors import SpecError
from planner.search.engine import SearchResult, search
from planner.spec.spec import Spec

#: search axes a user can open up, in the order a fix is worth suggesting
RELAXABLE = ("recompute", "zero", "micro_batch", "tp", "pp", "offload", "precision",
             "sequence_parallel")


def _with_search(spec: Spec, **update) -> Spec:
    return spec.model_copy(update={"search": spec.search.model_copy(update=update)})


def _describe(spec: Spec, result: SearchResult) -> str:
    p = result.best.plan
    parts = []
    for axis in RELAXABLE:
        fixed = getattr(spec.search, axis)
        value = getattr(p, axis)
        if fixed != "auto" and value not in fixed:
            if axis == "zero":
                parts.append(f"ZeRO-{int(value)}")
            elif axis == "recompute":
                parts.append(f"{value.value} recompute")
            elif axis == "offload":
                parts.append(f"offload={value.value}")
            elif axis == "precision":
                parts.append(value.value)
            else:
                parts.append(f"{axis}={value}")
    return "fits with " + " and ".join(parts) + f" ({p.label})"


def nearest_fix(spec: Spec, *, executable: bool = False) -> list[str]:
    """Relaxations of pinned search axes that make a plan fit (with ``executable``, one the
    backend's executor can run), or failing those every axis opened; then the fewest GPUs."""
    fixes: list[str] = []
    for axis in RELAXABLE:
        if getattr(spec.search, axis) == "auto":
            continue
        result = search(_with_search(spec, **{axis: "auto"}), executable=executable)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    if not fixes:
        opened = _with_search(spec, **{a: "auto" for a in RELAXABLE})
        result = search(opened, executable=executable)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    gpus = fewest_gpus(spec, executable=executable)
    if gpus.value is not None:
        fixes.append(f"needs at least {gpus.value} GPUs ({gpus.label})")
    return fixes


#: multiples of the global batch tried when it may limit scaling
BATCH_MULTIPLES = (2, 4, 8, 16)
#: a larger batch "restores" scaling when its best MFU is this much above today's (relative)
BATCH_GAIN = 1.10


@dataclass(frozen=True)
class BatchLimit:
    """The global batch caps how far this cluster scales: each data-parallel rank already runs
    its whole share of the batch in few micro-batches, so communication and the pipeline bubble
    cannot hide behind accumulation; a larger batch (same tokens) would raise MFU."""

    sequences: int  #: the spec's global batch
    per_rank: int  #: sequences per data-parallel rank per step
    split: str  #: how the best plan runs them: "mb2×ga1"
    overhead: float  #: share of the step spent in exposed communication and the bubble
    mfu: float  #: the best plan's
    better_sequences: int  #: the smallest multiple tried that reaches better_mfu
    better_mfu: float
    better_plan: str

    def __str__(self) -> str:
        return (f"the global batch limits scaling: {self.sequences:,} sequences leave "
                f"{self.per_rank:,} per data-parallel rank ({self.split}; exposed communication "
                f"and bubble {self.overhead:.0%} of the step, MFU {self.mfu:.1%}); a global batch of "
                f"{self.better_sequences:,} sequences would reach MFU {self.better_mfu:.1%} "
                f"({self.better_plan}) if the model trains as well at that batch (its critical "
                f"batch size, McCandlish et al. 2018)")


def batch_limit(result: SearchResult, *, executable: bool = False) -> Optional[BatchLimit]:
    """Whether the spec's fixed global batch caps its scaling on this cluster, and what batch
    would restore it: the same search at 2, 4, 8 and 16 times the batch (the tokens to train
    unchanged).  Checked only when the best plan has no accumulation left or a tenth of its step
    is exposed communication and bubble; None when a larger batch gains less than 10 %."""
    spec, best = result.spec, result.best
    if best is None or best.time is None:
        return None
    st = best.time.step
    overhead = (st.tp_comm + st.ep_comm + st.cp_comm + st.pp_comm + st.dp_comm + st.bubble) / st.total
    if best.plan.grad_accum > 1 and overhead < 0.1:
        return None
    gb = spec.global_batch_sequences
    field = ("training.global_batch_tokens" if spec.training.global_batch_tokens is not None
             else "training.global_batch_sequences")
    now = getattr(spec.training, field.split(".")[1])
    tried = []
    for k in BATCH_MULTIPLES:
        try:
            bigger = edit(spec, {field: now * k})
        except SpecError:
            break
        found = search(bigger, executable=executable).best
        if found is not None:
            tried.append((bigger.global_batch_sequences, found))
    if not tried:
        return None
    top = max(e.mfu for _, e in tried)
    if top < best.mfu * BATCH_GAIN:
        return None
    sequences, e = next((s, e) for s, e in tried if e.mfu >= best.mfu + 0.9 * (top - best.mfu))
    split = f"mb{best.plan.micro_batch}×ga{best.plan.grad_accum}"
    return BatchLimit(gb, gb // best.plan.dp, split, overhead, best.mfu, sequences, e.mfu,
                      e.plan.label)


#: the logits and loss "dominate" when they are at least this share of the peak
LOGITS_SHARE = 0.2


def logits_note(result: SearchResult) -> Optional[str]:
    """When the logits and the loss take a fifth of the best plan's peak or more (long sequences,
    large vocabularies), what would cut them: the fused, chunked cross-entropy the memory model
    knows (model.fused_loss: no full-size fp32 copies; Liger, Megatron), re-estimated on the
    same plan; tensor parallelism, whose vocab-parallel loss divides them by tp; and context
    parallelism, which divides them by cp."""
    spec, best = result.spec, result.best
    if best is None or spec.model.loss_fused:
        return None
    logits = best.memory.logits_loss
    if logits < LOGITS_SHARE * best.memory.total:
        return None
    from planner.estimate.predict import estimate
    fused = estimate(edit(spec, {"model.fused_loss": True}), best.plan, with_time=False)
    gib = 2.0 ** 30
    return (f"the logits and loss take {logits / gib:.1f} GiB of the {best.memory.total / gib:.1f}"
            f" GiB peak ({logits / best.memory.total:.0%}, vocab {spec.model.vocab_size:,} x "
            f"seq {spec.model.seq_len:,}); a fused, chunked cross-entropy (model.fused_loss: "
            f"true) keeps {fused.memory.logits_loss / gib:.1f} GiB at the loss "
            f"(peak {fused.memory.total / gib:.1f} GiB)"
            + (", tensor parallelism's vocab-parallel loss divides the logits by tp"
               if spec.cluster.gpus_per_node > 1 else "")
            + _cp_clause(best.plan, spec))


def _cp_clause(plan, spec) -> str:
    """Context parallelism divides the logits too: each rank holds its slice of the sequence."""
    if plan.cp > 1:
        return f", and they are already 1/{plan.cp} of the sequence's (cp {plan.cp})"
    if spec.cluster.world_size == 1:
        return ""
    return ", and context parallelism (search.cp) divides them by cp"


def plan_notes(result: SearchResult, *, executable: bool = False) -> tuple[str, ...]:
    """The advice lines the plan report carries (text `note`, JSON `notes`)."""
    limit = batch_limit(result, executable=executable)
    return tuple(n for n in (None if limit is None else str(limit), logits_note(result)) if n)
