"""Arctic's custom kernels: the registry and the one switch that picks them (`registry`), and core's own.

Core's kernel, `core.cross_entropy`, is the per-chunk softmax cross-entropy of the fused linear
cross-entropy (`arctic_core.losses`): `ce_value_and_grad_(logits, targets, ...)` returns each row's
loss and overwrites the chunk's fp32 logits with the loss's gradient wrt them. Its PyTorch reference is
`reference`, its Triton version `triton_ce`; both take the architecture's logit scale and soft-cap and
`ignore_index`. Callers get one through `select("core.cross_entropy", mode, device)`, where `mode` is
the recipe's `kernels` key. This package imports neither torch nor triton (plugins import `Kernel`).
"""

from __future__ import annotations

from arctic_core.kernels.registry import (
    KEY,
    MODES,
    InstalledKernel,
    Kernel,
    KernelUnavailable,
    auto_choice,
    get,
    installed,
    select,
)

__all__ = [
    "KEY",
    "MODES",
    "InstalledKernel",
    "Kernel",
    "KernelUnavailable",
    "auto_choice",
    "get",
    "installed",
    "select",
]
