"""Arctic core.

`import arctic_core` stays light (no torch): `arctic --help` imports it. The names a method
package uses most are importable from here lazily: `from arctic_core import LossOutput, Trainer`.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"LossOutput": "arctic_core.engine.loop", "Trainer": "arctic_core.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arctic_core' has no attribute {name!r}")
