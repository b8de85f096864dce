import pytest

from arctic_core.recipe.human import parse_number, to_float, to_int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1_000", 1000),
        ("1e6", 1e6),
        ("4K", 4000),
        ("4Ki", 4096),
        ("10%", 0.1),
        ("2M", 2_000_000),
        ("1.5K", 1500.0),
        ("-3", -3),
        ("7", 7),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_to_int_accepts_integral_forms_only():
    assert to_int("1e3") == 1000 and isinstance(to_int("1e3"), int)
    assert to_int(4.0) == 4
    for bad in ("two", 1.5, "1.5", True, None, "10%"):
        with pytest.raises(ValueError):
            to_int(bad)


def test_to_float():
    assert to_float("5%") == pytest.approx(0.05)
    assert to_float(3) == 3.0
    with pytest.raises(ValueError):
        to_float("fast")
