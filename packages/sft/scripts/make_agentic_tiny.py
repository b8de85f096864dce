"""Regenerate the agentic recipe's bundled data, template and model folder (deterministic)."""

from pathlib import Path

from arctic_sft.agentic_tiny import write_agentic_tiny

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "recipes" / "agentic-tiny"
    print(write_agentic_tiny(target))
