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
    from arctic_core.testing import save_tokenizer_files, tiny_config, tiny_generation_config, write_dataset

    folder = Path(folder)
    write_dataset(folder / "train.jsonl", "chat", n=n_train, seed=0)
    write_dataset(folder / "heldout.jsonl", "chat", n=n_heldout, seed=1)
    model_dir = folder / "tiny-model"
    tiny_config("llama", **MODEL_CONFIG).save_pretrained(model_dir)
    tiny_generation_config().save_pretrained(model_dir)
    save_tokenizer_files(model_dir)
    return folder
