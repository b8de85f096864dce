"""Regenerate packages/speculator/recipes/quickstart/ (data + tiny base model folder)."""

from pathlib import Path

from arctic_speculator.quickstart import write_quickstart

if __name__ == "__main__":
    print(write_quickstart(Path(__file__).resolve().parents[1] / "recipes" / "quickstart"))
