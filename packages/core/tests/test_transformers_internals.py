"""The transformers internals that arctic-swiftkv and arctic-alst rely on still have their shape
(arctic_core/compat/transformers_internals.py), and the pin keeps transformers on the tested major."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from arctic_core.compat import transformers_internals

PACKAGES = Path(__file__).resolve().parents[2]


def test_every_internal_that_swiftkv_and_alst_rely_on_has_its_shape():
    assert transformers_internals.check_all() == []


def test_a_changed_internal_fails_with_a_message_naming_who_relies_on_it(monkeypatch):
    from transformers.models.qwen2 import modeling_qwen2

    monkeypatch.delattr(modeling_qwen2, "eager_attention_forward")
    [failure] = transformers_internals.check_all()
    assert failure.startswith("arctic-swiftkv relies on transformers' Llama/Qwen2 Attention")
    assert (
        "modeling_qwen2.eager_attention_forward is gone" in failure and transformers_internals.HERE in failure
    )


@pytest.mark.parametrize("folder", sorted(p for p in PACKAGES.iterdir() if (p / "pyproject.toml").is_file()))
def test_transformers_is_pinned_below_the_next_major(folder):
    import transformers

    meta = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r) for r in meta.get("dependencies", []) if Requirement(r).name == "transformers"]
    for pin in pins:
        assert Version("6.0") not in pin.specifier and "6.0.0.dev0" not in pin.specifier, (folder.name, pin)
        assert Version(transformers.__version__) in pin.specifier, (folder.name, pin)
