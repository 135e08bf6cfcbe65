"""The docs' pasted `$ plan ...` outputs are what `plan` prints today: a change that moves an
answer fails here until `python docs/regenerate.py --commands` rewrites the examples."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
regenerate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regenerate)

DOCS_WITH_EXAMPLES = [doc for doc in regenerate.DOCS
                      if regenerate.COMMAND_BLOCK.search(doc.read_text())]


@pytest.mark.parametrize("doc", DOCS_WITH_EXAMPLES, ids=lambda d: d.name)
def test_pasted_outputs_are_current(doc):
    stale = [command for _, command, written, today in regenerate.command_blocks(doc)
             if today != written]
    assert not stale, (f"{doc.name}: these examples print something else now: {stale}; run "
                       f"python docs/regenerate.py --commands")
