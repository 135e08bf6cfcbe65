"""Your own training script under `plan SPEC --execute` (spec: `launch.script:
examples/own_training_script.py`): the planner picks the layout and writes the DeepSpeed config;
the script trains with it.  The lines marked "plan" are all it takes; the rest is an ordinary
PyTorch loop (here a small MLP on random regression data, so the example runs anywhere).

Each rank finds the run directory in $PRETRAIN_RUN_DIR: ds_config.json (ZeRO stage, precision,
micro-batch, gradient accumulation, optimizer, schedule) and run.json (the plan: dp, tp, pp, ...).
With tp or pp > 1 the script must split its model itself, over DeepSpeed's
PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp), as executor/parallel.py does.
"""
import json
import os
import sys
from pathlib import Path

import deepspeed
import torch

run = Path(os.environ["PRETRAIN_RUN_DIR"])                          # plan
config = json.loads((run / "ds_config.json").read_text())           # plan
plan = json.loads((run / "run.json").read_text())["plan"]           # plan
deepspeed.init_distributed()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                       config=config)               # plan
dtype = torch.bfloat16 if config.get("bf16", {}).get("enabled") else torch.float32
generator = torch.Generator().manual_seed(engine.global_rank)
steps = int(os.environ.get("OWN_SCRIPT_STEPS", "4"))
losses = []
for step in range(steps):
    for _ in range(engine.gradient_accumulation_steps()):
        x = torch.randn(plan["micro_batch"], 16, generator=generator)
        y = x.sum(dim=1, keepdim=True)
        loss = torch.nn.functional.mse_loss(engine(x.to(engine.device, dtype)).float(),
                                            y.to(engine.device))
        engine.backward(loss)
        engine.step()
    losses.append(loss.item())
if engine.global_rank == 0:
    (run / "own_script_result.json").write_text(json.dumps({
        "world_size": engine.world_size, "dp": engine.dp_world_size, "zero": plan["zero"],
        "losses": losses}))
if engine.device.type == "cpu":
    # on the CPU, gloo's worker threads can race Python's shutdown and abort a rank that has
    # finished; everything is written, so leave without the interpreter's teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
