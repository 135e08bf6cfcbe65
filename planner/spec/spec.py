"""The spec language: YAML validated once, at the boundary, into frozen pydantic models.

Downstream code never re-validates or re-defaults: presets and per-architecture defaults are
resolved here, and derived values (``head_dim``, ``world_size``) are properties.  Reading a spec
from YAML or a dict, with its one-line errors, is ``planner.spec.loading``'s.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from annotated_types import Gt, Le
from pydantic import (Field, NonNegativeFloat, PositiveFloat, PrivateAttr, Strict,
                      field_validator, model_validator)

from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt
from planner.spec.cluster import (MAX_WORLD_SIZE, ClusterSpec,  # noqa: F401 (API)
                                  EfficiencySpec, GpuSpec, InterNodeSpec, IntraNodeSpec)
from planner.spec.launch import LaunchSpec, NcclSpec, SlurmSpec  # noqa: F401 (API)
from planner.spec.training import (LAW_CONSTANTS, BudgetSpec, LabSpec,  # noqa: F401 (API)
                                   ScalingLawSpec, TrainingSpec)
from planner.spec.units import (AttentionKernel, ContextParallel, Fp8Recipe, Offload,
                                Precision, Recompute, ZeroStage)

from planner.spec.model import (MAX_D_FF, MAX_D_MODEL, MAX_LAYERS,  # noqa: F401 (API)
                                MAX_SEQ_LEN, MAX_VOCAB, ModelSpec, MoESpec)

#: the largest integer a spec may hold (past it, arithmetic overflows float64 and numpy)
MAX_SPEC_INT = 10**15
#: the largest and the smallest non-zero magnitude of a float a spec may hold: a FLOP budget of
#: 1e27 fits, while a product of a few such numbers stays far from float64's 1.8e308
MAX_SPEC_FLOAT, MIN_SPEC_FLOAT = 1e30, 1e-30

# -------------------------------------------------------------------------------------- search

#: values one search axis may list (a longer list is a mistake, and its candidates unbounded)
MAX_AXIS_VALUES = 1024
#: the largest micro-batch a search axis may list: sequences x seq_len x d_model stays in int64
MAX_MICRO_BATCH = 2**16
#: a parallel degree: at most the largest cluster (so dp*tp*pp stays in int64)
Degree = Annotated[int, Strict(), Gt(0), Le(MAX_WORLD_SIZE)]
MicroBatch = Annotated[int, Strict(), Gt(0), Le(MAX_MICRO_BATCH)]
#: 'auto' context parallelism keeps at least this many tokens of a sequence on each rank: below
#: it attention is a small share of a block's work and the split only adds exchanges (list cp
#: values to search others)
MIN_CP_TOKENS = 4096


def _as_axis(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list allows nothing; use 'auto' or list values")
        if len(value) > MAX_AXIS_VALUES:
            raise ValueError(f"{len(value):,} values; an axis lists at most {MAX_AXIS_VALUES:,} "
                             f"(or 'auto')")
        return tuple(value)
    return (value,)


class SearchSpec(_Frozen):
    """Each dimension: one value, a list, or 'auto' (every value that can make sense)."""

    dp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    tp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    pp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    ep: Union[Literal["auto"], tuple[Degree, ...]] = Field(
        "auto", description="expert-parallel degrees for a mixture-of-experts model; auto: the "
                            "divisors of experts that divide dp")
    cp: Union[Literal["auto"], tuple[Degree, ...]] = Field(
        "auto", description="context-parallel degrees (the sequence split over cp ranks); auto: "
                            "1, and every divisor of the world size that leaves each rank at "
                            f"least {MIN_CP_TOKENS:,} tokens of a sequence")
    cp_kind: Union[Literal["auto"], tuple[ContextParallel, ...]] = Field(
        "auto", description="how cp ranks attend: ulysses (all-to-all, DeepSpeed-Ulysses) or "
                            "ring (K/V passed round the ring, Megatron-Core / torchtitan CP); "
                            "auto: both")
    zero: Union[Literal["auto"], tuple[ZeroStage, ...]] = "auto"
    precision: Union[Literal["auto"], tuple[Precision, ...]] = "auto"
    micro_batch: Union[Literal["auto"], tuple[MicroBatch, ...]] = "auto"
    recompute: Union[Literal["auto"], tuple[Recompute, ...]] = "auto"
    offload: Union[Literal["auto"], tuple[Offload, ...]] = (Offload.NONE,)
    sequence_parallel: Union[Literal["auto"], tuple[bool, ...]] = (False,)
    memory_headroom: float = Field(0.0, ge=0, lt=0.9,
                                   description="fraction of GPU memory kept free")
    top: PositiveInt = Field(5, description="plans in the report's table, the best included")

    @field_validator("dp", "tp", "pp", "ep", "cp", "cp_kind", "zero", "precision", "micro_batch",
                     "recompute", "offload", "sequence_parallel", mode="before")
    @classmethod
    def _axis(cls, value: Any) -> Any:
        return _as_axis(value)


#: runtime.host_sync_fraction when a spec does not write it, per backend: fitted on DeepSpeed-engine
#: runs (its per-micro-batch bookkeeping waits on the GPU); Megatron-Core's schedule issues no
#: synchronising call per micro-batch, so its host runs ahead (docs/time-model.md)
HOST_SYNC_DEFAULT = {"deepspeed": 0.8, "megatron": 0.0, "fsdp": 0.8}
#: runtime.zero3_gather_granularity when a spec does not write it, per backend: FSDP gathers per
#: wrapped block
GATHER_DEFAULT = {"deepspeed": "module", "megatron": "module", "fsdp": "block"}


#: what each runtime.attention_kernel names, for messages
ATTENTION_NAMES = {"flash1": "first-generation FlashAttention (flash-attn 1.x or its Triton port)",
                   "flash2": "FlashAttention-2", "te": "Transformer Engine's attention"}


class RuntimeSpec(_Frozen):
    """The framework that runs the plan (``backend``), its buffer sizes (DeepSpeed's defaults) and
    the allocator facts the report shows."""

    backend: Literal["deepspeed", "megatron", "fsdp"] = Field(
        "deepspeed", description="the framework whose buffers, rules and host behaviour are "
        "priced (planner/backends/): deepspeed (what plan --execute runs), megatron "
        "(Megatron-Core with its distributed optimizer and Transformer Engine; plan-only) or "
        "fsdp (PyTorch FSDP, fully_shard per block as torchtitan applies it; plan-only)")
    attention_kernel: Optional[Literal["flash1", "flash2", "te"]] = Field(
        None, description="whose fused attention kernel runs model.attention flash, for its "
                          "efficiency: flash1 = first-generation FlashAttention (flash-attn 1.x, "
                          "or its Triton port: MPT's attn_impl triton; gpu efficiency "
                          "attention_flash1_fwd/bwd), flash2 = FlashAttention-2 as PyTorch "
                          "stacks call it (flash-attn 2.x, SDPA's flash backend; "
                          "attention_fwd/bwd), te = Transformer Engine's DotProductAttention "
                          "(attention_te_fwd/bwd); unwritten: te under backend megatron, else "
                          "flash2")
    fsdp_version: Optional[Literal[1, 2]] = Field(
        None, description="PyTorch FSDP's API (backend fsdp only): 1 = FullyShardedDataParallel, "
                          "flat parameters, host hooks once per wrapped unit (llm-foundry, "
                          "fms-fsdp, Lightning); 2 = fully_shard, per-parameter DTensors, host "
                          "work per parameter (torchtitan); unwritten: 2")
    grad_reduce_in_fp32: Optional[bool] = Field(
        None, description="megatron only: main gradients accumulated and reduced in fp32 "
        "(true) or in the parameters' dtype (false: --grad-reduce-in-bf16, Megatron-Bridge's "
        "performance recipes); null = Megatron-LM's default: fp32 for bf16, fp16 for fp16")

    cuda_context_gib: NonNegativeFloat = Field(
        0.5, description="CUDA context + kernels, outside PyTorch's allocator")
    allocator_fragmentation: NonNegativeFloat = Field(
        0.175, description="reserved/allocated - 1 of the caching allocator "
        "(median of the H200 calibration runs)")
    reduce_bucket_size: PositiveInt = Field(500_000_000, description="elements")
    allgather_bucket_size: PositiveInt = Field(500_000_000, description="elements")
    stage3_prefetch_bucket_size: PositiveInt = Field(50_000_000, description="elements")
    stage3_max_live_parameters: PositiveInt = Field(1_000_000_000, description="elements")
    stage3_param_persistence_threshold: PositiveInt = Field(100_000, description="elements")
    stage3_max_reuse_distance: PositiveInt = Field(1_000_000_000, description="elements")
    sub_group_size: PositiveInt = Field(1_000_000_000, description="elements")
    contiguous_gradients: bool = Field(True, description="DeepSpeed's gradient bucket copies")
    overlap_comm: Optional[bool] = Field(
        None, description="None: DeepSpeed's default (on for ZeRO-3, off for 1/2); on doubles "
                          "the ZeRO-1/2 bucket")
    virtual_stages: PositiveInt = Field(1, description="interleaved pipeline chunks per stage "
                                        "(1 = 1F1B, all DeepSpeed runs; more needs backend "
                                        "megatron or fsdp)")
    cpu_op_us: NonNegativeFloat = Field(
        75.0, description="host time per kernel of eager PyTorch under the DeepSpeed engine "
                          "(module and dispatch overhead), microseconds")
    zero_hook_us: NonNegativeFloat = Field(
        30.0, description="DeepSpeed ZeRO-1/2 gradient-hook work per parameter tensor and "
                          "micro-batch, microseconds")
    zero3_module_us: NonNegativeFloat = Field(
        700.0, description="DeepSpeed ZeRO-3 fetch/release bookkeeping per module and pass, "
                           "microseconds")
    optimizer_tensor_us: NonNegativeFloat = Field(
        100.0, description="per-parameter-tensor host work of an unfused optimizer step, "
                          "microseconds")
    zero3_gather_granularity: Literal["tensor", "module", "block"] = Field(
        "module", description="ZeRO-3 gathers per parameter tensor (DeepSpeed < 0.7), per "
                              "module (DeepSpeed now) or per block (FSDP units)")
    host_sync_fraction: float = Field(
        HOST_SYNC_DEFAULT["deepspeed"], ge=0, le=1,
        description="share of the host's per-micro-batch work that waits on the GPU "
                    "(synchronising calls) instead of running ahead; unwritten: 0.8 under "
                    "deepspeed, 0 under megatron")
    host_adam_params_per_s: PositiveFloat = Field(
        1.0e9, description="DeepSpeedCPUAdam throughput per GPU's share of the host")
    torch_adam: bool = Field(False, description="PyTorch's foreach AdamW instead of DeepSpeed's "
                             "fused kernel (adds a 4-byte/param temporary in the step)")
    fp8_recipe: Union[Literal["auto"], Fp8Recipe] = Field(
        "auto", description="how precision fp8 scales its GEMMs and what it keeps "
                            "(planner/model/fp8.py): te_delayed, te_current, te_mxfp8, "
                            "torchao_tensorwise, torchao_rowwise; auto: te_mxfp8 on a GPU with "
                            "MX formats (fp4 in its peaks), else te_delayed")
    fp8_all_gather: bool = Field(
        False, description="ZeRO-3/FSDP all-gathers the fp8 GEMM weights in fp8 (torchao "
                           "enable_fsdp_float8_all_gather, Megatron --fp8-param-gather); "
                           "torchao_rowwise gathers bf16 whatever this says")
    cpu_checkpointing: bool = Field(
        False, description="DeepSpeed activation_checkpointing.cpu_checkpointing (with "
                           "partition_activations): under full recompute each block's "
                           "checkpointed input lives in host memory and crosses PCIe twice a "
                           "step; the GPU holds only the block being recomputed")

    @model_validator(mode="before")
    @classmethod
    def _backend_defaults(cls, data: Any) -> Any:
        """The host-sync and gather-granularity defaults are the backend's when the spec does not
        write them."""
        if isinstance(data, dict) and data.get("backend") in HOST_SYNC_DEFAULT:
            backend = data["backend"]
            data = {"host_sync_fraction": HOST_SYNC_DEFAULT[backend],
                    "zero3_gather_granularity": GATHER_DEFAULT[backend], **data}
        return data

    @property
    def attention_impl(self) -> str:
        """The fused attention kernel that runs: attention_kernel, or the backend's default."""
        return self.attention_kernel or ("te" if self.backend == "megatron" else "flash2")

    @model_validator(mode="after")
    def _backend_options(self) -> "RuntimeSpec":
        if self.backend != "fsdp" and self.fsdp_version is not None:
            raise ValueError(f"fsdp_version: a PyTorch FSDP option, but runtime.backend is "
                             f"{self.backend}; set runtime.backend: fsdp, or leave it out")
        if self.backend != "megatron" and self.grad_reduce_in_fp32 is not None:
            raise ValueError("grad_reduce_in_fp32: a Megatron-Core option; set "
                             "runtime.backend: megatron, or leave it out (DeepSpeed's gradient "
                             "dtype follows the precision)")
        if self.backend == "deepspeed" and self.virtual_stages > 1:
            raise ValueError(f"virtual_stages: {self.virtual_stages} interleaved chunks per "
                             f"stage, but DeepSpeed's pipeline engine runs plain 1F1B; "
                             f"interleaving is Megatron-Core's (runtime.backend: megatron) or "
                             f"torch.distributed.pipelining's (fsdp)")
        if self.backend != "deepspeed" and self.cpu_checkpointing:
            raise ValueError(f"cpu_checkpointing: DeepSpeed's activation checkpointing "
                             f"option; runtime.backend {self.backend} has none")
        return self


# ---------------------------------------------------------------------------------------- spec

class Spec(_Frozen):
    model: ModelSpec
    cluster: ClusterSpec
    training: TrainingSpec
    search: SearchSpec = SearchSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    launch: LaunchSpec = LaunchSpec()
    name: Optional[str] = None
    description: Optional[str] = None
    #: the mapping as written (before presets and defaults), kept by spec_from_dict so that
    #: what-if edits change what the user wrote (planner/whatif.py); not a field
    _written: Optional[dict] = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """cluster.profile: a file of calibrated constants, merged under what the spec writes."""
        cluster = data.get("cluster") if isinstance(data, dict) else None
        path = cluster.get("profile") if isinstance(cluster, dict) else None
        if not isinstance(path, str):
            return data
        from planner.spec.profile import load_profile, merge_profile
        try:
            profile = load_profile(path)
        except ValueError as exc:
            raise ValueError(f"cluster.{exc}") from None
        data, kept = merge_profile(data, profile)
        data["cluster"]["profile"] = {
            "file": path, "constants": {k: v for k, v in profile.constants.items()
                                        if k not in kept},
            "kept": tuple(kept), "gpu": profile.gpu, "gpu_figures": profile.gpu_figures,
            "runs": profile.runs,
            "residual_before": _finite(profile.residual_before),
            "residual_after": _finite(profile.residual_after)}
        return data

    @model_validator(mode="after")
    def _batch_fits_sequence(self) -> "Spec":
        tokens = self.training.global_batch_tokens
        if tokens is not None and tokens % self.model.seq_len:
            raise ValueError(f"training.global_batch_tokens: {tokens} is not a multiple of "
                             f"model.seq_len ({self.model.seq_len})")
        sequences = self.training.global_batch_sequences
        if sequences is not None and sequences * self.model.seq_len > MAX_SPEC_INT:
            raise ValueError(f"training.global_batch_sequences: {sequences:,} sequences of "
                             f"{self.model.seq_len:,} tokens is over the {MAX_SPEC_INT:.0e} tokens "
                             f"a step may hold")
        return self

    @model_validator(mode="after")
    def _attention_kernel_measured(self) -> "Spec":
        eff = self.cluster.gpu.efficiency
        flash1 = self.runtime.attention_impl == "flash1" \
            and self.model.attention is AttentionKernel.FLASH
        if flash1 and (eff.attention_flash1_fwd is None or eff.attention_flash1_bwd is None):
            raise ValueError(
                f"runtime.attention_kernel: flash1 has no measured efficiency on the "
                f"{self.cluster.gpu.name} (set cluster.gpu.efficiency.attention_flash1_fwd and "
                f"attention_flash1_bwd, or a cluster.profile that holds them)")
        return self

    @property
    def global_batch_sequences(self) -> int:
        if self.training.global_batch_sequences is not None:
            return self.training.global_batch_sequences
        return self.training.global_batch_tokens // self.model.seq_len


def _finite(x: float) -> Optional[float]:
    return x if x == x and abs(x) != float("inf") else None


__all__ = ["Spec", "ModelSpec", "ClusterSpec", "GpuSpec", "TrainingSpec", "BudgetSpec", "LabSpec",
           "LaunchSpec", "SlurmSpec", "NcclSpec", "ScalingLawSpec", "SearchSpec", "RuntimeSpec"]
