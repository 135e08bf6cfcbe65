"""The launch command: argv lists that the launchers' own argument parsers read back as the plan,
a hostfile DeepSpeed's parser accepts, an sbatch script bash accepts, and --dry-run output."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from executor.errors import ExecutorError  # noqa: E402
from executor.launch import launch_command, rank_env  # noqa: E402
from executor.run import ExecuteRequest, execute  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.spec import spec_from_dict  # noqa: E402
from planner.spec.units import Precision, Recompute, ZeroStage  # noqa: E402

RUN = Path("/tmp/runs/a")


def spec(nodes=1, per_node=2):
    return spec_from_dict({
        "model": {"preset": "tiny-gpt"},
        "cluster": {"gpu": "H100", "nodes": nodes, "gpus_per_node": per_node},
        "training": {"tokens": 1e6, "global_batch_sequences": 32}})


def plan(dp=2, tp=1, pp=1):
    return Plan(dp, tp, pp, ZeroStage.OPTIMIZER, Precision.BF16, 4, 32 // (4 * dp),
                Recompute.NONE)


def test_torchrun_argv_reads_back_as_the_plan():
    import torch.distributed.run as torchrun
    launch = launch_command(spec(per_node=4), plan(dp=2, tp=2), [RUN, RUN.with_name("b")],
                            device="cuda")
    assert all(isinstance(a, str) for a in launch.argv)
    assert launch.argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    args = torchrun.get_args_parser().parse_args(launch.argv[3:])
    assert (args.nnodes, args.nproc_per_node, args.module) == ("1", "4", True)
    assert args.training_script == "executor.train"
    assert args.training_script_args == ["--run-dir", str(RUN), "--run-dir", str(RUN.with_name("b"))]


def test_concurrent_launches_get_distinct_ports():
    def port(argv):
        return argv[argv.index("--master_port") + 1]
    ports = {port(launch_command(spec(), plan(), [RUN], device="cpu").argv) for _ in range(5)}
    assert len(ports) == 5


def test_cpu_ranks_share_the_cores():
    env = rank_env(2, "cpu")
    assert env["DS_ACCELERATOR"] == "cpu"
    import os
    assert int(env["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)


def test_deepspeed_launcher_with_a_hostfile(tmp_path):
    """Several nodes: DeepSpeed's runner parses the argv and the hostfile as two nodes of 8."""
    from deepspeed.launcher.runner import fetch_hostfile, parse_args
    s = spec(nodes=2, per_node=8)
    launch = launch_command(s, plan(dp=16), [RUN], device="cuda", hosts=["node-a", "node-b"],
                            launcher="deepspeed", extra=["--max-steps", "5"])
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(launch.hostfile)
    assert dict(fetch_hostfile(str(hostfile))) == {"node-a": 8, "node-b": 8}
    assert launch.argv[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    args = parse_args(launch.argv[3:])
    assert args.no_ssh_check and args.module and args.master_addr == "node-a"
    assert (args.num_nodes, args.num_gpus, args.hostfile) == (2, 8, str(RUN / "hostfile"))
    assert args.user_script == "executor.train"
    assert args.user_args == ["--run-dir", str(RUN), "--max-steps", "5"]


def test_deepspeed_launcher_on_one_node_uses_num_gpus():
    from deepspeed.launcher.runner import parse_args
    launch = launch_command(spec(per_node=8), plan(dp=8), [RUN], device="cuda",
                            launcher="deepspeed")
    assert parse_args(launch.argv[3:]).num_gpus == 8
    assert "--hostfile" not in launch.argv and launch.hostfile is None


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_slurm_script(tmp_path):
    s = spec(nodes=4, per_node=8)
    launch = launch_command(s, plan(dp=32), [RUN], device="cuda")  # several nodes, no hosts
    assert launch.argv == ["sbatch", str(RUN / "sbatch.sh")]
    script = launch.sbatch
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1"):
        assert line in script
    assert "--nnodes 4 --nproc_per_node 8" in script and "$MASTER_ADDR:" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_multi_node_without_hosts_is_refused_by_torchrun():
    with pytest.raises(ExecutorError, match="spans 2 nodes"):
        launch_command(spec(nodes=2, per_node=8), plan(dp=16), [RUN], device="cuda",
                       launcher="torchrun")
    with pytest.raises(ExecutorError, match="must name 2 hosts"):
        launch_command(spec(nodes=2, per_node=8), plan(dp=16), [RUN], device="cuda",
                       launcher="deepspeed", hosts=["only-one"])


def test_dry_run_prints_config_hostfile_and_command_and_writes_nothing(tmp_path, capsys):
    s = spec_from_dict({
        "model": {"preset": "tiny-gpt"},
        "cluster": {"gpu": {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2},
                            "hbm_gbps": 20, "intra_node_gbps": 10}, "nodes": 2, "gpus_per_node": 1},
        "training": {"tokens": 1e6, "global_batch_sequences": 32}})
    p = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 16, 1, Recompute.NONE)
    run = tmp_path / "run"
    request = ExecuteRequest(dry_run=True, launcher="deepspeed", hosts=("h1", "h2"))
    assert execute(s, p, run, request) == 0
    out = capsys.readouterr().out
    config = out.split("# DeepSpeed config\n")[1].split("\n# hostfile")[0]
    assert json.loads(config)["zero_optimization"]["stage"] == 2
    assert "h1 slots=1\nh2 slots=1" in out
    assert "deepspeed.launcher.runner" in out.split("# command\n")[1]
    assert not run.exists()
