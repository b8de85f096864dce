"""Loading the recipe's `code:` file, once per process and identically on every rank.

The file is looked up in the recipe's folder, then the working directory (as ArcticTraining
does, so its project recipes' `code: ../train.py` works from anywhere); unset, `train.py` is
looked up in the same two places. A file written for ArcticTraining (it imports
`arctic_training`) is not imported: `written_for_arctictraining` tells the recipe loader so.

The module name is derived from the file's resolved path, so every rank imports it under
the same name (which pickling to data-loader workers needs). The file's folder is on
`sys.path` only while the file executes, so sibling imports work and nothing is left behind.
"""

from __future__ import annotations

import ast
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


def find_user_code(code: str | None, folder: Path | None = None, *, default: str = "train.py") -> Path | None:
    """The recipe's `code` file: in the recipe's `folder`, else the working directory.

    Unset `code` means `default` (train.py) if one of the two has it, else no file.
    """
    name = Path(code if code is not None else default).expanduser()
    places = [name] if name.is_absolute() else [p / name for p in (folder, Path.cwd()) if p is not None]
    for candidate in places:
        if candidate.is_file():
            return candidate.resolve()
    if code is None:
        return None
    looked = " or ".join(str(p) for p in places)
    raise RecipeError(f"file {code!r} does not exist (looked for {looked})", path="code")


def written_for_arctictraining(path: Path) -> bool:
    """Whether the file at `path` imports `arctic_training` or its `projects` (read, not executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return False  # importing it reports the problem
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n.split(".")[0] == "arctic_training" or n.startswith("projects.") for n in names):
            return True
    return False


def load_user_code(
    code: str | None, *, default: str = "train.py", folder: Path | None = None
) -> ModuleType | None:
    """Import the recipe's `code` file, or `default` when `code` is unset and there is one."""
    path = find_user_code(code, folder, default=default)
    if path is None:
        return None
    if path in _LOADED:
        return _LOADED[path]
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import {str(path)!r} as Python", path="code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.parent)
    sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        if parent in sys.path:
            sys.path.remove(parent)
    _LOADED[path] = module
    return module
