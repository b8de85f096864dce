"""One kernel switch for every method: the registry of Arctic's kernels and the resolver `select`.

A kernel has a PyTorch reference (runs everywhere, and defines what the kernel computes) and,
usually, a Triton version with the same contract. Each is named by a lazy `"module:attribute"`
string: a function, or a `(forward, backward)` pair for kernels with a hand-written backward.
Core declares its own kernels here (`CORE_KERNELS`); a method or feature declares its kernels in
the `kernels` field of its plugin object (`arctic_core.plugins.Method`, `arctic_core.features.Feature`),
so listing them (`arctic plugins`) imports neither torch nor triton.

The recipe's top-level `kernels` key has one meaning for every method:

- `auto` (default): the Triton version on a CUDA device where the kernel is `validated_on_gpu`
  and triton is installed; the PyTorch reference otherwise.
- `torch`: the PyTorch reference, always.
- `triton`: the Triton version; on a CPU only under `TRITON_INTERPRET=1` (Triton's interpreter,
  for tests). Anywhere else it is an error naming the key, at `arctic config check` and before a
  run builds anything (`arctic_core.recipe.checks`), never a silent fallback.

No Triton kernel of Arctic has been run on a GPU yet (they are checked against their references
under Triton's interpreter only), so none is `validated_on_gpu`: `auto` runs the PyTorch
references everywhere today.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

import attrs

from arctic_core.errors import RecipeError

KEY = "kernels"
"""The recipe key (top level, every method)."""
MODES = ("auto", "torch", "triton")


@attrs.frozen(kw_only=True)
class Kernel:
    """One custom kernel: its PyTorch reference and (optionally) its Triton version, as lazy references."""

    name: str  # "<package>.<kernel>", e.g. "swiftkv.fused_kl"
    doc: str  # one line: what it computes
    reference: str  # "module:attribute" of the PyTorch implementation
    triton: str | None = None  # "module:attribute" of the Triton implementation (same contract)
    validated_on_gpu: bool = False  # run and checked against the reference on a real GPU


@attrs.frozen(kw_only=True)
class InstalledKernel:
    """A declared kernel and the distribution that declares it; `problem` says why it is left out."""

    kernel: Kernel
    package: str
    problem: str | None = None


class KernelUnavailable(RecipeError):
    """`kernels = "triton"` where Triton cannot run (exit 2, naming the key)."""


CORE_KERNELS = (
    Kernel(
        name="core.cross_entropy",
        doc="Per-chunk softmax cross-entropy of the fused linear cross-entropy, gradient written over the logits.",
        reference="arctic_core.kernels.reference:ce_value_and_grad_",
        triton="arctic_core.kernels.triton_ce:ce_value_and_grad_",
    ),
)


def _declared() -> list[tuple[Kernel, str]]:
    """(kernel, package) for core's kernels and those of every loaded method and feature plugin."""
    from arctic_core import features, plugins

    found = [(kernel, "arctic-core") for kernel in CORE_KERNELS]
    for method in plugins.installed():
        found += [(kernel, method.package) for kernel in (method.method.kernels if method.method else ())]
    for feature in features.installed():
        found += [
            (kernel, feature.package) for kernel in (feature.feature.kernels if feature.feature else ())
        ]
    return found


@cache
def installed() -> list[InstalledKernel]:
    """Every declared kernel once (a plugin may name one kernel from several entry points).

    A name declared again with another definition keeps its first declaration; the other is
    listed with the problem and never selected.
    """
    by_name: dict[str, InstalledKernel] = {}
    clashes: list[InstalledKernel] = []
    for kernel, package in _declared():
        first = by_name.get(kernel.name)
        if first is None:
            by_name[kernel.name] = InstalledKernel(kernel=kernel, package=package)
        elif first.kernel != kernel:
            why = f"{first.package} already declares a kernel named {kernel.name!r} (ignored)"
            clashes.append(InstalledKernel(kernel=kernel, package=package, problem=why))
    return sorted(by_name.values(), key=lambda k: k.kernel.name) + clashes


def get(name: str) -> Kernel:
    """The kernel called `name`: core's without discovering plugins, else from the installed plugins."""
    for kernel in CORE_KERNELS:
        if kernel.name == name:
            return kernel
    for entry in installed():
        if entry.kernel.name == name and entry.problem is None:
            return entry.kernel
    raise KeyError(f"no kernel named {name!r} is installed (arctic plugins lists them)")


def triton_installed() -> bool:
    """Whether triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_problem(on_cuda: bool) -> str | None:
    """Why `kernels = "triton"` cannot run here (None if it can): triton missing, or no CUDA and no interpreter."""
    if not triton_installed():
        return "'triton' needs the triton package (it ships with torch on Linux: pip install triton)"
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            "'triton' runs Triton kernels on CUDA devices only, and this run has none; use 'auto' or "
            "'torch', or set TRITON_INTERPRET=1 to run Triton's interpreter on a CPU (tests; slow)"
        )
    return None


def _device_type(device: Any) -> str:
    return str(getattr(device, "type", None) or device or "cpu").split(":")[0]


def uses_triton(kernel: Kernel, mode: str, device: Any) -> bool:
    """Whether `mode` runs `kernel`'s Triton version on `device` (a `torch.device`, "cuda", "cpu", ...)."""
    if mode not in MODES:
        raise RecipeError(f"must be one of {', '.join(MODES)}; got {mode!r}", path=KEY)
    if mode == "torch" or kernel.triton is None:  # a kernel without a Triton version: its reference
        return False
    on_cuda = _device_type(device) == "cuda"
    if mode == "auto":
        return on_cuda and kernel.validated_on_gpu and triton_installed()
    problem = triton_problem(on_cuda)
    if problem is not None:
        raise KernelUnavailable(f"{problem} (kernel {kernel.name})", path=KEY)
    return True


@cache
def _load(reference: str) -> Any:
    from arctic_core.plugins import load_reference

    return load_reference(reference)


def select(name: str, mode: str = "auto", device: Any = None) -> Any:
    """The implementation of kernel `name` that `mode` (the recipe's `kernels`) picks on `device`."""
    kernel = get(name)
    return _load(kernel.triton if uses_triton(kernel, mode, device) else kernel.reference)  # type: ignore[arg-type]


def auto_choice(kernel: Kernel) -> str:
    """What `auto` picks for `kernel` on this machine: "triton" or "torch" (imports torch only to ask
    for CUDA, and only for a validated kernel)."""
    if kernel.triton is None or not kernel.validated_on_gpu or not triton_installed():
        return "torch"
    from arctic_core.recipe.checks import has_cuda

    return "triton" if has_cuda() else "torch"


DEPRECATED_KEYS = {"loss_kernel": "arctic-embed's InfoNCE block"}
"""Earlier per-method kernel keys (top level), read as `kernels` with a warning."""


def translate_deprecated(
    raw: dict[str, Any], config_class: type
) -> tuple[list[tuple[str | None, str]], list[str]]:
    """Read the deprecated per-method kernel keys in `raw` as `kernels`: (problems, warnings).

    A key that `config_class` itself has (a user's trainer config) is left alone.
    """
    problems: list[tuple[str | None, str]] = []
    notes: list[str] = []
    own = attrs.fields_dict(config_class) if attrs.has(config_class) else {}
    for old, what in DEPRECATED_KEYS.items():
        if old not in raw or old in own:
            continue
        value = raw.pop(old)
        if value not in MODES:
            problems.append(
                (old, f"must be one of {', '.join(MODES)}; got {value!r} (deprecated: use {KEY})")
            )
        elif KEY in raw and raw[KEY] != value:
            problems.append(
                (old, f"deprecated alias of {KEY}, which this recipe sets to {raw[KEY]!r}; keep {KEY}")
            )
        else:
            raw[KEY] = value
            notes.append(
                f"{old} ({what}) is deprecated: read as {KEY} = {value!r}, the one kernel switch for every "
                "method (docs/recipes.md)"
            )
    return problems, notes
