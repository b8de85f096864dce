"""The fused per-head step: the autograd function and the Triton kernel (interpreted on CPU) vs plain torch.

`TRITON_INTERPRET=1` must be set before triton is first imported, and importing torch or transformers
in this process may already have imported it; so the Triton check runs in a fresh interpreter.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from arctic_core.testing import run_in_triton_interpreter
from arctic_speculator.kernels import fused_head_step, reference

CLOSE = {"atol": 1e-5, "rtol": 1e-5}


def plain(p, e, alpha, w, b, eps):
    """Written out independently: RMS-style norm with affine, exact GELU."""
    z = p + alpha * e
    n = z / torch.sqrt((z * z).mean(-1, keepdim=True) + eps)
    u = n * w + b
    return 0.5 * u * (1 + torch.erf(u / 2**0.5))


def inputs(rows: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    return make(rows, dim), make(rows, dim), make(dim), make(dim)


@pytest.mark.parametrize(("rows", "dim", "alpha"), [(7, 24, 1.7), (1, 5, 0.3), (0, 8, 1.0)])
def test_fused_step_values_and_gradients_match_autograd(rows, dim, alpha):
    p, e, w, b = inputs(rows, dim, seed=dim)
    upstream = torch.randn(rows, dim)
    expected = plain(p, e, alpha, w, b, 1e-6)
    want = torch.autograd.grad((expected * upstream).sum(), [p, e, w, b]) if rows else None
    got = fused_head_step(p, e, alpha, w, b, 1e-6)
    torch.testing.assert_close(got, expected, **CLOSE)
    torch.testing.assert_close(reference.head_step(p, e, alpha, w, b, 1e-6), expected, **CLOSE)
    if rows:
        for a, c in zip(torch.autograd.grad((got * upstream).sum(), [p, e, w, b]), want, strict=True):
            torch.testing.assert_close(a, c, **CLOSE)


TRITON_CHECK = textwrap.dedent(
    """
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1" and "triton" not in sys.modules
    import torch
    from arctic_core.kernels import select
    from arctic_speculator.kernels import fused_head_step
    from arctic_speculator.kernels.reference import head_step
    assert select("speculator.head_step", "triton", "cpu")[0].__module__ == "arctic_speculator.kernels.triton_step"
    for rows, dim, alpha in [(6, 32, 1.3), (3, 37, 0.5), (1, 1, 2.0), (0, 16, 1.0)]:
        g = torch.Generator().manual_seed(dim)
        p, e = torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g)
        w, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
        upstream = torch.randn(rows, dim, generator=g)
        results = []
        for kernels in ("triton", "torch"):
            leaves = [t.clone().requires_grad_() for t in (p, e, w, b)]
            y = fused_head_step(leaves[0], leaves[1], alpha, leaves[2], leaves[3], 1e-6, kernels=kernels)
            (y * upstream).sum().backward()
            results.append([y.detach()] + [t.grad for t in leaves])
        expected = head_step(p, e, alpha, w, b, 1e-6)
        torch.testing.assert_close(results[0][0], expected, atol=1e-5, rtol=1e-5)
        for a, c in zip(results[0], results[1]):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        if rows:
            assert float(results[0][1].abs().sum()) > 0
    print("triton ok")
    """
)


@pytest.mark.slow
def test_triton_kernel_matches_the_reference_under_the_interpreter():
    """Values and the four gradients, fp32, a power-of-two width, an odd one (masked lanes), 1, 0 rows."""
    assert "triton ok" in run_in_triton_interpreter(TRITON_CHECK, timeout=120)
