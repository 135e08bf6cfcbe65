#!/bin/bash
#SBATCH --job-name=tiny-2x8
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --partition=gpu
#SBATCH --account=llm
#SBATCH --time=2-00:00:00
#SBATCH --output=runs/tiny-2x8/slurm-%j.out
#SBATCH --exclusive
set -euo pipefail
cd /shared/pretrain
export HF_HOME=/shared/hf
export NCCL_DEBUG=WARN
export NCCL_IB_HCA=mlx5
export NCCL_SOCKET_IFNAME=ib0
export PYTHONUNBUFFERED=1
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --container-image=nvcr.io/nvidia/pytorch:24.10-py3 /opt/venv/bin/python -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:29600 --rdzv_id $SLURM_JOB_ID -m executor.train --run-dir runs/tiny-2x8
