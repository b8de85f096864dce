"""arctic-alst: Arctic Long Sequence Training as a feature every method's recipe can switch on.

Ulysses sequence parallelism (`arctic_alst.ulysses`, `arctic_alst.sharding`), tiled MLP
(`arctic_alst.tiling`), activation-checkpoint offload to CPU (`arctic_alst.offload`) and a tiled
cross-entropy kernel (`arctic_alst.kernels`). See docs/alst.md.
"""

__version__ = "0.1.0"
