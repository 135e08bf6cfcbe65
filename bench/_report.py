"""What every bench script does last: print its table and, unless given --no-write, keep it in
bench/results/ (the numbers the docs quote)."""
from __future__ import annotations

import sys
from pathlib import Path


def publish(text: str, out: Path) -> None:
    text = text if text.endswith("\n") else text + "\n"
    print(text, end="")
    if "--no-write" not in sys.argv[1:]:
        out.write_text(text)
