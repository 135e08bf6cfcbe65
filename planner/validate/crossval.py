"""Out-of-sample error of the step-time model on published runs: leave one source out.

The constants fitted on the published runs are each GPU generation's GEMM and attention
efficiencies (``FITTED``; docs/time-model.md).  For every source (a paper, a framework's
benchmark page), they are refitted on the other sources' runs of the same GPU, starting from and
weakly pulled toward ``PRIORS`` (values known without any of these runs), and the left-out
source's runs are predicted.  A GPU none of whose other runs remain is predicted with the priors
alone.  Nothing of the left-out source reaches its own prediction.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from planner.estimate.timing import throughput
from planner.spec.profile import with_constants
from planner.validate.calibrate import MeasuredRun, fit_constants
from planner.validate.published import PublishedRun

#: what was fitted on the published runs, per GPU generation
FITTED = ("gemm_max", "attention_fwd", "attention_bwd", "attention_flash1_fwd",
          "attention_flash1_bwd")
#: values known without the published runs:
#: - gemm_max 0.81: the one large-GEMM measurement we hold, an 8192^3 bf16 GEMM at 802 of 989
#:   TFLOP/s on the H200 (shared/calibration's matmul row); no A100 or H100 GEMM was measured;
#: - A100 attention: FlashAttention-2 forward ~60 %, backward ~45-50 % of peak (Dao 2023, fig. 5);
#: - H100 attention: FlashAttention-2, causal, head dim 128, 16k tokens: forward 335 and
#:   backward 322 of 989 TFLOP/s (Shah et al. 2024, FlashAttention-3, figs. 5 and 6);
#: - first-generation FlashAttention (flash-attn 1.x, its Triton port), forward + backward,
#:   causal, head dim 128, 16k tokens (FlashAttention-2's release benchmark, Dao 2023, figs. 4
#:   and 7; flash-attention's assets/flash2_{a100,h100}_fwd_bwd_benchmark.png): 83 (CUDA) and 80
#:   (Triton) of 312 TFLOP/s on the A100, 137 (CUDA) of 989 on the H100; only the sum of the
#:   passes is published, so both take it.
PRIORS = {"A100": {"gemm_max": 0.81, "attention_fwd": 0.60, "attention_bwd": 0.475,
                   "attention_flash1_fwd": 0.26, "attention_flash1_bwd": 0.26},
          "H100": {"gemm_max": 0.81, "attention_fwd": 0.339, "attention_bwd": 0.326,
                   "attention_flash1_fwd": 0.14, "attention_flash1_bwd": 0.14}}
#: log-space width of the pull toward the prior: about one run's worth
PRIOR_SIGMA = 0.3


def generation(gpu_name: str) -> str:
    """The GPU generation the fitted constants belong to (A100 40/80 GB share one chip)."""
    return re.split(r"[-_ ]", gpu_name)[0]


@dataclass(frozen=True)
class Prediction:
    id: str
    source: str
    measured: float  #: tokens/s per GPU
    in_sample: float  #: with the catalog's constants (fitted on all runs)
    out_of_sample: float  #: with the constants refitted without this run's source
    fitted_on: int  #: runs of this GPU the refit used (0: the priors alone)

    @property
    def error_in(self) -> float:
        return self.in_sample / self.measured - 1

    @property
    def error_out(self) -> float:
        return self.out_of_sample / self.measured - 1


def _per_gpu(run: PublishedRun, values: dict[str, float]) -> float:
    spec = with_constants(run.spec, values)
    return float(throughput(spec, run.plan).tokens_per_s) / run.plan.world_size


def _step_s(run: PublishedRun) -> float:
    """The measured step time the published tokens/s per GPU implies."""
    tokens = run.spec.global_batch_sequences * run.spec.model.seq_len
    return tokens / (run.tokens_per_s_per_gpu * run.plan.world_size)


def refit(runs: Sequence[PublishedRun], gen: str) -> dict[str, float]:
    """The generation's fitted constants from these runs (its priors when there are none)."""
    prior = PRIORS[gen]
    measured = [MeasuredRun(r.id, r.spec, r.plan, _step_s(r)) for r in runs]
    return fit_constants(measured, FITTED, dict(prior), prior=prior, prior_sigma=PRIOR_SIGMA)


def family(source: str) -> str:
    """The publisher a source belongs to: two pages of one framework's benchmarks (torchtitan's
    performance page of 2024 and of 2025, llm-foundry's tables) are one source, so that leaving
    one out leaves out the other."""
    s = source.lower()
    for name in ("llm-foundry", "llmfoundry", "torchtitan", "torchao"):
        if name in s:
            return name.replace("llmfoundry", "llm-foundry")
    return source


def leave_one_source_out(runs: Sequence[PublishedRun],
                         extra: Sequence[PublishedRun] = ()) -> list[Prediction]:
    """Predict each run with the constants refitted without its source; ``extra`` runs (from
    other samples) join every refit whose held-out source is not theirs, and are not predicted
    themselves."""
    out = []
    sources = sorted({r.source for r in runs})
    pool = list(runs) + list(extra)
    for source in sources:
        held = [r for r in runs if r.source == source]
        for gen in sorted({generation(r.spec.cluster.gpu.name) for r in held}):
            train = [r for r in pool if family(r.source) != family(source)
                     and generation(r.spec.cluster.gpu.name) == gen]
            values = refit(train, gen)
            for r in held:
                if generation(r.spec.cluster.gpu.name) != gen:
                    continue
                out.append(Prediction(r.id, source, r.tokens_per_s_per_gpu, _per_gpu(r, {}),
                                      _per_gpu(r, values), len(train)))
    return sorted(out, key=lambda p: [r.id for r in runs].index(p.id))


def summary(errors: Sequence[float]) -> dict[str, float]:
    a = np.abs(np.asarray(errors))
    return {"median": float(statistics.median(a)), "p90": float(np.percentile(a, 90)),
            "worst": float(a.max())}


__all__ = ["leave_one_source_out", "family", "Prediction", "summary", "refit", "FITTED", "PRIORS",
           "generation"]
