"""The alst feature's recipe keys: top-level keys every method's recipe gets (ArcticTraining's names)."""

import attrs

from arctic_core.config import at_least, setting


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
