"""The one kernel switch: the registry's choice per mode, the recipe key and its deprecated alias.

The Triton-against-reference checks of each kernel run through `select` in each package's kernel
tests (`run_in_triton_interpreter`); `arctic plugins`' kernel table is checked in test_cli.py.
"""

from __future__ import annotations

import pytest

from arctic_core.errors import RecipeError
from arctic_core.kernels import Kernel, KernelUnavailable, registry, select
from arctic_core.kernels.reference import ce_value_and_grad_
from arctic_core.recipe import load_recipe
from arctic_core.recipe.checks import check_kernels

BASE = {"type": "demo", "model": {"name_or_path": "m"}}


def test_cpu_modes_resolve_to_the_reference_or_refuse_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for mode in ("auto", "torch"):
        assert select("core.cross_entropy", mode, "cpu") is ce_value_and_grad_
    # auto never picks a kernel that was not validated on a GPU, even on CUDA
    assert select("core.cross_entropy", "auto", "cuda:0") is ce_value_and_grad_
    with pytest.raises(KernelUnavailable) as error:
        select("core.cross_entropy", "triton", "cpu")
    assert error.value.path == "kernels" and "TRITON_INTERPRET=1" in str(error.value)
    with pytest.raises(RecipeError, match="auto, torch, triton"):
        select("core.cross_entropy", "fast", "cpu")
    with pytest.raises(KeyError, match="no kernel named"):
        select("nope", "auto", "cpu")


def test_auto_picks_triton_only_for_a_validated_kernel_on_cuda(monkeypatch):
    validated = Kernel(name="x.k", doc="", reference="m:r", triton="m:t", validated_on_gpu=True)
    assert registry.uses_triton(validated, "auto", "cuda") == registry.triton_installed()
    assert not registry.uses_triton(validated, "auto", "cpu")
    assert not registry.uses_triton(validated, "torch", "cuda")
    without = Kernel(name="x.r", doc="", reference="m:r")
    assert not registry.uses_triton(without, "triton", "cpu")  # no Triton version: its reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert registry.uses_triton(validated, "triton", "cpu") == registry.triton_installed()


def test_recipe_key_checked_aliased_and_refused_where_triton_cannot_run(monkeypatch):
    assert load_recipe(None, data=BASE).config.kernels == "auto"
    with pytest.raises(RecipeError) as error:
        load_recipe(None, data={**BASE, "kernels": "cuda"})
    assert [path for path, _ in error.value.problems] == ["kernels"]
    recipe = load_recipe(None, data={**BASE, "loss_kernel": "torch"})  # embed's old key
    assert recipe.config.kernels == "torch" and any("loss_kernel" in note for note in recipe.notes)
    with pytest.raises(RecipeError) as error:
        load_recipe(None, data={**BASE, "loss_kernel": "torch", "kernels": "triton"})
    assert [path for path, _ in error.value.problems] == ["loss_kernel"]
    config = load_recipe(None, data={**BASE, "kernels": "triton"}).config
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # no CUDA, whatever the machine has
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    problems = list(check_kernels(config))
    assert [path for path, _ in problems] == ["kernels"] and "CUDA" in problems[0][1]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert list(check_kernels(config)) == ([] if registry.triton_installed() else problems)
