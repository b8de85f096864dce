"""The quickstart's bundled task: train a 3-head MLP speculator on a tiny Llama, on a CPU in under a minute.

The base model is a randomly initialised tiny Llama (weights from the recipe's seed, so it is the
same network on every run; frozen throughout). Data: multi-turn arithmetic chats from
`arctic_core.testing` (training and held-out sets from different seeds); the speculator learns to
draft the dataset's tokens from the base model's hidden states. `write_quickstart(folder)` writes
`train.jsonl`, `heldout.jsonl` and `tiny-model/` (config + shipped tokenizer, no weights);
`packages/speculator/scripts/make_quickstart.py` regenerates the committed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def write_quickstart(folder: str | Path, n_train: int = 512, n_heldout: int = 64) -> Path:
    """Write `train.jsonl`, `heldout.jsonl` and `tiny-model/` into `folder`."""
    from arctic_core.testing import write_chat_task

    return write_chat_task(folder, MODEL_CONFIG, n_train=n_train, n_heldout=n_heldout)
