"""Regenerate packages/rl/recipes/quickstart/: prompts from the SFT quickstart, and the policy.

The policy is the SFT quickstart's tiny Llama trained for two epochs (seed 0): greedy, it answers
48% of the held-out questions; sampled at temperature 1, 19%: GRPO has right answers to reinforce.
Run from the repository root: `uv run python packages/rl/scripts/make_quickstart.py`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SFT = REPO / "packages/sft/recipes"
OUT = REPO / "packages/rl/recipes/quickstart"
POLICY_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train = (SFT / "quickstart/train.jsonl").read_text().splitlines()[:1000]
    (OUT / "train.jsonl").write_text("\n".join(train) + "\n")
    shutil.copy(SFT / "quickstart/heldout.jsonl", OUT / "heldout.jsonl")
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model"
        sets = ["epochs=2", f"logger.output_dir={scratch}/run", f"checkpoint[0].output_dir={model}"]
        command = [sys.executable, "-m", "arctic_core", "train", str(SFT / "quickstart.toml")]
        subprocess.run([*command, *(a for s in sets for a in ("--set", s))], check=True)
        (OUT / "policy").mkdir(exist_ok=True)
        for name in POLICY_FILES:
            shutil.copy(model / name, OUT / "policy" / name)
    print(OUT)


if __name__ == "__main__":
    main()
