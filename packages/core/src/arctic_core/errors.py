"""Errors that the `arctic` command turns into a clear message and an exit code.

`RecipeError` (exit 2) is bad usage or a bad recipe: the message names the file, the key
path and what was expected. `ArcticError` (exit 1) is a failure while running. Neither is
ever shown with a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ArcticError(Exception):
    """A failure while running (exit code 1)."""

    exit_code = 1


class RecipeError(ArcticError):
    """A bad recipe or bad usage (exit code 2): names the key path and what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None):
        self.path = path
        self.source = source
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}: "
        if self.path:
            where += f"{self.path}: "
        return f"{where}{self.message}"

    def with_source(self, source: str) -> RecipeError:
        return RecipeError(self.message, path=self.path, source=source)


class FieldError(ValueError):
    """Raised by config validators: `field` is the attribute name, relative to its table.

    The recipe converter prefixes the path of the enclosing tables, so a validator only
    names its own field.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
