"""transformers still keeps packed samples apart the way Arctic relies on (see arctic_core/compat/packing.py)."""

from __future__ import annotations

import pytest
import torch

from arctic_core.compat.packing import ATTN_IMPLEMENTATIONS, check_packed_isolation
from arctic_core.testing import tiny_model


@pytest.mark.parametrize("attn", ATTN_IMPLEMENTATIONS)
def test_position_resets_keep_packed_samples_apart(attn: str) -> None:
    assert check_packed_isolation(attn) <= 1e-5


@pytest.mark.parametrize("attn", ATTN_IMPLEMENTATIONS)
def test_a_2d_mask_makes_packed_samples_leak(attn: str) -> None:
    """Why the collator sends no attention_mask with packed rows: with one, transformers does not split them."""
    model = tiny_model("llama", seed=0, attn_implementation=attn)
    first, second = torch.arange(3, 9), torch.arange(20, 25)
    ids = torch.cat([first, second])[None]
    positions = torch.cat([torch.arange(6), torch.arange(5)])[None]
    with torch.no_grad():
        alone = model(input_ids=second[None], use_cache=False).logits[0]
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 6:]
        masked = model(
            input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids), use_cache=False
        ).logits[0, 6:]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert (masked - alone).abs().max() > 1e-3
