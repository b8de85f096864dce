"""Regenerate the quickstart's bundled data and model folder (deterministic)."""

from pathlib import Path

from arctic_sft.quickstart import write_quickstart

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "recipes" / "quickstart"
    print(write_quickstart(target))
