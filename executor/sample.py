"""``python -m executor.sample RUN_DIR --prompt "Once upon a time"``: load a run's fp32 export and
tokenizer into a plain GPT (no DeepSpeed) and print generated text."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import ExecutorError
from .rundir import RunDir


def load_exported(run_dir: str | Path):
    """(model, tokenizer) of a finished run; the model is a plain executor.model.GPT in fp32."""
    import torch

    from .model import GPT
    from .tokenizer import load_tokenizer

    run = RunDir(run_dir)
    weights = run.export / "pytorch_model.bin"
    if not weights.is_file():
        raise ExecutorError(f"{weights}: no fp32 export (the run has not finished)")
    spec, _, _ = run.load()
    model = GPT(spec.model)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), load_tokenizer(run.tokenizer)


def generate(run_dir: str | Path, prompt: str, *, max_new_tokens: int = 120,
             temperature: float = 0.8, top_k: Optional[int] = 40, seed: int = 0) -> str:
    import torch

    model, tok = load_exported(run_dir)
    ids = tok.encode(prompt) or [tok.eot_id]
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature,
                         top_k=top_k, generator=gen)
    return tok.decode(out[0].tolist())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.sample", description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--tokens", type=int, default=120, help="new tokens to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        text = generate(args.run_dir, args.prompt, max_new_tokens=args.tokens,
                        temperature=args.temperature, top_k=args.top_k or None, seed=args.seed)
    except ExecutorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
