"""Arctic's testing kit: a shipped tiny tokenizer, tiny seeded models and toy datasets, all offline.

Used by every Arctic package's tests, by users' tests and by the quickstart. Importing this
subpackage imports torch and transformers; `import arctic_core` alone does not. The pytest
fixtures live in `arctic_core.testing.fixtures` (add it to `pytest_plugins` in a conftest).

Shipped tokenizer (`TOKENIZER_DIR`): byte-level BPE, 1024 tokens, digits one per token;
`<|endoftext|>` EOS, `<|begin_of_text|>` BOS (never added unless loaded with
`add_bos_token=True`), `<|im_start|>`/`<|im_end|>` ChatML turns, no pad token, ChatML template.
"""

from arctic_core.testing.datasets import (
    FORMATS,
    GENERATORS,
    Problem,
    alpaca_rows,
    arithmetic_conversations,
    arithmetic_problems,
    preference_rows,
    prompt_completion_rows,
    sharegpt_conversations,
    text_rows,
    to_sharegpt,
    ultrafeedback_rows,
    write_dataset,
    write_hub_layout,
    write_rows,
)
from arctic_core.testing.models import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    TOKENIZER_DIR,
    save_tiny_model,
    save_tokenizer_files,
    tiny_config,
    tiny_generation_config,
    tiny_model,
    tiny_tokenizer,
    write_chat_task,
)
from arctic_core.testing.runs import (
    arctic,
    finish_spawned_rank,
    read_metrics,
    run_in_triton_interpreter,
    start_spawned_rank,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "FORMATS",
    "GENERATORS",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "TOKENIZER_DIR",
    "Problem",
    "alpaca_rows",
    "arctic",
    "arithmetic_conversations",
    "arithmetic_problems",
    "finish_spawned_rank",
    "preference_rows",
    "prompt_completion_rows",
    "read_metrics",
    "run_in_triton_interpreter",
    "save_tiny_model",
    "save_tokenizer_files",
    "sharegpt_conversations",
    "start_spawned_rank",
    "text_rows",
    "tiny_config",
    "tiny_generation_config",
    "tiny_model",
    "tiny_tokenizer",
    "to_sharegpt",
    "ultrafeedback_rows",
    "write_chat_task",
    "write_dataset",
    "write_hub_layout",
    "write_rows",
]
