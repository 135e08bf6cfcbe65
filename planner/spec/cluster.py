"""The cluster section of a spec: the GPU (from the catalog or explicit), the links inside a
node and the network between nodes."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, NonNegativeFloat, PositiveFloat, ValidationError, model_validator

from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt
from planner.spec.catalog import find_gpu, gpu_catalog, over_entry, unknown_name
from planner.spec.units import GiB, Precision

LinkKind = Literal["nvswitch", "nvlink", "pcie", "infinity_fabric"]

#: the largest cluster the search enumerates (2^20 GPUs, ten times today's largest): beyond it the
#: divisor and candidate enumeration no longer answers interactively
MAX_WORLD_SIZE = 2**20
#: the most GPUs (and NICs) one node may have: 14x today's largest NVLink domain (GB200 NVL72);
#: the network graph holds every GPU and NIC of a node, so its size grows with these
MAX_GPUS_PER_NODE = 1024
#: what a GPU that is not in the catalog must state
CUSTOM_GPU_FIELDS = {"memory_gib", "peak_tflops", "hbm_gbps", "intra_node_gbps"}


class EfficiencySpec(_Frozen):
    """Achieved fractions of peak the step-time model uses (docs/time-model.md)."""

    gemm_max: float = Field(0.8, gt=0, le=1, description="large-GEMM fraction of dense peak")
    gemm_half_dim: PositiveFloat = Field(256, description="GEMM dimension at half efficiency")
    attention_fwd: float = Field(0.5, gt=0, le=1, description="fused attention forward")
    attention_bwd: float = Field(0.4, gt=0, le=1, description="fused attention backward")
    attention_te_fwd: Optional[float] = Field(
        None, gt=0, le=1, description="Transformer Engine's fused attention forward "
                                      "(runtime.attention_kernel te; None: attention_fwd)")
    attention_te_bwd: Optional[float] = Field(
        None, gt=0, le=1, description="Transformer Engine's fused attention backward "
                                      "(None: attention_bwd)")
    attention_flash1_fwd: Optional[float] = Field(
        None, gt=0, le=1, description="first-generation FlashAttention forward (flash-attn 1.x "
                                      "or its Triton port; runtime.attention_kernel flash1; "
                                      "None: not measured on this GPU)")
    attention_flash1_bwd: Optional[float] = Field(
        None, gt=0, le=1, description="first-generation FlashAttention backward")
    gemm_fp32_max: float = Field(0.9, gt=0, le=1, description="fp32 (SIMT) GEMM fraction of "
                                 "the fp32 peak")
    gemm_fp32_half_dim: PositiveFloat = Field(64, description="fp32 GEMM dimension at half "
                                              "efficiency")
    attention_fp32: float = Field(0.5, gt=0, le=1, description="memory-efficient attention in "
                                  "fp32, of the fp32 peak")
    gemm_fp8_max: Optional[float] = Field(
        None, gt=0, le=1, description="large fp8 GEMM fraction of the fp8 peak (None: gemm_max)")
    gemm_fp8_half_dim: Optional[PositiveFloat] = Field(
        None, description="fp8 GEMM dimension at half efficiency (None: gemm_half_dim)")
    hbm: float = Field(0.85, gt=0, le=1, description="memory-bound kernels, of hbm_gbps")
    network: float = Field(0.85, gt=0, le=1, description="NCCL bus bandwidth, of link speed")
    overlap_slowdown: float = Field(
        0.0, ge=0, lt=1, description="share of the compute rate lost while an overlapped "
                                     "collective runs: the SMs NCCL's kernels hold (its 32 "
                                     "channels, one CTA each) over the GPU's SMs; 0: none")


class GpuSpec(_Frozen):
    """One accelerator: memory, dense peak throughput per dtype, bandwidths (GB/s)."""

    name: str
    memory_gib: PositiveFloat = Field(description="capacity visible to the framework, GiB")
    peak_tflops: dict[str, PositiveFloat] = Field(description="dense peak TFLOP/s per dtype")
    hbm_gbps: PositiveFloat = Field(description="HBM bandwidth, GB/s")
    intra_node_link: LinkKind = "nvswitch"
    intra_node_gbps: PositiveFloat = Field(description="per-GPU bidirectional link bandwidth, GB/s")
    pcie_gbps: PositiveFloat = Field(32, description="host<->GPU bandwidth per direction, GB/s")
    efficiency: EfficiencySpec = EfficiencySpec()
    cublas_workspace_mib: NonNegativeFloat = Field(
        8.125, description="PyTorch's cuBLAS workspace per (handle, stream), MiB")
    accelerator: Literal["cuda", "rocm", "cpu"] = Field(
        "cuda", description="what the framework runs on: cuda, rocm, or cpu (a CPU lab: "
                            "DeepSpeed's CPU accelerator over gloo)")
    price_per_gpu_hour: Optional[PositiveFloat] = Field(
        None, description="the catalog's indicative on-demand price, US$ per GPU-hour (None: "
                          "no cited price; set cluster.price_per_gpu_hour)")
    price_source: str = ""
    source: str = "user supplied"

    @model_validator(mode="before")
    @classmethod
    def _from_catalog(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if isinstance(data, dict) and "name" in data:
            found = find_gpu(str(data["name"]))
            if found is not None:
                data = over_entry(data, "name", found, nested=("efficiency", "peak_tflops"))
            elif not CUSTOM_GPU_FIELDS <= set(data):
                unknown = unknown_name("GPU", "GPUs", str(data["name"]), gpu_catalog())
                raise ValueError(f"name: {unknown} (a GPU outside the catalog needs "
                                 f"{', '.join(sorted(CUSTOM_GPU_FIELDS))})")
        return data

    def supports(self, precision: Precision) -> bool:
        return precision.value in self.peak_tflops

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GiB

    @property
    def hbm_bytes_per_s(self) -> float:
        """What memory-bound kernels achieve: the HBM bandwidth at the catalog's efficiency."""
        return self.hbm_gbps * 1e9 * self.efficiency.hbm


class IntraNodeSpec(_Frozen):
    """The link between GPUs of one node; defaults to the GPU catalog's usual server."""

    link: LinkKind
    gbps: PositiveFloat = Field(description="per-GPU bidirectional bandwidth, GB/s")
    latency_us: PositiveFloat = Field(3.0, description="per hop, microseconds")


class InterNodeSpec(_Frozen):
    """The network between nodes."""

    network: Literal["infiniband", "ethernet", "roce"] = "infiniband"
    nics_per_node: PositiveInt = Field(8, le=MAX_GPUS_PER_NODE, description="a rail-optimised "
                                       "node has one per GPU")
    nic_gbit: PositiveFloat = Field(200, description="per NIC, Gbit/s")
    latency_us: PositiveFloat = Field(15.0, description="per ring hop through the network "
                                      "(NCCL), microseconds")
    nodes_per_leaf: PositiveInt = Field(32, description="nodes under one leaf switch")
    oversubscription: float = Field(1.0, ge=1.0, description="leaf uplink oversubscription "
                                    "(1 = non-blocking fat tree)")

    @property
    def node_gbps(self) -> float:
        """Injection bandwidth of one node, GB/s."""
        return self.nics_per_node * self.nic_gbit / 8


class ProfileRef(_Frozen):
    """The calibration profile a cluster uses (planner/spec/profile.py), as applied: its file,
    the constants it set, the ones the spec's own values kept, and how it was fitted."""

    file: str
    constants: dict[str, float] = Field(default_factory=dict, description="the values applied")
    kept: tuple[str, ...] = Field((), description="constants the spec sets itself (they win)")
    gpu: str = ""
    gpu_figures: dict = Field(default_factory=dict, description="peaks and bandwidths it was "
                              "fitted against")
    runs: int = 0
    residual_before: Optional[float] = None
    residual_after: Optional[float] = None


#: what intra_node validates as while the GPU that gives its default is missing or wrong (the
#: spec is refused for the GPU, so this link is never used)
_NO_LINK = {"link": "pcie", "gbps": 1.0}


class ClusterSpec(_Frozen):
    profile: Optional[ProfileRef] = Field(
        None, description="a calibration profile written by `plan calibrate` (a YAML path, "
                          "relative to the spec): its constants apply under the spec's own")
    gpu: GpuSpec
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt = Field(8, le=MAX_GPUS_PER_NODE)
    intra_node: IntraNodeSpec = Field(description="defaults to the GPU's usual server link")
    inter_node: InterNodeSpec = InterNodeSpec()
    host_memory_gib: PositiveFloat = Field(1024, description="host RAM per node (offload)")
    price_per_gpu_hour: Optional[PositiveFloat] = Field(
        None, description="what one GPU-hour costs you, US$ (default: the GPU catalog's "
                          "indicative on-demand price, marked as such in the report)")

    @model_validator(mode="after")
    def _searchable_size(self) -> "ClusterSpec":
        if self.world_size > MAX_WORLD_SIZE:
            raise ValueError(f"nodes: {self.nodes:,} nodes x {self.gpus_per_node:,} GPUs = "
                             f"{self.world_size:,} GPUs; the planner searches clusters of up to "
                             f"{MAX_WORLD_SIZE:,} GPUs")
        return self

    @model_validator(mode="after")
    def _profile_for_this_gpu(self) -> "ClusterSpec":
        p = self.profile
        if p is not None and p.gpu and p.gpu != self.gpu.name:
            raise ValueError(f"profile: {p.file} was fitted on {p.gpu}; this cluster's GPU is "
                             f"{self.gpu.name} (calibrate on runs of this GPU)")
        if p is not None and p.gpu_figures:
            from planner.spec.profile import gpu_figures
            mine = gpu_figures(self.gpu)
            if mine != p.gpu_figures:
                raise ValueError(f"profile: {p.file} was fitted with {p.gpu} stated as "
                                 f"{p.gpu_figures}; this spec states {mine}: its efficiencies "
                                 f"are fractions of other peaks (calibrate with these)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_link(cls, data: Any) -> Any:
        if isinstance(data, dict) and "intra_node" not in data:
            try:
                gpu = GpuSpec.model_validate(data["gpu"])
            except (KeyError, ValidationError):
                # the GPU's own error (or its absence) is reported with its path; a stand-in
                # link keeps that one mistake from also reading as intra_node missing
                return {**data, "intra_node": _NO_LINK}
            data = {**data, "intra_node": {"link": gpu.intra_node_link,
                                           "gbps": gpu.intra_node_gbps}}
        return data

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def price(self) -> tuple[Optional[float], str]:
        """(US$ per GPU-hour or None, where it comes from): the spec's own, else the catalog's."""
        if self.price_per_gpu_hour is not None:
            return self.price_per_gpu_hour, "cluster.price_per_gpu_hour"
        if self.gpu.price_per_gpu_hour is not None:
            return self.gpu.price_per_gpu_hour, f"catalog default: {self.gpu.price_source}"
        return None, ""
