"""The bundled speculator pipeline's assets: arithmetic chats and a tiny *trained* base model.

A speculator is only worth measuring on a base model that has learnt something: on a random
network nothing is predictable. `write_quickstart(folder)` writes `train.jsonl` and `heldout.jsonl`
(multi-turn arithmetic chats from `arctic_core.testing`, seeds 0 and 1) and `base-model/` (a
2-layer, 64-wide Llama config and the shipped tokenizer). `train_base(folder)` then fine-tunes that
tiny Llama on `train.jsonl` with core's loop (causal-LM loss on the assistant tokens) and saves
its weights into `base-model/`; `packages/speculator/scripts/make_quickstart.py` does both for
the committed copy. The recipes (`quickstart.toml`, `tiny-pipeline.toml`) use it frozen.
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

BASE_RECIPE = """
type = "{trainer}"
micro_batch_size = 32
epochs = {epochs}
seed = 0

[model]
name_or_path = "{folder}/base-model"
from_config = true
dtype = "fp32"
disable_activation_checkpoint = true

[data]
sources = ["{folder}/train.jsonl"]
max_length = 128
div_length = 16
dl_num_workers = 0

[optimizer]
lr = 3e-3
weight_decay = 0.0

[scheduler]
name = "cosine"
warmup_ratio = 0.05

[logger]
output_dir = "{run}"
progress_bar = false
"""


def write_quickstart(folder: str | Path, n_train: int = 2048, n_heldout: int = 64) -> Path:
    """Write `train.jsonl`, `heldout.jsonl` and `base-model/` (config + tokenizer, no weights yet)."""
    from arctic_core.testing import write_chat_task

    folder = Path(folder)
    write_chat_task(folder, MODEL_CONFIG, n_train=n_train, n_heldout=n_heldout)
    (folder / "tiny-model").rename(folder / "base-model")
    return folder


def train_base(folder: str | Path, run_dir: str | Path, trainer: str = "sft", epochs: int = 8) -> Path:
    """Fine-tune the tiny base on `train.jsonl` (assistant tokens) and save its weights into `base-model/`."""
    from safetensors.torch import save_file

    from arctic_core.recipe import load_recipe

    folder, run_dir = Path(folder).resolve(), Path(run_dir)
    recipe = run_dir / "base.toml"
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe.write_text(BASE_RECIPE.format(trainer=trainer, epochs=epochs, folder=folder, run=run_dir / "run"))
    loaded = load_recipe(recipe, [])
    trainer_obj = loaded.trainer_class()(loaded.config)
    trainer_obj.train()
    model: Any = trainer_obj.engine.module
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "base-model" / "model.safetensors"), metadata={"format": "pt"})
    return folder / "base-model"
