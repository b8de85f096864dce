"""arctic-speculator: speculative-decoding speculators trained on a frozen base model.

`modeling` (MLP and LSTM speculators), `loss` and `trainer` (the `speculator` method on core's loop),
`generate` (self-distilled data), `decode` and `evaluate` (exact greedy speculative decoding,
acceptance), `export` (the vLLM / ArcticInference layout, a checkpoint type), `kernels` (the fused
per-head step), `cli` (`arctic speculator generate|eval|export`).
"""

__version__ = "0.1.0"
