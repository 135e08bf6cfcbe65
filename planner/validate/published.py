"""Published multi-GPU training runs (shared/calibration/published_runs_sample.yaml) as Spec +
Plan, so the step-time model can be checked against them.

Each run is described by what its source states: shape, hardware, parallel layout, precision,
recompute, and the framework's known behaviour (whether data-parallel traffic overlaps backward,
fused kernels, FlashAttention, interleaved pipeline, and the backend whose buffers and host
behaviour it has: Megatron-LM's own runs take runtime.backend megatron, FULL_SHARD FSDP runs
runtime.backend fsdp).  Nothing is tuned per run.  The measured
quantity compared is tokens per second per GPU, which is free of FLOP-counting conventions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.spec import Spec
from planner.spec.units import Offload, Precision, Recompute, ZeroStage

#: the sources' GPU names and the catalog entry each means
GPU_NAMES = {"A100-SXM4-80GB": "A100-80GB-SXM", "A100-80GB": "A100-80GB-SXM",
             "A100-40GB": "A100-40GB-SXM", "A100-SXM4-40GB": "A100-40GB-SXM",
             "H100-80GB": "H100-SXM", "H100-SXM": "H100-SXM"}
#: DGX-class scale-out when a source does not say: 8 x HDR (A100) or 8 x NDR (H100) per node
DEFAULT_NIC_GBIT = {"A100-80GB-SXM": 200, "A100-40GB-SXM": 200, "H100-SXM": 400}
FLASH_FRAMEWORKS = ("FSDP", "torchtitan", "Composer", "lit-gpt", "FlashAttention")


@dataclass(frozen=True)
class PublishedRun:
    id: str
    spec: Spec
    plan: Plan
    tokens_per_s_per_gpu: float
    notes: str
    source: str = ""  #: the paper or benchmark it comes from (its short name)


def source_of(title: str) -> str:
    """A source's short name from its title: the part before a comma, parenthesis or quote."""
    return re.split(r",| \(| '", title)[0].strip()


def _gpu(hw: dict[str, Any]) -> str:
    name = hw["gpu_type"].split(" (")[0]
    return GPU_NAMES.get(name, name)


def _framework(par: dict[str, Any], model: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (par.get("framework"), par.get("fsdp"), model.get("notes"),
                                     par.get("notes")) if x)


def _old_deepspeed(entry: dict[str, Any], framework: str) -> bool:
    """DeepSpeed before 0.7 (2022-08): overlap_comm defaulted to off for every stage and
    ZeRO-3 gathered parameter by parameter."""
    return "DeepSpeed" in framework and str(entry["source"].get("date", "")) < "2022-08"


def _overlap(entry: dict[str, Any], framework: str) -> bool:
    """FSDP prefetches and reduce-scatters during backward; Megatron's 'local' DDP and the runs
    that say so all-reduce after backward; DeepSpeed ZeRO-3 overlaps by default since 0.7."""
    par = entry["parallel"]
    if par.get("fsdp"):
        return True
    if "No overlap" in framework or "DDP impl = local" in framework:
        return False
    return (par.get("zero_stage") or 0) == 3 and not _old_deepspeed(entry, framework)


def _granularity(entry: dict[str, Any], framework: str) -> str:
    if entry["parallel"].get("fsdp"):
        return "block"
    return "tensor" if _old_deepspeed(entry, framework) else "module"


def _zero(par: dict[str, Any]) -> int:
    stage = par.get("zero_stage")
    if stage is None:  # Megatron without the distributed optimizer
        stage = 0
    if par["pipeline_parallel"] > 1:
        stage = min(stage, 1)
    return stage


def _cpu_checkpointing(par: dict[str, Any]) -> bool:
    """DeepSpeed's activation checkpoints in host memory, when the run says so."""
    return "offloaded to CPU" in str(par.get("activation_recompute") or "")


def _offload(framework: str) -> Offload:
    """ZeRO-Offload of the optimizer states, when the framework line says so."""
    return Offload.OPTIMIZER_CPU if "with CPU offload" in framework else Offload.NONE


def _recompute(text: str) -> Recompute:
    for r in (Recompute.SELECTIVE, Recompute.FULL, Recompute.NONE):
        if text.startswith(r.value):
            return r
    return Recompute.NONE


def _backend(entry: dict[str, Any], framework: str) -> dict[str, Any]:
    """Megatron-LM on its own (not Megatron-DeepSpeed) runs under the megatron backend; PyTorch
    FSDP with FULL_SHARD (ZeRO-3's role) under the fsdp backend, as FSDP2 where the run says
    fully_shard / FSDP2 and FSDP1 otherwise (FULL_SHARD is FSDP1's sharding strategy; fms-fsdp
    and lit-gpt wrapped models in FullyShardedDataParallel)."""
    if framework.startswith("Megatron-LM ("):
        return {"backend": "megatron"}
    fsdp = str(entry["parallel"].get("fsdp") or "")
    if fsdp and _zero(entry["parallel"]) == 3:
        return {"backend": "fsdp",
                "fsdp_version": 2 if "FSDP2" in fsdp or "fully_shard" in fsdp else 1}
    return {}


#: llm-foundry's large-scale section (scripts/train/benchmarking/sweep.py, January 2024) passed
#: --attn_impl flash (flash-attn 2.4.2) for these models and --attn_impl triton for 13b and 30b
LLM_FOUNDRY_FLASH2 = ("MPT-1b", "MPT-3b", "MPT-7b", "MPT-70b")


def _attention_kernel(entry: dict[str, Any], framework: str) -> dict[str, Any]:
    """llm-foundry's benchmark tables ran MPT's attn_impl triton (FlashAttention's first-generation
    Triton port; submit_benchmarks.py's default, which sweep.sh of October 2023 never overrode)
    except the large-scale rows that sweep.py gave --attn_impl flash; the others ran
    FlashAttention-2 or Megatron's kernels (the backend's default)."""
    if "Composer" not in framework:
        return {}
    large = "Large Scale" in str(entry["source"].get("locator", ""))
    flash2 = large and entry["model"]["name"] in LLM_FOUNDRY_FLASH2
    return {"attention_kernel": "flash2" if flash2 else "flash1"}


def published_run(entry: dict[str, Any]) -> PublishedRun:
    model, hw, par = entry["model"], entry["hardware"], entry["parallel"]
    framework = _framework(par, model)
    gpu = _gpu(hw)
    nodes = hw["total_gpus"] // hw["gpus_per_node"]
    node_gbit = hw.get("network_gbps_per_node") or 8 * DEFAULT_NIC_GBIT.get(gpu, 200)
    swiglu = model["ffn_activation"] == "swiglu"
    flash = any(k in framework for k in FLASH_FRAMEWORKS)
    gbs, dp, mb = par["global_batch_size_seqs"], par["data_parallel"], par["micro_batch_size"]
    spec = spec_from_dict({
        "name": entry["id"],
        "model": {"arch": "llama" if swiglu else "gpt2", "name": model["name"],
                  "n_layers": model["num_layers"], "d_model": model["hidden_size"],
                  "n_heads": model["num_attention_heads"],
                  "n_kv_heads": model.get("num_kv_heads") or model["num_attention_heads"],
                  "d_ff": model["ffn_hidden_size"], "vocab_size": model["vocab_size"],
                  "seq_len": model["seq_length"], "attention": "flash" if flash else "eager",
                  "fused_kernels": True},
        "cluster": {"gpu": gpu, "nodes": nodes, "gpus_per_node": hw["gpus_per_node"],
                    "inter_node": {"nics_per_node": 8, "nic_gbit": node_gbit / 8}},
        "training": {"tokens": 1e12, "global_batch_sequences": gbs},
        "runtime": {"overlap_comm": _overlap(entry, framework),
                    "cpu_checkpointing": _cpu_checkpointing(par),
                    "zero3_gather_granularity": _granularity(entry, framework),
                    "virtual_stages": par.get("interleaved_virtual_stages") or 1,
                    **_backend(entry, framework),
                    **_attention_kernel(entry, framework)},
    })
    precision = Precision.BF16 if "bf16" in par["precision"] else Precision.FP16
    plan = Plan(dp=dp, tp=par["tensor_parallel"], pp=par["pipeline_parallel"],
                zero=ZeroStage(_zero(par)), precision=precision, micro_batch=mb,
                grad_accum=max(1, gbs // (dp * mb)),
                recompute=_recompute(par.get("activation_recompute") or "none"),
                offload=_offload(framework), sequence_parallel=bool(par.get("sequence_parallel")))
    measured = entry["measured"].get("tokens_per_sec_per_gpu") \
        or entry.get("derived", {}).get("tokens_per_sec_per_gpu")
    return PublishedRun(entry["id"], spec, plan, float(measured), framework,
                        source_of(entry["source"].get("title", entry["id"])))


def load_published(path: str | Path) -> list[PublishedRun]:
    data = yaml.safe_load(Path(path).read_text())
    return [published_run(e) for e in data["runs"]]


def error(run: PublishedRun, predicted_tokens_per_s: float) -> float:
    return predicted_tokens_per_s / run.tokens_per_s_per_gpu - 1


__all__ = ["PublishedRun", "load_published", "published_run", "error", "source_of"]
