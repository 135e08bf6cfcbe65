"""The launch command, as an argv list (never a shell string), derived from the spec's cluster
and its ``launch`` section, never from the machine that runs ``plan``.

- One node: ``torchrun --nproc_per_node N``, started here (it is the machine that trains).
- Several nodes: DeepSpeed's launcher with a hostfile, run on the first host, or a SLURM sbatch
  script with one task per node, each running torchrun with its rendezvous on the first host.
  Both use the interpreter of the job's environment (``launch.python``) and paths relative to
  the job's working directory (``launch.workdir``, or where the job is submitted from).

The CPU accelerator's settings (``DS_ACCELERATOR=cpu``, threads per rank) appear only when the
spec's cluster is a CPU (``cluster.gpu.accelerator: cpu``).  Each rank runs ``python -m
executor.train --run-dir RUN_DIR``, or the spec's own ``launch.script`` with its arguments.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from planner.plan.strategy import Plan
from planner.spec.spec import LaunchSpec, Spec

from .errors import ExecutorError

TRAIN_MODULE = "executor.train"
#: the file DeepSpeed's multi-node runner reads the ranks' environment from (DS_ENV_FILE)
DS_ENV_FILE = "deepspeed_env"
#: what a user script finds in its environment: the run directory (ds_config.json, run.json)
RUN_DIR_VARIABLE = "PRETRAIN_RUN_DIR"


@dataclass(frozen=True)
class Launch:
    """What to run: argv, the environment it adds, and the files it refers to."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    hostfile: Optional[str] = None  #: text of the DeepSpeed hostfile, when several nodes
    sbatch: Optional[str] = None  #: text of the SLURM script (then argv is ["sbatch", script])
    env_file: Optional[str] = None  #: text of DeepSpeed's env file for the other nodes
    local: bool = True  #: the command trains on this machine

    def describe(self, ds_config: dict) -> str:
        """The --dry-run output: config JSON, hostfile, env file, script and command."""
        parts = ["# DeepSpeed config", json.dumps(ds_config, indent=2)]
        if self.hostfile is not None:
            parts += ["# hostfile", self.hostfile.rstrip()]
        if self.env_file is not None:
            parts += [f"# {DS_ENV_FILE} (the ranks' environment on every node)",
                      self.env_file.rstrip()]
        if self.sbatch is not None:
            parts += ["# sbatch script", self.sbatch.rstrip()]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())
                       if k != "PATH")  # PATH only adds this interpreter's directory
        parts += ["# command", (env + " " if env else "") + shlex.join(self.argv)]
        return "\n".join(parts) + "\n"


def free_port() -> int:
    """A port no one listens on now (each concurrent local launch needs its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allocator_env(spec: Spec, plan: Optional[Plan]) -> dict[str, str]:
    """A plan the planner calls tight (it fits only if the caching allocator fragments less than
    the spec assumes) runs with PyTorch's expandable segments, which grow one mapping instead of
    caching fixed-size blocks and so fragment less (PyTorch's CUDA memory notes); a value the
    spec's launch.env sets wins."""
    if plan is None or spec.cluster.gpu.accelerator == "cpu" \
            or "PYTORCH_CUDA_ALLOC_CONF" in spec.launch.job_env():
        return {}
    from planner.estimate.predict import estimate
    if estimate(spec, plan, with_time=False).verdict != "tight":
        return {}
    return {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def rank_env(spec: Spec, procs_per_node: int, local: bool,
             plan: Optional[Plan] = None) -> dict[str, str]:
    """Environment for every rank: the spec's NCCL settings and variables, the allocator
    setting a tight plan needs, and, only when the cluster is a CPU, DeepSpeed's CPU
    accelerator with the cores shared out (on this machine, when it is the one that trains)."""
    env = {"PYTHONUNBUFFERED": "1", **spec.launch.job_env(), **allocator_env(spec, plan)}
    if spec.cluster.gpu.accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        if local:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs_per_node))
    return env


def local_path_env() -> dict[str, str]:
    """DeepSpeed JIT-builds its ops with ninja, looked up on PATH: a virtual environment's own
    ninja (pip's package) is found even when the environment is not activated."""
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")])}


def jit_ops(ds_config: dict, accelerator: str) -> list[str]:
    """The DeepSpeed ops (their op_builder NAME) a rank of this config loads: the shared-memory
    all-reduce on the CPU accelerator (comm/torch.py, build_shm_op), the optimizer's kernel
    (engine.py, get_optimizer_configuration: none with torch_adam, DeepSpeedCPUAdam under
    optimizer offload, FusedAdam otherwise) and the async I/O op of NVMe offload."""
    ops = ["deepspeed_shm_comm"] if accelerator == "cpu" else []
    optimizer = ds_config.get("optimizer", {})
    zero = ds_config.get("zero_optimization", {})
    offload = {zero.get(k, {}).get("device") for k in ("offload_optimizer", "offload_param")}
    if optimizer.get("type", "").lower() in ("adam", "adamw") \
            and not optimizer.get("params", {}).get("torch_adam", False):
        cpu_optimizer = zero.get("offload_optimizer", {}).get("device") in ("cpu", "nvme")
        ops.append("cpu_adam" if cpu_optimizer else "fused_adam")
    if "nvme" in offload:
        ops.append("async_io")
    return ops


def extensions_root(env: dict[str, str]) -> Path:
    """Where torch JIT-builds extensions for a process with ``env`` and this interpreter:
    $TORCH_EXTENSIONS_DIR, else a per-Python, per-accelerator folder of the user's cache
    (torch/utils/cpp_extension.py, _get_build_directory)."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    import torch
    from torch.utils.cpp_extension import get_default_build_root
    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
                   f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def prebuilt_ops() -> set[str]:
    """Ops compiled into the installed DeepSpeed (DS_BUILD_OPS=1), which it imports instead of
    building; read from its git_version_info_installed.py without importing DeepSpeed, whose
    import picks an accelerator and logs it."""
    import ast
    import importlib.util
    found = importlib.util.find_spec("deepspeed")
    if found is None or not found.submodule_search_locations:
        return set()
    info = Path(found.submodule_search_locations[0]) / "git_version_info_installed.py"
    try:
        for node in ast.parse(info.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if getattr(target, "id", "") == "installed_ops":
                return {name for name, built in ast.literal_eval(node.value).items() if built}
    except (OSError, SyntaxError, ValueError):
        pass
    return set()


def ops_to_build(ds_config: dict, accelerator: str, env: dict[str, str]) -> list[str]:
    """The ops of ``jit_ops`` that neither the installed DeepSpeed nor an earlier build in the
    extensions folder provides: a launch with any spends a minute or more compiling them with
    ninja before its first step.  (torch also rebuilds an op whose sources changed, as after a
    DeepSpeed upgrade; that is not foreseen here.)"""
    from torch.utils.cpp_extension import LIB_EXT
    root, prebuilt = extensions_root(env), prebuilt_ops()
    return [op for op in jit_ops(ds_config, accelerator)
            if op not in prebuilt and not (root / op / f"{op}{LIB_EXT}").is_file()]


def program_args(spec: Spec, run_dirs: Sequence[Path], extra: Sequence[str]) -> list[str]:
    """What each rank runs after the interpreter: ``-m executor.train --run-dir ...`` or the
    user's script and its arguments."""
    if spec.launch.script is not None:
        return [spec.launch.script, *spec.launch.script_args]
    args = ["-m", TRAIN_MODULE]
    for d in run_dirs:
        args += ["--run-dir", str(d)]
    return args + list(extra)


def script_env(spec: Spec, run_dirs: Sequence[Path]) -> dict[str, str]:
    return {RUN_DIR_VARIABLE: str(run_dirs[0])} if spec.launch.script is not None else {}


def torchrun_argv(python: str, procs: int, master_port: int, program: Sequence[str]) -> list[str]:
    return [python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
            str(procs), "--master_addr", "127.0.0.1", "--master_port", str(master_port),
            *program]


def hostfile_text(hosts: Sequence[str], slots: int) -> str:
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def _runner_program(program: Sequence[str]) -> list[str]:
    """DeepSpeed's runner takes ``--module NAME`` or a script path."""
    if program[:1] == ["-m"]:
        return ["--module", *program[1:]]
    return list(program)


def deepspeed_argv(spec: Spec, program: Sequence[str], *, hostfile: Optional[str],
                   master_addr: Optional[str], python: Optional[str] = None) -> list[str]:
    """DeepSpeed's launcher: --num_gpus on one node; a hostfile for several (run on the first
    host; --no_ssh_check skips its own ssh probe, the master address is given)."""
    launch = spec.launch
    argv = [python or launch.python, "-m", "deepspeed.launcher.runner", "--master_port",
            str(launch.master_port)]
    if hostfile is None:
        argv += ["--num_gpus", str(spec.cluster.gpus_per_node)]
    else:
        argv += ["--hostfile", hostfile, "--num_nodes", str(spec.cluster.nodes),
                 "--num_gpus", str(spec.cluster.gpus_per_node), "--no_ssh_check",
                 "--master_addr", master_addr]
    return argv + _runner_program(program)


def sbatch_script(spec: Spec, run_dirs: Sequence[Path], program: Sequence[str],
                  env: dict[str, str]) -> str:
    """One task per node; each runs torchrun for the node's GPUs, meeting at the first node."""
    launch, cluster = spec.launch, spec.cluster
    g = cluster.gpus_per_node
    torchrun = [launch.python, "-m", "torch.distributed.run", "--nnodes", str(cluster.nodes),
                "--nproc_per_node", str(g), "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"$MASTER_ADDR:{launch.master_port}",
                "--rdzv_id", "$SLURM_JOB_ID", *program]
    # $MASTER_ADDR and $SLURM_JOB_ID must expand on the node, so they are left unquoted
    command = " ".join(a if a.startswith("$") else shlex.quote(a) for a in torchrun)
    srun = "srun"
    if launch.slurm.container_image:
        srun += f" --container-image={shlex.quote(launch.slurm.container_image)}"
    options = [f"--job-name={Path(run_dirs[0]).name or 'pretrain'}", f"--nodes={cluster.nodes}",
               "--ntasks-per-node=1", f"--gpus-per-node={g}"]
    for key in ("partition", "account", "time"):
        value = getattr(launch.slurm, key)
        if value:
            options.append(f"--{key}={value}")
    options += [f"--output={Path(run_dirs[0]) / 'slurm-%j.out'}", *launch.slurm.extra]
    lines = ["#!/bin/bash", *(f"#SBATCH {shlex.quote(o)}" for o in options), "set -euo pipefail"]
    if launch.workdir:
        lines.append(f"cd {shlex.quote(launch.workdir)}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += ['export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              f"{srun} {command}"]
    return "\n".join(lines) + "\n"


def trains_here(spec: Spec) -> bool:
    """One node, not handed to SLURM: the launcher starts the ranks on this machine."""
    return spec.cluster.nodes == 1 and choose_launcher(spec) != "slurm"


def choose_launcher(spec: Spec) -> str:
    launch = spec.launch
    if launch.launcher != "auto":
        return launch.launcher
    if spec.cluster.nodes == 1:
        return "torchrun"
    return "deepspeed" if (launch.hosts or launch.hostfile) else "slurm"


def launch_command(spec: Spec, plan: Plan, run_dirs: Sequence[Path], *,
                   master_port: Optional[int] = None, extra: Sequence[str] = ()) -> Launch:
    """How to start ``plan`` on the spec's cluster for the run directories (several: trained
    one after another in one process group, which amortises the start-up)."""
    nodes, launcher, launch = spec.cluster.nodes, choose_launcher(spec), spec.launch
    program = program_args(spec, run_dirs, extra)
    if launcher == "torchrun":
        if nodes > 1:
            raise ExecutorError(f"the plan spans {nodes} nodes: use --launcher deepspeed with "
                                f"--hosts, or --launcher slurm")
        env = {**rank_env(spec, plan.world_size, local=True, plan=plan), **local_path_env(),
               **script_env(spec, run_dirs)}
        argv = torchrun_argv(sys.executable, plan.world_size, master_port or free_port(),
                             program)
        return Launch(argv, env)
    per_node = spec.cluster.gpus_per_node
    env = {**rank_env(spec, per_node, local=False, plan=plan), **script_env(spec, run_dirs)}
    if launcher == "deepspeed":
        if nodes == 1:  # started here, as torchrun is
            return Launch(deepspeed_argv(spec, program, hostfile=None, master_addr=None,
                                         python=sys.executable),
                          {**rank_env(spec, per_node, local=True, plan=plan), **local_path_env(),
                           **script_env(spec, run_dirs)})
        hosts = launch.hosts
        if launch.hostfile is None and (not hosts or len(hosts) != nodes):
            raise ExecutorError(f"the plan spans {nodes} nodes: launch.hosts (--hosts) must "
                                f"name {nodes} hosts (got {len(hosts or [])})")
        hostfile = launch.hostfile or str(Path(run_dirs[0]) / "hostfile")
        env_file = "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
        master = launch.master_addr or (hosts[0] if hosts else None)
        if master is None:
            raise ExecutorError("launch.master_addr: with a hostfile, name the rendezvous host")
        return Launch(deepspeed_argv(spec, program, hostfile=hostfile, master_addr=master),
                      {"DS_ENV_FILE": str(Path(run_dirs[0]) / DS_ENV_FILE)},
                      hostfile=None if launch.hostfile else hostfile_text(hosts, per_node),
                      env_file=env_file, local=False)
    if launcher == "slurm":
        script = Path(run_dirs[0]) / "sbatch.sh"
        return Launch(["sbatch", str(script)], {},
                      sbatch=sbatch_script(spec, run_dirs, program, env), local=False)
    raise ExecutorError(f"launcher: unknown launcher {launcher!r} (auto, torchrun, deepspeed, "
                        f"slurm)")


def with_overrides(spec: Spec, **flags) -> Spec:
    """The spec with the command line's launch flags (those given) over its launch section."""
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return spec
    data = {**spec.launch.model_dump(), **given}
    if "hosts" in given:
        data["hostfile"] = None
    return spec.model_copy(update={"launch": LaunchSpec.model_validate(data)})


__all__ = ["Launch", "launch_command", "torchrun_argv", "deepspeed_argv", "sbatch_script",
           "hostfile_text", "free_port", "rank_env", "with_overrides", "choose_launcher",
           "RUN_DIR_VARIABLE", "jit_ops", "ops_to_build"]
