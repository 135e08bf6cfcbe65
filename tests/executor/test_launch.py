"""The launch command, derived from the spec's cluster and launch section: argv lists that the
launchers' own argument parsers read back as the plan, a hostfile DeepSpeed's parser accepts, an
sbatch script bash accepts, golden files for a 2-node x 8-H100 job, and --dry-run output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from executor.errors import ExecutorError  # noqa: E402
from executor.launch import launch_command, rank_env, with_overrides  # noqa: E402
from executor.run import ExecuteRequest, execute  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.loading import spec_from_dict  # noqa: E402
from planner.spec.units import Precision, Recompute, ZeroStage  # noqa: E402

RUN = Path("/tmp/runs/a")
GOLDEN = Path(__file__).parent / "golden"
CPU = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2}, "hbm_gbps": 20,
       "intra_node_gbps": 10, "accelerator": "cpu"}
#: a 2-node x 8-H100 job as a user would describe it (docs/executor.md)
CLUSTER_LAUNCH = {"python": "/opt/venv/bin/python", "workdir": "/shared/pretrain",
                  "master_port": 29600, "env": {"HF_HOME": "/shared/hf"},
                  "nccl": {"debug": "WARN", "socket_ifname": "ib0", "ib_hca": "mlx5"},
                  "slurm": {"partition": "gpu", "account": "llm", "time": "2-00:00:00",
                            "container_image": "nvcr.io/nvidia/pytorch:24.10-py3",
                            "extra": ["--exclusive"]}}


def spec(nodes=1, per_node=2, gpu="H100", **launch):
    return spec_from_dict({
        "model": {"preset": "tiny-gpt"},
        "cluster": {"gpu": gpu, "nodes": nodes, "gpus_per_node": per_node},
        "training": {"tokens": 1e6, "global_batch_sequences": 32},
        "launch": launch})


def plan(dp=2, tp=1, pp=1):
    return Plan(dp, tp, pp, ZeroStage.OPTIMIZER, Precision.BF16, 4, 32 // (4 * dp),
                Recompute.NONE)


def test_torchrun_argv_reads_back_as_the_plan():
    import torch.distributed.run as torchrun
    launch = launch_command(spec(per_node=4), plan(dp=2, tp=2), [RUN, RUN.with_name("b")])
    assert all(isinstance(a, str) for a in launch.argv)
    assert launch.argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    args = torchrun.get_args_parser().parse_args(launch.argv[3:])
    assert (args.nnodes, args.nproc_per_node, args.module) == ("1", "4", True)
    assert args.training_script == "executor.train"
    assert args.training_script_args == ["--run-dir", str(RUN), "--run-dir", str(RUN.with_name("b"))]


def test_concurrent_local_launches_get_distinct_ports():
    def port(argv):
        return argv[argv.index("--master_port") + 1]
    ports = {port(launch_command(spec(), plan(), [RUN]).argv) for _ in range(5)}
    assert len(ports) == 5


def test_cpu_settings_only_for_a_cpu_cluster():
    cpu = rank_env(spec(gpu=CPU), 2, local=True)
    assert cpu["DS_ACCELERATOR"] == "cpu"
    assert int(cpu["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)
    gpu = rank_env(spec(), 2, local=True)
    assert "DS_ACCELERATOR" not in gpu and "OMP_NUM_THREADS" not in gpu


def cluster_spec(**launch):
    return spec(nodes=2, per_node=8, **{**CLUSTER_LAUNCH, **launch})


def test_sbatch_script_matches_the_golden_file():
    """No CPU settings and no path of this machine; one task per node; torchrun's rendezvous on
    the first host; the environment's interpreter; NCCL and the spec's variables exported."""
    launch = launch_command(cluster_spec(), plan(dp=16), [Path("runs/tiny-2x8")])
    assert launch.argv == ["sbatch", "runs/tiny-2x8/sbatch.sh"] and not launch.local
    assert launch.sbatch == (GOLDEN / "sbatch_2x8xH100.sh").read_text()
    for local in ("DS_ACCELERATOR", "OMP_NUM_THREADS", "PATH=", sys.executable, os.getcwd()):
        assert local not in launch.sbatch


def test_deepspeed_hostfile_launch_matches_the_golden_file():
    launch = launch_command(cluster_spec(launcher="deepspeed", hosts=["node-a", "node-b"]),
                            plan(dp=16), [Path("runs/tiny-2x8")], extra=["--max-steps", "5"])
    described = (f"{json.dumps(launch.env, sort_keys=True)}\n{launch.hostfile}"
                 f"{launch.env_file}{' '.join(launch.argv)}\n")
    assert described == (GOLDEN / "deepspeed_2x8xH100.txt").read_text()
    assert sys.executable not in described and "DS_ACCELERATOR" not in described


def test_deepspeed_launcher_reads_back_two_nodes_of_eight(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile, parse_args
    launch = launch_command(cluster_spec(launcher="deepspeed", hosts=["node-a", "node-b"]),
                            plan(dp=16), [RUN], extra=["--max-steps", "5"])
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(launch.hostfile)
    assert dict(fetch_hostfile(str(hostfile))) == {"node-a": 8, "node-b": 8}
    assert launch.argv[:3] == ["/opt/venv/bin/python", "-m", "deepspeed.launcher.runner"]
    args = parse_args(launch.argv[3:])
    assert args.no_ssh_check and args.module and args.master_addr == "node-a"
    assert (args.num_nodes, args.num_gpus, args.hostfile) == (2, 8, str(RUN / "hostfile"))
    assert args.master_port == 29600 and args.user_script == "executor.train"
    assert args.user_args == ["--run-dir", str(RUN), "--max-steps", "5"]
    assert launch.env == {"DS_ENV_FILE": str(RUN / "deepspeed_env")}
    assert "NCCL_SOCKET_IFNAME=ib0\n" in launch.env_file


def test_deepspeed_launcher_on_one_node_uses_num_gpus():
    from deepspeed.launcher.runner import parse_args
    launch = launch_command(spec(per_node=8, launcher="deepspeed"), plan(dp=8), [RUN])
    assert parse_args(launch.argv[3:]).num_gpus == 8
    assert "--hostfile" not in launch.argv and launch.hostfile is None and launch.local


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_slurm_script_is_valid_bash(tmp_path):
    launch = launch_command(spec(nodes=4, per_node=8), plan(dp=32), [RUN])
    script = launch.sbatch
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1"):
        assert line in script
    assert "--nnodes 4 --nproc_per_node 8" in script and "$MASTER_ADDR:29500" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_own_script_gets_the_run_directory():
    launch = launch_command(cluster_spec(script="train.py", script_args=["--epochs", "1"]),
                            plan(dp=16), [Path("runs/mine")])
    assert "-m torch.distributed.run" in launch.sbatch
    assert "train.py --epochs 1\n" in launch.sbatch and "executor.train" not in launch.sbatch
    assert "export PRETRAIN_RUN_DIR=runs/mine" in launch.sbatch


def test_flags_override_the_launch_section_and_bad_input_names_the_field():
    s = with_overrides(cluster_spec(launcher="slurm"), launcher="deepspeed", hosts=("x", "y"))
    assert (s.launch.launcher, s.launch.hosts, s.launch.python) == ("deepspeed", ("x", "y"),
                                                                   "/opt/venv/bin/python")
    from planner.errors import SpecError
    with pytest.raises(SpecError, match="launch.slurm.time"):
        cluster_spec(slurm={"time": "two days"})
    with pytest.raises(SpecError, match="launch.hostfile: give hosts or hostfile"):
        cluster_spec(hosts=["a", "b"], hostfile="hosts.txt")


def test_multi_node_without_hosts_is_refused_by_torchrun():
    with pytest.raises(ExecutorError, match="spans 2 nodes"):
        launch_command(spec(nodes=2, per_node=8, launcher="torchrun"), plan(dp=16), [RUN])
    with pytest.raises(ExecutorError, match="must name 2 hosts"):
        launch_command(spec(nodes=2, per_node=8, launcher="deepspeed", hosts=["only-one"]),
                       plan(dp=16), [RUN])


def test_dry_run_prints_config_hostfile_and_command_and_writes_nothing(tmp_path, capsys):
    s = spec_from_dict({
        "model": {"preset": "tiny-gpt"},
        "cluster": {"gpu": CPU, "nodes": 2, "gpus_per_node": 1},
        "training": {"tokens": 1e6, "global_batch_sequences": 32}})
    p = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 16, 1, Recompute.NONE)
    run = tmp_path / "run"
    request = ExecuteRequest(dry_run=True, launcher="deepspeed", hosts=("h1", "h2"))
    assert execute(s, p, run, request) == 0
    out = capsys.readouterr().out
    config = out.split("# DeepSpeed config\n")[1].split("\n# hostfile")[0]
    assert json.loads(config)["zero_optimization"]["stage"] == 2
    assert "h1 slots=1\nh2 slots=1" in out
    assert "DS_ACCELERATOR=cpu" in out.split("# deepspeed_env")[1]  # a CPU cluster
    assert "deepspeed.launcher.runner" in out.split("# command\n")[1]
    assert not run.exists()


def test_a_gpu_spec_is_not_trained_on_this_cpu(tmp_path):
    """One node of H100s, launched here: refused before anything is written (no GPU here), but
    its dry run shows the launch."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ExecutorError, match="this machine has no GPU"):
        execute(spec(per_node=2), plan(), tmp_path / "run")
    assert execute(spec(per_node=2), plan(), tmp_path / "run", ExecuteRequest(dry_run=True)) == 0
    assert not (tmp_path / "run").exists()


def test_a_dry_run_after_a_run_shows_the_launch(tmp_path, capsys):
    """A dry run writes nothing, so an existing run directory does not stop it (the README's
    order: train, then look at the launch)."""
    (tmp_path / "run").mkdir()
    assert execute(spec(per_node=2), plan(), tmp_path / "run", ExecuteRequest(dry_run=True)) == 0
    assert "torch.distributed.run" in capsys.readouterr().out
    assert list((tmp_path / "run").iterdir()) == []


def test_own_script_trains_with_the_plans_config(tmp_path):
    """examples/own_training_script.py launched by execute() on 2 CPU processes: it reads the
    DeepSpeed config and plan the executor wrote, and DeepSpeed runs it with the plan's ZeRO
    stage over the plan's data-parallel group."""
    root = Path(__file__).resolve().parents[2]
    s = spec_from_dict({
        "model": {"preset": "tiny-gpt"},
        "cluster": {"gpu": {**CPU, "peak_tflops": {"fp32": 0.2, "bf16": 0.1}}, "nodes": 1,
                    "gpus_per_node": 2},
        "training": {"tokens": 1e6, "global_batch_sequences": 8},
        "launch": {"script": str(root / "examples" / "own_training_script.py")}})
    p = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 2, 2, Recompute.NONE)
    run = tmp_path / "mine"
    assert execute(s, p, run) == 0, (run / "train.log").read_text()[-3000:]
    result = json.loads((run / "own_script_result.json").read_text())
    assert (result["world_size"], result["dp"], result["zero"]) == (2, 2, 2)
    assert len(result["losses"]) == 4 and all(x == x for x in result["losses"])
    assert not (run / "tokenizer").exists()  # the script brings its own data


def test_one_node_handed_to_slurm_is_not_trained_here():
    from executor.launch import trains_here
    assert trains_here(spec(per_node=8)) and not trains_here(spec(per_node=8, launcher="slurm"))
    assert not trains_here(spec(nodes=2, per_node=8))


def test_a_tight_plan_launches_with_expandable_segments(tmp_path):
    """Llama-2-7B on 64 A100s: the best plan (ZeRO-2, mb 2) is tight, so its ranks get
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; a comfortable plan does not, and a value
    the spec's launch.env sets wins."""
    from planner.estimate.predict import estimate
    from planner.search.engine import search
    from planner.spec.loading import load_spec
    spec = load_spec(Path(__file__).resolve().parents[2] / "specs" / "7b_on_64xA100.yaml")
    result = search(spec)
    tight = result.best.plan
    comfortable = next(e.plan for e in result.feasible[:10] if e.verdict == "fits")
    assert estimate(spec, tight, with_time=False).verdict == "tight"
    slurm = with_overrides(spec, launcher="slurm")
    env = launch_command(slurm, tight, [tmp_path / "run"]).sbatch
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in env
    assert "PYTORCH_CUDA_ALLOC_CONF" not in launch_command(slurm, comfortable,
                                                          [tmp_path / "run"]).sbatch
    mine = spec_from_dict({**spec._written, "launch": {"launcher": "slurm", "env": {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}}})
    text = launch_command(mine, tight, [tmp_path / "run"]).sbatch
    assert "max_split_size_mb:512" in text and "expandable_segments" not in text


def test_execute_never_ranks_cpu_checkpointing_with_full_recompute():
    """The executor's recompute keeps its checkpoints on the GPU: with
    runtime.cpu_checkpointing a full-recompute plan is marked, and --execute ranks others."""
    from planner.search.engine import search
    spec = spec_from_dict({
        "model": "llama2-7b", "cluster": {"gpu": "A100", "nodes": 8, "gpus_per_node": 8},
        "training": {"tokens": 1e9, "global_batch_sequences": 512},
        "search": {"recompute": ["full", "none"], "zero": [3]},
        "runtime": {"cpu_checkpointing": True}})
    runnable = search(spec, executable=True)
    assert runnable.best is not None
    assert all(e.plan.recompute is not Recompute.FULL for e in runnable.feasible[:20])
    marked = [e for e in search(spec).feasible[:50] if e.plan.recompute is Recompute.FULL]
    assert marked and all("runtime.cpu_checkpointing" in e.not_executable for e in marked)
