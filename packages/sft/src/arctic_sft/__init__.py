"""Arctic SFT: supervised fine-tuning and causal-LM training on arctic-core.

`from arctic_sft import SFTTrainer` is the base for custom trainers (the seed README's
`class MyTrainer(SFTTrainer): name = "my_custom_trainer"`); it is imported lazily so that
`import arctic_sft` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["CausalTrainer", "DPOTrainer", "SFTTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("SFTTrainer", "CausalTrainer"):
        from arctic_sft import trainer

        return getattr(trainer, name)
    if name == "DPOTrainer":
        from arctic_sft import dpo

        return dpo.DPOTrainer
    raise AttributeError(f"module 'arctic_sft' has no attribute {name!r}")
