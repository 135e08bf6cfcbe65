"""The launch command, as an argv list (never a shell string).

- One node (CPU or GPU): ``torchrun --nproc_per_node N`` (the fastest launcher; on CPU it is also
  the only one that starts N processes without ssh).
- Several nodes: DeepSpeed's launcher with a hostfile (``--no_ssh_check --master_addr``), or a
  generated SLURM sbatch script that runs torchrun on every node through ``srun``.

Each rank runs ``python -m executor.train --run-dir RUN_DIR``.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from planner.plan.strategy import Plan
from planner.spec.spec import Spec

from .errors import ExecutorError

Launcher = Literal["auto", "torchrun", "deepspeed", "slurm"]
TRAIN_MODULE = "executor.train"
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """What to run: argv, the environment it adds, and the files it refers to."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    hostfile: Optional[str] = None  #: text of the DeepSpeed hostfile, when several nodes
    sbatch: Optional[str] = None  #: text of the SLURM script (then argv is ["sbatch", script])

    def describe(self, ds_config: dict) -> str:
        """The --dry-run output: config JSON, hostfile and command."""
        parts = ["# DeepSpeed config", json.dumps(ds_config, indent=2)]
        if self.hostfile is not None:
            parts += ["# hostfile", self.hostfile.rstrip()]
        if self.sbatch is not None:
            parts += ["# sbatch script", self.sbatch.rstrip()]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())
                       if k != "PATH")  # PATH only adds the interpreter's directory
        parts += ["# command", (env + " " if env else "") + shlex.join(self.argv)]
        return "\n".join(parts) + "\n"


def free_port() -> int:
    """A port no one listens on now (each concurrent launch needs its own master port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(procs_per_node: int, device: str) -> dict[str, str]:
    """Environment for every rank.  On CPU DeepSpeed must be told its accelerator, and ranks
    share the cores: without OMP_NUM_THREADS each would start one thread per core."""
    # DeepSpeed JIT-builds its ops with ninja, looked up on PATH: a virtual environment's own
    # ninja (pip's package) is found even when the environment is not activated
    env = {"PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    if device == "cpu":
        cores = os.cpu_count() or 1
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, cores // procs_per_node))
    else:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "4")
    return env


def train_args(run_dirs: Sequence[Path], extra: Sequence[str]) -> list[str]:
    args = []
    for d in run_dirs:
        args += ["--run-dir", str(d)]
    return args + list(extra)


def torchrun_argv(procs: int, master_port: int, run_dirs: Sequence[Path],
                  extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
            "--master_port", str(master_port), "-m", TRAIN_MODULE, *train_args(run_dirs, extra)]


def hostfile_text(hosts: Sequence[str], slots: int) -> str:
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def deepspeed_argv(spec: Spec, master_port: int, run_dirs: Sequence[Path], *,
                   hostfile: Optional[Path], master_addr: Optional[str],
                   extra: Sequence[str] = ()) -> list[str]:
    """DeepSpeed's launcher: --num_gpus on one node; a hostfile for several.  With a hostfile it
    would ssh to check each host, and pick a master address by ssh too."""
    argv = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(master_port)]
    if hostfile is None:
        argv += ["--num_gpus", str(spec.cluster.gpus_per_node)]
    else:
        argv += ["--hostfile", str(hostfile), "--num_nodes", str(spec.cluster.nodes),
                 "--num_gpus", str(spec.cluster.gpus_per_node), "--no_ssh_check",
                 "--master_addr", master_addr or "127.0.0.1"]
    return argv + ["--module", TRAIN_MODULE, *train_args(run_dirs, extra)]


def sbatch_script(spec: Spec, run_dirs: Sequence[Path], master_port: int, env: dict[str, str],
                  extra: Sequence[str] = ()) -> str:
    """One task per node; each runs torchrun for the node's GPUs, meeting at the first node."""
    g = spec.cluster.gpus_per_node
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(spec.cluster.nodes),
                "--nproc_per_node", str(g), "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"$MASTER_ADDR:{master_port}", "--rdzv_id", "$SLURM_JOB_ID",
                "-m", TRAIN_MODULE, *train_args(run_dirs, extra)]
    # $MASTER_ADDR and $SLURM_JOB_ID must expand on the node, so they are left unquoted
    command = " ".join(a if a.startswith("$") else shlex.quote(a) for a in torchrun)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    name = shlex.quote(Path(run_dirs[0]).name or "pretrain")
    return (f"#!/bin/bash\n"
            f"#SBATCH --job-name={name}\n"
            f"#SBATCH --nodes={spec.cluster.nodes}\n"
            f"#SBATCH --ntasks-per-node=1\n"
            f"#SBATCH --gpus-per-node={g}\n"
            f"#SBATCH --output={shlex.quote(str(Path(run_dirs[0]) / 'slurm-%j.out'))}\n"
            f"set -euo pipefail\n"
            f"{exports}"
            f"export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"srun {command}\n")


def launch_command(spec: Spec, plan: Plan, run_dirs: Sequence[Path], *, device: str,
                   launcher: Launcher = "auto", hosts: Optional[Sequence[str]] = None,
                   master_addr: Optional[str] = None, master_port: Optional[int] = None,
                   extra: Sequence[str] = ()) -> Launch:
    """How to start ``plan`` for the run directories (several: trained one after another in one
    process group, which amortises the start-up)."""
    nodes = spec.cluster.nodes
    if launcher == "auto":
        launcher = "torchrun" if nodes == 1 else ("deepspeed" if hosts else "slurm")
    port = master_port or (free_port() if launcher == "torchrun" else DEFAULT_MASTER_PORT)
    per_node = plan.world_size if nodes == 1 else spec.cluster.gpus_per_node
    env = rank_env(per_node, device)
    if launcher == "torchrun":
        if nodes > 1:
            raise ExecutorError(f"the plan spans {nodes} nodes: use --launcher deepspeed with "
                               f"--hosts, or --launcher slurm")
        return Launch(torchrun_argv(plan.world_size, port, run_dirs, extra), env)
    if launcher == "deepspeed":
        if nodes == 1:
            return Launch(deepspeed_argv(spec, port, run_dirs, hostfile=None, master_addr=None,
                                         extra=extra), env)
        if not hosts or len(hosts) != nodes:
            raise ExecutorError(f"the plan spans {nodes} nodes: --hosts must name {nodes} hosts "
                               f"(got {len(hosts or [])})")
        hostfile = Path(run_dirs[0]) / "hostfile"
        return Launch(deepspeed_argv(spec, port, run_dirs, hostfile=hostfile,
                                     master_addr=master_addr or hosts[0], extra=extra),
                      env, hostfile=hostfile_text(hosts, spec.cluster.gpus_per_node))
    if launcher == "slurm":
        script = Path(run_dirs[0]) / "sbatch.sh"
        return Launch(["sbatch", str(script)], {},
                      sbatch=sbatch_script(spec, run_dirs, port, env, extra))
    raise ExecutorError(f"launcher: unknown launcher {launcher!r} (auto, torchrun, deepspeed, "
                       f"slurm)")


__all__ = ["Launch", "launch_command", "torchrun_argv", "deepspeed_argv", "sbatch_script",
           "hostfile_text", "free_port", "rank_env"]
