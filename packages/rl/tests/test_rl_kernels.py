"""`rl.grpo_token_loss`: the Triton kernel (interpreted on CPU) against the PyTorch reference.

`TRITON_INTERPRET=1` must be set before triton is first imported, so the check runs in a fresh
interpreter (as the other packages' kernel tests do).
"""

from __future__ import annotations

import textwrap

from arctic_core.testing import run_in_triton_interpreter

SCRIPT = textwrap.dedent(
    """
    import torch
    from arctic_rl.kernels.triton_loss import token_losses as triton_losses
    from arctic_rl.loss import aggregate, token_losses

    g = torch.Generator().manual_seed(0)
    for rows, width, beta in ((3, 5, 0.0), (7, 301, 0.04), (2, 1500, 0.1)):  # 1500 > one block
        logp = -torch.rand(rows, width, generator=g) * 4
        old = logp + 0.3 * torch.randn(rows, width, generator=g)
        ref = logp + 0.3 * torch.randn(rows, width, generator=g)
        adv = torch.randn(rows, generator=g)
        mask = (torch.rand(rows, width, generator=g) > 0.2).float()
        results = []
        for fn in (token_losses, triton_losses):
            x = logp.clone().requires_grad_()
            loss, kl, clipped = fn(x, old, ref, adv, epsilon=0.2, epsilon_high=0.28, beta=beta)
            (grad,) = torch.autograd.grad(aggregate(loss, mask, "dapo", width) * 2.0, x)
            results.append((loss.detach(), kl, clipped, grad))
        (want, want_kl, want_clip, want_grad), (got, got_kl, got_clip, got_grad) = results
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got_kl, want_kl, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got_grad, want_grad, atol=1e-7, rtol=1e-5)
        assert torch.equal(got_clip, want_clip) and want_clip.any() and got_clip.dtype == torch.bool
    print("ok")
    """
)


def test_triton_kernel_matches_the_reference_values_and_gradients():
    assert run_in_triton_interpreter(SCRIPT).strip().endswith("ok")
