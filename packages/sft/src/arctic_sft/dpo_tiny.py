"""The tiny DPO recipe's bundled preference data: a task a small model learns on a CPU in seconds.

Each prompt asks for the first, second or third of three digits ("Which is the second digit:
3 8 5?"). The chosen answer is that digit; the rejected answer is a digit that is not in the
question at all (a made-up answer). Digits are single tokens of the shipped tokenizer, so
preferring the chosen answer on unseen questions needs the model to copy the right token from
the question, which a small transformer learns quickly through attention: held-out reward
accuracy measures learning, not memorisation. Held-out questions never occur in training.

`write_dpo_tiny(folder)` writes `train.jsonl`, `heldout.jsonl` and `tiny-model/` (a config and
the shipped tokenizer; weights are initialised from the recipe's seed), the files that
`packages/sft/recipes/dpo-tiny.toml` uses.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from arctic_sft.quickstart import MODEL_CONFIG, POSITIONS, write_jsonl


def preference_pairs(
    n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()
) -> list[dict[str, Any]]:
    """`n` distinct `{"prompt", "chosen", "rejected"}` rows whose prompts are not in `exclude`."""
    rng = random.Random(seed)
    rows: dict[str, dict[str, Any]] = {}
    while len(rows) < n:
        digits = rng.sample("0123456789", 4)
        position = rng.randrange(3)
        text = f"Which is the {POSITIONS[position]} digit: {' '.join(digits[:3])}?"
        if text in exclude or text in rows:
            continue
        rows[text] = {"prompt": text, "chosen": digits[position], "rejected": digits[3]}
    return list(rows.values())


def write_dpo_tiny(folder: str | Path, n_train: int = 1000, n_heldout: int = 200) -> Path:
    """Write `train.jsonl`, `heldout.jsonl` and `tiny-model/` into `folder`."""
    from arctic_core.testing import save_tokenizer_files, tiny_config, tiny_generation_config

    folder = Path(folder)
    heldout = preference_pairs(n_heldout, seed=1)
    write_jsonl(folder / "heldout.jsonl", heldout)
    seen = {row["prompt"] for row in heldout}
    write_jsonl(folder / "train.jsonl", preference_pairs(n_train, seed=0, exclude=seen))
    model_dir = folder / "tiny-model"
    tiny_config("llama", **MODEL_CONFIG).save_pretrained(model_dir)
    tiny_generation_config().save_pretrained(model_dir)
    save_tokenizer_files(model_dir)
    return folder
