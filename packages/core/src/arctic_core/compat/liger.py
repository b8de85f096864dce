"""`model.type = "liger"`: Liger kernels (fused RMSNorm, RoPE, SwiGLU, ...) swapped into the model.

ArcticTraining builds such models with `AutoLigerKernelForCausalLM`; Arctic builds the model as
usual and applies the same kernels to it with liger-kernel's `_apply_liger_kernel_to_instance`
(the `arctic-core[liger]` extra). The kernels are Triton GPU kernels: without CUDA the model
trains as plain transformers and a warning says so; on GPUs a missing package is an error, never
a silent fallback. The fused linear cross-entropy is not used: Arctic computes its loss itself.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from arctic_core.errors import ArcticError

EXTRA = "pip install 'arctic-core[liger]'"
MIN_VERSION = "0.6.1"  # int64 indexing, as ArcticTraining requires


def installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model: Any, *, cuda: bool, log: logging.Logger, swiglu: bool = True) -> bool:
    """Swap Liger kernels into `model` in place; False (with a warning) when they cannot run here."""
    if not cuda:
        missing = "" if installed() else f"; the liger-kernel package is not installed either ({EXTRA})"
        log.warning(
            "model.type = 'liger': Liger kernels need a CUDA GPU and this run has none, so the model "
            "trains without them (plain transformers)%s",
            missing,
        )
        return False
    if not installed():
        raise ArcticError(
            f"model.type = 'liger' needs the liger-kernel package, which is not installed: {EXTRA}"
        )
    from importlib.metadata import version

    from packaging.version import Version

    have = version("liger-kernel")
    if Version(have) < Version(MIN_VERSION):
        raise ArcticError(f"model.type = 'liger' needs liger-kernel>={MIN_VERSION}, found {have}: {EXTRA}")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        _apply_liger_kernel_to_instance(
            model=model, swiglu=swiglu, cross_entropy=False, fused_linear_cross_entropy=False
        )
    except (KeyError, TypeError) as exc:
        raise ArcticError(
            f"model.type = 'liger': liger-kernel {have} does not support model type {model_type!r} ({exc})"
        ) from None
    log.info("model.type = 'liger': Liger kernels applied to the %s model", model_type)
    return True
