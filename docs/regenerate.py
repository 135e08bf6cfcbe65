"""Regenerate the worked examples the docs quote from the planner's own output:

    python docs/regenerate.py          # rewrites the example in docs/json-report.md
    python docs/regenerate.py --commands   # every ``` block that starts with "$ plan ...": rerun it
                                       # and keep as many lines as the block shows
    python docs/regenerate.py --lab runs/scaling_tinystories
                                       # docs/scaling-lab.md's results and docs/lab/*.png from a
                                       # finished lab (plan specs/scaling_tinystories.yaml --execute)
    python docs/regenerate.py --plots  # docs/plots/*.png: the --plot commands docs/plots.md shows

The JSON example is `plan specs/125m_on_1xH100.yaml --json` with `alternatives` trimmed to its
first entry (the doc says so)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.capacity.advice import nearest_fix, plan_notes  # noqa: E402
from planner.report import to_json  # noqa: E402
from planner.search.engine import search  # noqa: E402
from planner.spec.loading import load_spec  # noqa: E402

SPEC = "specs/125m_on_1xH100.yaml"


def json_example() -> str:
    spec = load_spec(ROOT / SPEC)
    result = search(spec)
    report = to_json(result, nearest_fix(spec) if result.best is None else [], SPEC,
                     plan_notes(result))
    report["alternatives"] = report["alternatives"][:1]
    return json.dumps(report, indent=2)


LAB_BEGIN, LAB_END = "<!-- lab-results:begin -->", "<!-- lab-results:end -->"


def lab_results(lab_dir: Path) -> str:
    """The lab's grid, final losses and fit summary, as docs/scaling-lab.md quotes them."""
    records = [json.loads(line) for line in (lab_dir / "results.jsonl").read_text().splitlines()]
    finals = [r for r in records if r["kind"] == "final"]
    lab = json.loads((lab_dir / "lab.json").read_text())
    rows = ["| level | C (6ND) | model | N (all) | N (non-embedding) | embedding share | D | D/N | "
            "final eval loss |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in finals:
        share = 1 - r["params_non_embedding"] / r["params"]
        rows.append(f"| {r['level']} | {r['flops']:.3g} | {r['model']} | {r['params']:,} | "
                    f"{r['params_non_embedding']:,} | {share:.0%} | {r['tokens']:.3g} | "
                    f"{r['tokens'] / r['params']:.1f} | {r['eval_loss']:.4f} |")
    held_out = held_out_rows(finals)
    fit_text = (lab_dir / "fit.txt").read_text()
    fit_text = "\n".join(line for line in fit_text.splitlines()
                          if not line.startswith(("plots:", "plan with it:")))
    fit_text = fit_text.replace(str(lab_dir), "runs/scaling_tinystories")
    data = lab["data"]
    source = (f"Data: {data['source']}, {data['train_tokens']:,} training tokens; the largest "
              f"point reads {data['epochs_of_largest_point']:.2f} epochs.")
    return "\n".join([*held_out, "", source, "", *rows, "", "```", fit_text.rstrip(), "```"])


def held_out_rows(finals: list[dict]) -> list[str]:
    """Out of sample: each interior size of a level, predicted by the parabola through the
    level's other sizes (approach 2) and by the approach-3 law fitted on every other point."""
    import warnings

    import numpy as np

    from planner.capacity.lawfit import fit_law
    rows = ["| held-out point | measured | approach 2 (its level's parabola) | approach 3 (law on "
            "the other points) |", "|---|---:|---:|---:|"]
    errors: dict[str, list[float]] = {"2": [], "3": []}
    for i, r in enumerate(finals):
        level = sorted((x for x in finals if x["level"] == r["level"]), key=lambda x: x["params"])
        pos = level.index(r)
        if len(level) < 4 or pos in (0, len(level) - 1):
            continue
        kept = [x for x in level if x is not r]
        c = np.polyfit(np.log([x["params"] for x in kept]), [x["eval_loss"] for x in kept], 2)
        p2 = float(np.polyval(c, np.log(r["params"])))
        others = [x for x in finals if x is not r]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            law = fit_law(*([x[k] for x in others] for k in ("params", "tokens", "eval_loss")))
        p3 = law.loss(r["params"], r["tokens"])
        errors["2"].append(p2 - r["eval_loss"])
        errors["3"].append(p3 - r["eval_loss"])
        rows.append(f"| level {r['level']}, {r['model']} | {r['eval_loss']:.4f} | {p2:.4f} "
                    f"({p2 - r['eval_loss']:+.4f}) | {p3:.4f} ({p3 - r['eval_loss']:+.4f}) |")
    rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items() if v}
    rows.append(f"| **rms error** | | **{rms.get('2', float('nan')):.4f}** | "
                f"**{rms.get('3', float('nan')):.4f}** |")
    return rows


def regenerate_lab(lab_dir: Path) -> None:
    import shutil
    doc = ROOT / "docs" / "scaling-lab.md"
    text = doc.read_text()
    start, end = text.index(LAB_BEGIN) + len(LAB_BEGIN), text.index(LAB_END)
    doc.write_text(text[:start] + "\n" + lab_results(lab_dir) + "\n" + text[end:])
    out = ROOT / "docs" / "lab"
    out.mkdir(exist_ok=True)
    for png in sorted((lab_dir / "plots").glob("*.png")):
        shutil.copy(png, out / png.name)
    print(f"rewrote the results in {doc.relative_to(ROOT)} and the plots in "
          f"{out.relative_to(ROOT)}/")


COMMAND_BLOCK = re.compile(r"```\n\$ (plan [^\n]*)\n(.*?)```", re.S)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_output(command: str) -> str:
    """What `plan ARGS` prints today (run from the repository root)."""
    import shlex
    import subprocess
    argv = [sys.executable, "-m", "pretrain.cli", *shlex.split(command)[1:]]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True).stdout


def command_blocks(doc: Path):
    """(match, command, lines as written, lines today) of every example block that starts with
    "$ plan": a block keeps its length (one that shows the head of a long report keeps showing
    its head); a block with an elision ("...") is skipped."""
    for m in COMMAND_BLOCK.finditer(doc.read_text()):
        command, old = m.group(1), m.group(2)
        if "\n...\n" in "\n" + old or "…" in old:
            continue
        written = old.splitlines()
        yield m, command, written, command_output(command).splitlines()[:len(written)]


def regenerate_commands() -> None:
    """Rerun the `plan` command of every example block (command_blocks) and rewrite it."""
    for doc in DOCS:
        text, n = doc.read_text(), 0
        for m, command, written, today in reversed(list(command_blocks(doc))):
            if today != written:
                block = "```\n$ " + command + "\n" + "\n".join(today) + "\n```"
                text = text[:m.start()] + block + text[m.end():]
                n += 1
        if n:
            doc.write_text(text)
            print(f"rewrote {n} command block(s) in {doc.relative_to(ROOT)}")


#: the commands docs/plots.md shows; each writes its PNGs into docs/plots/
PLOT_COMMANDS = (
    "plan specs/7b_on_64xA100.yaml --plot docs/plots",
    "plan specs/7b_on_64xA100.yaml --sweep cluster.gpu=A100-40GB-SXM,A100-80GB-SXM,H100-SXM,H200,"
    "V100-16GB-SXM --plot docs/plots",
    "plan specs/7b_on_64xA100.yaml --compare zero=2,3 --plot docs/plots",
)


def regenerate_plots() -> None:
    """Rerun PLOT_COMMANDS (not test_docs' blocks: a test would rewrite the PNGs)."""
    import shlex
    import subprocess
    for command in PLOT_COMMANDS:
        argv = [sys.executable, "-m", "pretrain.cli", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{command}: {done.stderr.strip()}")
        print("\n".join(line for line in done.stdout.splitlines() if line.startswith("wrote ")))


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "--commands":
        regenerate_commands()
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--plots":
        regenerate_plots()
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--lab":
        regenerate_lab(Path(sys.argv[2]))
        return
    doc = ROOT / "docs" / "json-report.md"
    text = doc.read_text()
    block = re.compile(r"(## Example\n.*?```json\n)(.*?)(\n```)", re.S)
    new, n = block.subn(lambda m: m.group(1) + json_example() + m.group(3), text)
    if n != 1:
        raise SystemExit(f"{doc}: the example block was not found")
    doc.write_text(new)
    print(f"rewrote the example in {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
