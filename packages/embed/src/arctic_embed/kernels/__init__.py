"""Kernels of the InfoNCE's inner block (`infonce`): a PyTorch reference and a Triton version.

Each is a (forward, backward) pair of block functions, the ones the chunked loss calls for each
block of rows: `infonce.TORCH_BLOCK` (the reference) and `infonce.TRITON_BLOCK` (CUDA, or Triton's
interpreter on a CPU when `TRITON_INTERPRET=1`). The recipe's `kernels` key picks one, through the
registry of `arctic_core.kernels` (kernel `embed.infonce`, declared in `arctic_embed.plugin`).
Nothing here imports triton until a Triton block runs.
"""

from __future__ import annotations

INFONCE = "embed.infonce"
"""The kernel's registry name."""

__all__ = ["INFONCE"]
