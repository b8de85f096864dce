"""The data pipeline: sources -> formats -> token-level masking -> filtering -> packing -> cache -> batches.

`DataFactory(config, tokenizer, run_dir=...)` is the entry point; `load_tokenizer(config)`
gives the tokenizer it expects. See docs/data.md for the user's view. Importing this package
imports torch (through the collator); `arctic --help` never does.
"""

from arctic_core.data.cache import PIPELINE_VERSION
from arctic_core.data.errors import DataError
from arctic_core.data.factory import DataFactory
from arctic_core.data.sources import KNOWN_DATASETS
from arctic_core.data.tokenizer import load_tokenizer, resolve_chat_template

__all__ = [
    "KNOWN_DATASETS",
    "PIPELINE_VERSION",
    "DataError",
    "DataFactory",
    "load_tokenizer",
    "resolve_chat_template",
]
