"""The data pipeline's error: bad data found while preparing it (exit code 1)."""

from __future__ import annotations

from arctic_core.errors import ArcticError


class DataError(ArcticError):
    """Bad or unusable data: the message names the source, file, line or row."""

    def __reduce__(self) -> tuple[type, tuple[str]]:  # survives datasets' worker processes
        return (type(self), (str(self),))
