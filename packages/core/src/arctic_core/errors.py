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
        self.problems: list[tuple[str | None, str]] = [(path, message)]
        """Every (key path, message) this error stands for (one, or several: `from_problems`)."""
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}: "
        if self.path:
            where += f"{self.path}: "
        return f"{where}{self.message}"

    def with_source(self, source: str) -> RecipeError:
        error = RecipeError(self.message, path=self.path, source=source)
        error.problems = self.problems
        return error

    @classmethod
    def from_problems(
        cls, problems: list[tuple[str | None, str]], *, source: str | None = None
    ) -> RecipeError:
        """One error for several problems (each with its key path), or the single one as it is."""
        if len(problems) == 1:
            path, message = problems[0]
            error = cls(message, path=path, source=source)
        else:
            lines = "\n".join(f"  {path or '(recipe)'}: {message}" for path, message in problems)
            error = cls(f"{len(problems)} problems:\n{lines}", source=source)
        error.problems = list(problems)
        return error


class FieldError(ValueError):
    """Raised by config validators: `field` is the attribute name, relative to its table.

    The recipe converter prefixes the path of the enclosing tables, so a validator only
    names its own field.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
