"""Kernels of the InfoNCE's inner block (`infonce`): a PyTorch reference and a Triton version.

`block_functions(kind)` returns the (forward, backward) pair the chunked loss calls for each
block of rows: `"torch"` (the reference) or `"triton"` (CUDA, or Triton's interpreter on a CPU
when `TRITON_INTERPRET=1`); `resolve_kernel` turns the recipe's `loss_kernel` into one of them.
Nothing here imports triton until a Triton block runs (or `resolve_kernel` checks for it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from arctic_embed.kernels.infonce import torch_backward, torch_forward, triton_backward, triton_forward

KERNELS = ("torch", "triton")


class KernelUnavailable(RuntimeError):
    """`loss_kernel = "triton"` where Triton cannot run."""


def resolve_kernel(choice: str, device: Any) -> str:
    """The block implementation for `loss_kernel = choice` on `device` (a `torch.device`).

    `torch`: the PyTorch reference. `triton`: the Triton kernel; it needs triton installed
    (`arctic-embed[gpu]`) and a CUDA device, or `TRITON_INTERPRET=1` (Triton's interpreter, for
    tests on a CPU; slow); anything else is an error, never a silent fallback. `auto`: the
    PyTorch blocks (the Triton kernel is tested in the interpreter, not yet on a GPU).
    """
    if choice in ("auto", "torch"):
        return "torch"
    if choice != "triton":
        raise ValueError(f"unknown loss_kernel {choice!r}: expected auto, torch or triton")
    try:
        import triton  # noqa: F401
    except ImportError as error:
        raise KernelUnavailable(
            "loss_kernel = 'triton' needs triton: pip install 'arctic-embed[gpu]'"
        ) from error
    if getattr(device, "type", str(device)) != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise KernelUnavailable(
            f"loss_kernel = 'triton' runs on CUDA devices only (this run is on {device}); "
            "use loss_kernel = 'torch', or set TRITON_INTERPRET=1 to run Triton's interpreter on a CPU"
        )
    return "triton"


def block_functions(kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The (forward, backward) block functions of `kind` (torch or triton)."""
    if kind == "torch":
        return torch_forward, torch_backward
    if kind == "triton":
        return triton_forward, triton_backward
    raise ValueError(f"unknown InfoNCE kernel {kind!r}: expected one of {KERNELS}")


__all__ = ["KERNELS", "KernelUnavailable", "block_functions", "resolve_kernel"]
