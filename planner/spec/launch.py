"""The launch section of a spec: how ``plan SPEC --execute`` starts the job on the spec's
cluster (executor/launch.py)."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt


class SlurmSpec(_Frozen):
    """What a SLURM job script needs beyond the cluster section (docs/executor.md)."""

    partition: Optional[str] = Field(None, description="#SBATCH --partition")
    account: Optional[str] = Field(None, description="#SBATCH --account")
    time: Optional[str] = Field(None, description="#SBATCH --time, e.g. 2-00:00:00")
    container_image: Optional[str] = Field(None, description="srun --container-image (pyxis)")
    extra: tuple[str, ...] = Field((), description="more #SBATCH options, e.g. --qos=high")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", value):
            raise ValueError(f"{value!r} is not a SLURM time: [D-]HH[:MM[:SS]], e.g. 2-00:00:00")
        return value


class NcclSpec(_Frozen):
    """NCCL settings the job exports (NCCL's environment variables)."""

    debug: Optional[Literal["VERSION", "WARN", "INFO", "TRACE"]] = Field(
        None, description="NCCL_DEBUG")
    socket_ifname: Optional[str] = Field(None, description="NCCL_SOCKET_IFNAME, e.g. ib0")
    ib_hca: Optional[str] = Field(None, description="NCCL_IB_HCA, e.g. mlx5")

    def env(self) -> dict[str, str]:
        names = {"debug": "NCCL_DEBUG", "socket_ifname": "NCCL_SOCKET_IFNAME",
                 "ib_hca": "NCCL_IB_HCA"}
        return {names[k]: str(v) for k, v in self.model_dump().items() if v is not None}


class LaunchSpec(_Frozen):
    """How ``plan SPEC --execute`` starts the job on the spec's cluster; the command and the
    script describe that cluster, never the machine that runs ``plan``."""

    launcher: Literal["auto", "torchrun", "deepspeed", "slurm"] = Field(
        "auto", description="auto: torchrun on one node, deepspeed with hosts, else slurm")
    hosts: Optional[tuple[str, ...]] = Field(None, description="one host per node (deepspeed)")
    hostfile: Optional[str] = Field(None, description="an existing DeepSpeed hostfile, relative "
                                    "to workdir (instead of hosts)")
    master_addr: Optional[str] = Field(None, description="rendezvous host (default: the first)")
    master_port: PositiveInt = Field(29500, le=65535)
    python: str = Field("python3", description="the interpreter of the environment the job "
                        "runs in, on the cluster's nodes")
    workdir: Optional[str] = Field(None, description="the project's directory on the cluster "
                                   "(default: where the job is submitted from)")
    env: dict[str, str] = Field(default_factory=dict, description="environment to pass")
    nccl: NcclSpec = NcclSpec()
    slurm: SlurmSpec = SlurmSpec()
    script: Optional[str] = Field(None, description="your own training script instead of the "
                                  "built-in GPT; it gets the plan's DeepSpeed config and layout")
    script_args: tuple[str, ...] = Field((), description="arguments for script")

    @model_validator(mode="after")
    def _one_host_list(self) -> "LaunchSpec":
        if self.hosts is not None and self.hostfile is not None:
            raise ValueError("hostfile: give hosts or hostfile, not both")
        return self

    def job_env(self) -> dict[str, str]:
        """What every rank gets: NCCL settings, then the spec's own variables."""
        return {**self.nccl.env(), **self.env}
