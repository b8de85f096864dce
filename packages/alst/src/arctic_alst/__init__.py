"""arctic-alst: Arctic Long Sequence Training as a feature every method's recipe can switch on.

Ulysses sequence parallelism (`arctic_alst.ulysses`, `arctic_alst.sharding`), tiled MLP
(`arctic_alst.tiling`) and activation-checkpoint offload to CPU (`arctic_alst.offload`); the tiled
loss is core's chunked cross-entropy (`arctic_core.losses`, kernel `core.cross_entropy`). See docs/alst.md.
"""

__version__ = "0.1.0"
