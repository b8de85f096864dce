"""The quickstart's bundled task: distil a tiny 4-layer Llama into SwiftKV (L_kv = 2) on a CPU in a minute.

The teacher is a randomly initialised tiny Llama (weights from the recipe's seed, so teacher and
student are the same network, built again identically on every run); its initialiser range is wider
than usual so that its next-token distributions are far from uniform and the distillation has
something to learn. Data: multi-turn arithmetic chats from `arctic_core.testing` (training and
held-out sets from different seeds). `write_quickstart(folder)` writes `train.jsonl`,
`heldout.jsonl` and `tiny-model/` (config + shipped tokenizer, no weights);
`packages/swiftkv/scripts/make_quickstart.py` regenerates the committed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 4,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.2,
}


def write_quickstart(folder: str | Path, n_train: int = 1024, n_heldout: int = 64) -> Path:
    """Write `train.jsonl`, `heldout.jsonl` and `tiny-model/` into `folder`."""
    from arctic_core.testing import write_chat_task

    return write_chat_task(folder, MODEL_CONFIG, n_train=n_train, n_heldout=n_heldout)
