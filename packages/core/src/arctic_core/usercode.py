"""Loading the recipe's `code:` file, once per process and identically on every rank.

The module name is derived from the file's resolved path, so every rank imports it under
the same name (which pickling to data-loader workers needs). The file's folder is on
`sys.path` only while the file executes, so sibling imports work and nothing is left behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from arctic_core.errors import RecipeError

_LOADED: dict[Path, ModuleType] = {}


def module_name_for(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"arctic_user_{stem}_{digest}"


def load_user_code(code: str | None, *, default: str = "train.py") -> ModuleType | None:
    """Import the recipe's `code` file (or ./train.py when `code` is unset and it exists)."""
    if code is None:
        candidate = Path(default)
        if not candidate.is_file():
            return None
        path = candidate.resolve()
    else:
        path = Path(code).expanduser().resolve()
        if not path.is_file():
            raise RecipeError(f"file {code!r} does not exist", path="code")
    if path in _LOADED:
        return _LOADED[path]
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import {str(path)!r} as Python", path="code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    _LOADED[path] = module
    return module
