"""docs/architecture.md prints the training loop as it is in the code; this keeps the two equal."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from arctic_core.engine.loop import train_loop

DOC = Path(__file__).resolve().parents[4] / "docs" / "architecture.md"


def test_the_loop_printed_in_the_docs_is_the_code():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    printed = [b for b in blocks if b.startswith("def train_loop(")]
    assert printed, f"{DOC} prints no `def train_loop(` block"
    assert printed[0] == inspect.getsource(train_loop), "docs/architecture.md's loop differs from the code"


def test_the_recipe_is_resolved_before_the_resume_point_is_chosen():
    """A checkpoint stores the resolved recipe (an embedding model's pooling and lengths from its
    folder); choosing the resume point compares it with this run's, so this run's must be resolved
    first, else every resume of such a run is refused (`arctic embed verify --shrink` found it)."""
    from arctic_core.engine import setup

    names = [step.__name__ for step in setup.STEPS]
    assert names.index("recipe") < names.index("resume_point") < names.index("run_folder")
