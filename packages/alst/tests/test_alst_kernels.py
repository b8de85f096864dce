"""The tiled cross-entropy: reference against torch's cross-entropy, Triton against the reference.

`TRITON_INTERPRET=1` must be set before triton is first imported, so the Triton check runs in a
fresh process (CPU tensors, small shapes, a vocabulary that is not a multiple of the tile).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arctic_alst.kernels import cross_entropy_value_and_grad, tiled_cross_entropy
from arctic_core.testing import run_in_triton_interpreter


def rows(n: int = 9, vocab: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * 4
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[[2, 5]] = -100
    return logits, targets


def test_reference_and_autograd_function_match_torch_cross_entropy():
    logits, targets = rows()
    expected = F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    loss, _ = cross_entropy_value_and_grad(logits, targets)
    torch.testing.assert_close(loss, expected)
    a = logits.clone().requires_grad_()
    (3.0 * tiled_cross_entropy(a, targets)).backward()
    b = logits.clone().requires_grad_()
    (3.0 * F.cross_entropy(b, targets, ignore_index=-100, reduction="sum")).backward()
    torch.testing.assert_close(a.grad, b.grad)


CHECK = """
import os, torch
assert os.environ["TRITON_INTERPRET"] == "1"
from arctic_alst.kernels import cross_entropy_value_and_grad, cross_entropy_value_and_grad_triton
g = torch.Generator().manual_seed(1)
for n, vocab in [(5, 300), (3, 4096 + 77)]:
    logits = torch.randn(n, vocab, generator=g) * 5
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[1] = -100
    ref_loss, ref_grad = cross_entropy_value_and_grad(logits, targets)
    work = logits.clone()
    loss, grad = cross_entropy_value_and_grad_triton(work, targets)
    assert grad.data_ptr() == work.data_ptr()  # written in place
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
print("ok")
"""


@pytest.mark.slow
def test_triton_kernel_matches_the_reference_under_the_interpreter():
    assert run_in_triton_interpreter(CHECK).strip().endswith("ok")
