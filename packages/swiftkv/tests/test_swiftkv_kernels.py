"""The fused KL kernel: Triton (interpreted on CPU) and the autograd path against the plain formula.

`TRITON_INTERPRET=1` must be set before triton is first imported, and importing torch or transformers
in this process may already have imported it; so the Triton checks run in a fresh interpreter.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from arctic_core.losses import distillation_kl_sum
from arctic_core.testing import run_in_triton_interpreter
from arctic_swiftkv.kernels import fused_kl, kl_value_and_grad

CLOSE = {"atol": 1e-5, "rtol": 1e-5}


def plain(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · Σ_i Σ_v p (log p − log q), by autograd."""
    log_p = torch.log_softmax(teacher / temperature, dim=-1)
    log_q = torch.log_softmax(student / temperature, dim=-1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum()


def logits(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * 3, torch.randn(rows, vocab, generator=g) * 3


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_reference_and_autograd_function_match_the_formula(temperature):
    student, teacher = logits(7, 131, seed=1)
    student.requires_grad_()
    expected = plain(student, teacher, temperature)
    (expected_grad,) = torch.autograd.grad(expected, student)
    rows, grad = kl_value_and_grad(student.detach(), teacher, temperature)
    torch.testing.assert_close(rows.sum(), expected.detach(), **CLOSE)
    torch.testing.assert_close(grad, expected_grad, **CLOSE)
    value = fused_kl(student, teacher, temperature)
    (got_grad,) = torch.autograd.grad(value * 3.0, student)
    torch.testing.assert_close(value.detach(), expected.detach(), **CLOSE)
    torch.testing.assert_close(got_grad, 3.0 * expected_grad, **CLOSE)


def test_distillation_kl_with_the_fused_kernel_equals_the_core_formula():
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(12, 97, bias=False)
    hs, ht = torch.randn(19, 12, generator=g, requires_grad=True), torch.randn(19, 12, generator=g)
    results = []
    for chunk_kl in (None, fused_kl):
        head.zero_grad()
        hs.grad = None
        loss = distillation_kl_sum(head, hs, head, ht, temperature=2.0, chunk_size=5, chunk_kl=chunk_kl)
        loss.backward()
        results.append((loss.detach(), hs.grad.clone(), head.weight.grad.clone()))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **CLOSE)


TRITON_CHECK = textwrap.dedent(
    """
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1" and "triton" not in sys.modules
    import torch
    from arctic_core.kernels import select
    from arctic_swiftkv.kernels import fused_kl, kl_value_and_grad
    kernel = select("swiftkv.fused_kl", "triton", "cpu")  # the registry's pick, under the interpreter
    assert kernel.__module__ == "arctic_swiftkv.kernels.triton_kl"
    import triton
    assert triton.knobs.runtime.interpret if hasattr(triton, "knobs") else True
    for rows, vocab, temperature, block in [(5, 97, 2.0, 32), (3, 1000, 0.7, 128), (1, 7, 1.0, 1024), (0, 9, 2.0, 8)]:
        g = torch.Generator().manual_seed(vocab)
        student = torch.randn(rows, vocab, generator=g) * 3
        teacher = torch.randn(rows, vocab, generator=g) * 3
        want = kl_value_and_grad(student, teacher, temperature)
        got = kernel(student, teacher, temperature, block=block)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == torch.float32
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if rows:
            assert float(got[0].min()) > 0
            s = student.clone().requires_grad_()
            value = fused_kl(s, teacher, temperature, kernels="triton")  # the autograd path, Triton inside
            value.backward()
            torch.testing.assert_close(value.detach(), want[0].sum(), atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(s.grad, want[1], atol=1e-5, rtol=1e-5)
    print("triton ok")
    """
)


@pytest.mark.slow
def test_triton_kernel_matches_the_reference_under_the_interpreter():
    """Values and gradients, fp32, odd vocabularies (several blocks, a partial one), T != 1, 0 rows."""
    assert "triton ok" in run_in_triton_interpreter(TRITON_CHECK, timeout=120)
