"""The data pipeline: sources -> formats -> token-level masking -> filtering -> packing -> cache -> batches.

`DataFactory(config, tokenizer, run_dir=...)` is the entry point; `load_tokenizer(config)`
gives the tokenizer it expects. See docs/data.md for the user's view. `DataFactory` imports
torch (through the collator) on first use; the package itself stays light, so that
`arctic config check` can check sources (`arctic_core.data.sources`) without torch.
"""

from typing import TYPE_CHECKING, Any

from arctic_core.data.cache import PIPELINE_VERSION
from arctic_core.data.errors import DataError
from arctic_core.data.sources import KNOWN_DATASETS
from arctic_core.data.tokenizer import load_tokenizer, resolve_chat_template

if TYPE_CHECKING:
    from arctic_core.data.factory import DataFactory

__all__ = [
    "KNOWN_DATASETS",
    "PIPELINE_VERSION",
    "DataError",
    "DataFactory",
    "load_tokenizer",
    "resolve_chat_template",
]


def __getattr__(name: str) -> Any:
    if name == "DataFactory":
        from arctic_core.data.factory import DataFactory

        return DataFactory
    raise AttributeError(f"module 'arctic_core.data' has no attribute {name!r}")
