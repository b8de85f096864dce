"""The fused linear cross-entropy (`arctic_core.losses`) and its chunk kernel against the plain formula.

The reference builds the whole fp32 logits with plain torch (h·Wᵀ + b, scale, soft-cap written out) and
lets autograd differentiate the textbook CE; the fused loss, which forms its gradients in the forward
pass, must give the same value and gradients (fp32, 1e-6). The Triton kernel runs under Triton's
interpreter in a fresh process (`TRITON_INTERPRET=1` must be set before triton is first imported).
"""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from arctic_core.kernels.reference import ce_value_and_grad_
from arctic_core.losses import chunked_cross_entropy_sum, fused_linear_cross_entropy, token_log_probs
from arctic_core.testing import run_in_triton_interpreter

ROWS, HIDDEN, VOCAB = 23, 16, 50
CLOSE = {"atol": 1e-6, "rtol": 1e-5}
TRANSFORMS = {
    "plain": (None, None),
    "scaled": (0.7, None),
    "capped": (None, 3.0),
    "scaled-capped": (2.5, 1.5),
}


def tensors(seed: int, rows: int = ROWS, bias: bool = False, ignored: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, HIDDEN, generator=g).requires_grad_()
    w = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(VOCAB, generator=g)).requires_grad_() if bias else None
    y = torch.randint(0, VOCAB, (rows,), generator=g)
    y[list(ignored)] = -100
    return h, w, b, y


def plain_ce_sum(h, w, b, y, scale, cap) -> torch.Tensor:
    z = h @ w.T + (b if b is not None else 0.0)
    if scale is not None:
        z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    keep = y != -100
    return -(torch.log_softmax(z, dim=-1)[keep].gather(1, y[keep].unsqueeze(1))).sum()


def grads_of(fn, *inputs):
    for t in inputs:
        if t is not None:
            t.grad = None
    value = fn()
    (value * 3.0).backward()  # an upstream factor, as the loop's weighting applies
    return value.detach(), [None if t is None else t.grad.clone() for t in inputs]


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize(
    "chunk_size,ignored", [(5, (0, 7, 22)), (4, (4, 5, 6, 7)), (4096, ()), (ROWS, tuple(range(ROWS)))]
)
@pytest.mark.parametrize("bias", [False, True])
def test_fused_loss_and_gradients_equal_the_plain_formula(transform, chunk_size, ignored, bias):
    """Uneven chunks (23 rows by 5), a chunk with every row ignored (4..7), one chunk, all rows ignored."""
    scale, cap = transform
    h, w, b, y = tensors(1, bias=bias, ignored=ignored)
    got = grads_of(
        lambda: fused_linear_cross_entropy(h, w, y, b, chunk_size=chunk_size, scale=scale, softcap=cap),
        h,
        w,
        b,
    )
    want = grads_of(lambda: plain_ce_sum(h, w, b, y, scale, cap), h, w, b)
    torch.testing.assert_close(got[0], want[0], **CLOSE)
    for g, e in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, e, **CLOSE)
    with torch.no_grad():  # evaluation: values only, the same
        value = fused_linear_cross_entropy(h, w, y, b, chunk_size=chunk_size, scale=scale, softcap=cap)
    torch.testing.assert_close(value, want[0], **CLOSE)


def test_tied_embedding_and_head_gradients_add_up():
    """One weight used as input embedding and output layer: both paths' gradients reach it."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(VOCAB, HIDDEN, generator=g).requires_grad_()
    ids, y = torch.randint(0, VOCAB, (ROWS,), generator=g), torch.randint(0, VOCAB, (ROWS,), generator=g)
    proj = torch.randn(HIDDEN, HIDDEN, generator=g)

    def run(loss_fn):
        w.grad = None
        h = torch.tanh(w[ids] @ proj)
        loss_fn(h).backward()
        return w.grad.clone()

    got = run(lambda h: fused_linear_cross_entropy(h, w, y, chunk_size=6))
    want = run(lambda h: plain_ce_sum(h, w, None, y, None, None))
    torch.testing.assert_close(got, want, **CLOSE)


def test_frozen_weight_gets_no_gradient_and_a_second_backward_is_refused():
    h, w, _, y = tensors(3)
    w.requires_grad_(False)
    loss = fused_linear_cross_entropy(h, w, y, chunk_size=7)
    loss.backward(retain_graph=True)
    assert w.grad is None and h.grad is not None
    with pytest.raises(RuntimeError, match="at most once"):
        loss.backward()


def test_cross_entropy_sum_of_a_linear_head_takes_the_fused_path():
    """`chunked_cross_entropy_sum` with an nn.Linear head: no checkpointed recompute in backward."""
    layer = torch.nn.Linear(HIDDEN, VOCAB)
    h, _, _, y = tensors(4)
    config = SimpleNamespace(logit_scale=0.5, final_logit_softcapping=2.0)
    loss = chunked_cross_entropy_sum(layer, h, y, chunk_size=5, config=config)
    assert type(loss.grad_fn).__name__ == "_FusedLinearCrossEntropyBackward"
    got = grads_of(
        lambda: chunked_cross_entropy_sum(layer, h, y, chunk_size=5, config=config), h, layer.weight
    )
    want = grads_of(lambda: plain_ce_sum(h, layer.weight, layer.bias, y, 0.5, 2.0), h, layer.weight)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        torch.testing.assert_close(a, b, **CLOSE)
    with torch.no_grad():  # no-grad log-probs go through the kernel too
        lp = token_log_probs(layer, h, y, chunk_size=5, config=config)
    torch.testing.assert_close(-lp.sum(), want[0], **CLOSE)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_reference_kernel_gives_the_loss_and_its_gradient_wrt_the_logits(transform):
    scale, cap = transform
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(9, 131, generator=g) * 4).requires_grad_()
    y = torch.randint(0, 131, (9,), generator=g)
    y[2] = -100
    u = z * scale if scale is not None else z
    u = cap * torch.tanh(u / cap) if cap is not None else u
    rows = torch.nn.functional.cross_entropy(u, y, reduction="none")
    (want_grad,) = torch.autograd.grad(rows.sum(), z)
    buffer = z.detach().clone()
    got = ce_value_and_grad_(buffer, y, scale=scale, softcap=cap)
    torch.testing.assert_close(got, rows.detach(), **CLOSE)
    torch.testing.assert_close(buffer, want_grad, **CLOSE)
    assert got[2] == 0 and torch.count_nonzero(buffer[2]) == 0


TRITON_CHECK = textwrap.dedent(
    """
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1" and "triton" not in sys.modules
    import torch
    from arctic_core.kernels import select
    reference = select("core.cross_entropy", "torch", "cpu")
    kernel = select("core.cross_entropy", "triton", "cpu")  # the registry's pick, under the interpreter
    assert kernel.__module__ == "arctic_core.kernels.triton_ce" and "triton" in sys.modules
    cases = [(5, 97, None, None, 32), (4, 300, 0.7, None, 128), (3, 64, None, 3.0, 16),
             (6, 1000, 2.5, 1.5, 256), (1, 7, None, None, 1024), (0, 9, None, None, 8)]
    for rows, vocab, scale, cap, block in cases:
        g = torch.Generator().manual_seed(vocab)
        z = torch.randn(rows, vocab, generator=g) * 4
        y = torch.randint(0, vocab, (rows,), generator=g)
        if rows > 2:
            y[1] = -100
        for grad in (True, False):
            want_z, got_z = z.clone(), z.clone()
            want = reference(want_z, y, scale=scale, softcap=cap, grad=grad)
            got = kernel(got_z, y, scale=scale, softcap=cap, grad=grad, block=block)
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if grad:
                torch.testing.assert_close(got_z, want_z, atol=1e-6, rtol=1e-5)
    print("triton ok")
    """
)


def test_triton_kernel_matches_the_reference_under_the_interpreter():
    """Several blocks and a partial one, scale and soft-cap, an ignored row, value-only, 0 rows."""
    assert "triton ok" in run_in_triton_interpreter(TRITON_CHECK, timeout=180)
