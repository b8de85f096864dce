"""Human-friendly numbers in recipes: `1_000`, `1e6`, `4K` = 4000, `4Ki` = 4096, `10%` = 0.1."""

from __future__ import annotations

import re

_SUFFIX = {
    "K": 10**3,
    "M": 10**6,
    "B": 10**9,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_PATTERN = re.compile(
    r"^\s*([-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?)\s*(Ki|Mi|Gi|Ti|K|M|B|G|T|%)?\s*$"
)


def parse_number(text: str) -> int | float:
    """Parse a human number; raises ValueError with a readable message."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"expected a number (like 1000, 1_000, 1e3, 4K, 4Ki or 10%), got {text!r}")
    digits, suffix = match.groups()
    is_float = any(c in digits for c in ".eE")
    value: int | float = float(digits.replace("_", "")) if is_float else int(digits.replace("_", ""))
    if suffix == "%":
        return float(value) / 100
    if suffix:
        value = value * _SUFFIX[suffix]
    return value


def to_int(value: object) -> int:
    """An integer from an int, an integral float, or a human number string."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            number = parse_number(value)
        except ValueError:
            raise ValueError(f"expected an integer (like 1000, 1_000, 4K or 4Ki), got {value!r}") from None
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            return int(number)
        return number
    raise ValueError(f"expected an integer, got {value!r}")


def to_float(value: object) -> float:
    """A float from an int, a float, or a human number string."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(parse_number(value))
    raise ValueError(f"expected a number, got {value!r}")
