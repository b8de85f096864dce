"""GRPO's custom kernel: the per-token clipped-ratio loss with its KL term (`rl.grpo_token_loss`).

The PyTorch reference is `arctic_rl.loss.token_losses`; the Triton version (`triton_loss`) has the
same contract and is chosen through core's kernel switch (the recipe's `kernels` key).
"""
