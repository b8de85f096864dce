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
    from arctic_core.testing import save_tokenizer_files, tiny_config, tiny_generation_config, write_dataset

    folder = Path(folder)
    write_dataset(folder / "train.jsonl", "chat", n=n_train, seed=0)
    write_dataset(folder / "heldout.jsonl", "chat", n=n_heldout, seed=1)
    model_dir = folder / "tiny-model"
    tiny_config("llama", **MODEL_CONFIG).save_pretrained(model_dir)
    tiny_generation_config().save_pretrained(model_dir)
    save_tokenizer_files(model_dir)
    return folder
