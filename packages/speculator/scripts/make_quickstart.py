"""Regenerate packages/speculator/recipes/quickstart/: data, and the tiny base model trained on it.

Needs arctic-sft (the base is fine-tuned with the `sft` method): `uv run python packages/speculator/scripts/make_quickstart.py`.
"""

import shutil
import tempfile
from pathlib import Path

from arctic_speculator.quickstart import train_base, write_quickstart

if __name__ == "__main__":
    folder = Path(__file__).resolve().parents[1] / "recipes" / "quickstart"
    shutil.rmtree(folder, ignore_errors=True)
    write_quickstart(folder)
    with tempfile.TemporaryDirectory() as run:
        print(train_base(folder, run))
