"""Regenerate the worked examples the docs quote from the planner's own output:

    python docs/regenerate.py          # rewrites the example in docs/json-report.md

The JSON example is `plan specs/125m_on_1xH100.yaml --json` with `alternatives` trimmed to its
first entry (the doc says so)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.capacity.advice import nearest_fix  # noqa: E402
from planner.report import to_json  # noqa: E402
from planner.search.engine import search  # noqa: E402
from planner.spec.spec import load_spec  # noqa: E402

SPEC = "specs/125m_on_1xH100.yaml"


def json_example() -> str:
    spec = load_spec(ROOT / SPEC)
    result = search(spec)
    report = to_json(result, nearest_fix(spec) if result.best is None else [], SPEC)
    report["alternatives"] = report["alternatives"][:1]
    return json.dumps(report, indent=2)


def main() -> None:
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
