"""The alst feature's recipe keys: top-level keys every method's recipe gets (ArcticTraining's names)."""

import attrs

from arctic_core.config import at_least, setting

SUPPORTED = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
"""Attention implementations Ulysses sequence parallelism wraps (`arctic_alst.ulysses`)."""


@attrs.frozen(kw_only=True)
class ALSTConfig:
    """Top-level keys of the `alst` feature, available to every method's recipe."""

    sequence_parallel_size: int = setting(
        1,
        doc="Ranks that share each sequence (Ulysses sequence parallelism); divides the rank count and the attention heads.",
        check=at_least(1),
    )
    tiled_mlp_compute: bool = setting(
        False, doc="Run each decoder MLP over sequence tiles, recomputed in the backward (tiled MLP)."
    )
    activation_checkpoint_cpu_offload: bool = setting(
        False, doc="Keep each decoder layer's checkpointed input in CPU memory until its backward."
    )


def heads_problem(heads: int, kv_heads: int, size: int) -> str | None:
    """Why `sequence_parallel_size` = `size` cannot split a model's attention (None: it can).

    Ulysses gives each rank heads / size query heads, so size must divide them; the key/value
    heads are split the same way, or (fewer KV heads than ranks) repeated, so size must be a
    multiple or a divisor of them.
    """
    if heads % size:
        return f"is {size}, which does not divide the model's {heads} attention heads"
    if kv_heads % size and size % kv_heads:
        return f"is {size}; the model's {kv_heads} key/value heads must be a multiple or a divisor of it"
    return None
