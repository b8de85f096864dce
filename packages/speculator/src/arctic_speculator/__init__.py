"""arctic-speculator: speculative-decoding draft heads (MLP speculator) trained on a frozen base model.

First cut: the MLP speculator module (`arctic_speculator.modeling`), its loss
(`arctic_speculator.loss`) and the `speculator` method (`arctic_speculator.trainer`) on core's loop.
"""

__version__ = "0.1.0"
