"""Arctic's reliance on transformers for packed-sample isolation, and a check that it still holds.

Packed rows carry `position_ids` that restart at 0 for each sample and no `attention_mask`.
transformers (5.x, `masking_utils`) then finds the sample boundaries from the position
resets (`find_packed_sequence_indices`, only when the 2D mask is None and there is no
cache) and builds a block-diagonal causal mask for sdpa and eager; flash attention gets
varlen boundaries from the same position ids. Given a 2D attention mask, or a cache, it
does not, and packed samples would attend to each other: the collator never sends a mask
with packed rows and the trainer runs with `use_cache=False`.

`check_packed_isolation` runs a tiny randomly initialised Llama on two packed samples and
on each alone and fails if any logit differs.
"""

from __future__ import annotations

from arctic_core.errors import ArcticError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def check_packed_isolation(
    attn_implementation: str = "sdpa", lengths: tuple[int, ...] = (5, 7, 3), atol: float = 1e-5
) -> float:
    """Largest |logit difference| between packed and separate runs; raises ArcticError above `atol`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        samples = [torch.randint(0, 64, (n,)) for n in lengths]
    input_ids = torch.cat(samples)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in samples])
    worst = float((packed - alone).abs().max())
    if worst > atol:
        raise ArcticError(
            f"transformers no longer keeps packed samples apart under attn_implementation={attn_implementation!r} "
            f"(max logit difference {worst:.3g}); Arctic's packing relies on it: see arctic_core/compat/packing.py"
        )
    return worst
