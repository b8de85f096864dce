"""Model FLOPs of a training step, from the model's shape and each batch's real sequence lengths.

Counted per micro-batch, on the CPU copy of the batch (before it moves to the device: no sync):

- Linear layers, per token and layer: q, k, v, o projections (2·H·(n_h·d + 2·n_kv·d) + 2·n_h·d·H)
  and the gated MLP (3 matrices: 6·H·I). Where the config declares experts (Mixtral's
  `num_local_experts`, Qwen-MoE's `num_experts`, DeepSeek's `n_routed_experts`, with
  `num_experts_per_tok`), a sparse layer counts `num_experts_per_tok` experts of width
  `moe_intermediate_size` (else `intermediate_size`), the shared experts
  (`shared_expert_intermediate_size`, or `n_shared_experts` x the expert width) and the router
  (2·H·E); layers listed as dense (`first_k_dense_replace`, `mlp_only_layers`,
  `decoder_sparse_step`) count the dense MLP.
- Attention scores and values at the real length L of every sample (a packed row counts each of
  its samples, never the padding): causal, so query i sees i + 1 keys, 2·n_h·d·L·(L+1) per layer;
  a bidirectional encoder (every attention module's `is_causal` false, e.g. BERT) 4·n_h·d·L².
- The MLP of a BERT-family encoder (`UNGATED_MLP`) has 2 matrices (4·H·I), not 3.
- The output layer, 2·H·V per projected position: only the trained positions (shifted labels
  != -100) when the loss projects only those (`arctic_core.losses.causal_lm_loss`, the default of
  every causal LM with an output layer), none for a model without one (embeddings).
- Training = 3 x forward (the backward pass is twice the forward). These are model FLOPs:
  activation-checkpointing recompute, frozen companion models (a DPO reference, a SwiftKV
  teacher) and norms, biases and softmax are not counted, so MFU compares like with like.

`peak_tflops` knows the dense bf16/fp16 tensor peak of H100, H200, A100, L4 and B200; on a CPU, or
an unknown card, or in fp32, the peak is unknown and MFU is left out, not guessed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from arctic_core.plan.shape import ModelShape

IGNORE_INDEX = -100

PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIE": 756.0,  # H100 PCIe, dense bf16
    "H100": 989.0,  # H100 SXM, dense bf16
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "B200": 2250.0,
}
"""Dense bf16/fp16 tensor-core peak TFLOPS per device, matched in this order against the CUDA name."""

_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts")

UNGATED_MLP = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet")
"""Model types whose MLP is up, down (2 matrices) rather than gate, up, down."""


def _int(config: Any, name: str, default: int = 0) -> int:
    value = getattr(config, name, None)
    return int(value) if value is not None else default


@attrs.frozen(kw_only=True)
class Moe:
    """The sparse MLP a config declares: experts, how many each token uses, their widths."""

    experts: int
    per_token: int
    width: int
    shared_width: int
    dense_layers: frozenset[int]

    @classmethod
    def from_config(cls, config: Any, layers: int) -> Moe | None:
        """The config's experts, or None for a dense model."""
        experts = next((_int(config, name) for name in _EXPERT_COUNTS if _int(config, name)), 0)
        per_token = _int(config, "num_experts_per_tok")
        if not experts or not per_token:
            return None
        width = _int(config, "moe_intermediate_size") or _int(config, "intermediate_size")
        shared = _int(config, "shared_expert_intermediate_size") or _int(config, "n_shared_experts") * width
        step = _int(config, "decoder_sparse_step", 1) or 1
        first_dense = _int(config, "first_k_dense_replace")
        listed = {int(i) for i in getattr(config, "mlp_only_layers", None) or ()}
        dense = {i for i in range(layers) if i < first_dense or i in listed or (i + 1) % step != 0}
        return cls(
            experts=experts,
            per_token=per_token,
            width=width,
            shared_width=shared,
            dense_layers=frozenset(dense),
        )


@attrs.frozen(kw_only=True)
class FlopsCounter:
    """Training FLOPs of micro-batches of one model (see the module docstring for what counts)."""

    shape: ModelShape
    moe: Moe | None = None
    head: str = "trained"
    """Which positions reach the output layer: "trained" (shifted labels != -100), "all" or "none"."""
    pad_id: int | None = None
    """The padding id, to find where a packed row's samples end when a batch holds several rows."""
    causal: bool = True
    """Causal attention (a decoder); False: bidirectional (an encoder)."""
    mlp_matrices: int = 3

    @classmethod
    def from_config(
        cls, config: Any, *, head: str = "trained", pad_id: int | None = None, causal: bool = True
    ) -> FlopsCounter:
        """From a transformers config (attributes read directly, so any decoder or BERT-like encoder works)."""
        shape = ModelShape.from_hf_config(config)
        return cls(
            shape=shape,
            moe=Moe.from_config(config, shape.layers),
            head=head,
            pad_id=pad_id,
            causal=causal,
            mlp_matrices=2 if shape.model_type in UNGATED_MLP else 3,
        )

    def linear_per_token(self) -> int:
        """Forward FLOPs of every layer's projections and MLP for one token (the output layer apart)."""
        s = self.shape
        attention = 2 * s.hidden * (s.q_dim + 2 * s.kv_dim) + 2 * s.q_dim * s.hidden
        dense_mlp = 2 * self.mlp_matrices * s.hidden * s.intermediate
        if self.moe is None:
            return s.layers * (attention + dense_mlp)
        m = self.moe
        sparse_mlp = 6 * s.hidden * (m.per_token * m.width + m.shared_width) + 2 * s.hidden * m.experts
        dense = len(m.dense_layers)
        return s.layers * attention + dense * dense_mlp + (s.layers - dense) * sparse_mlp

    def attention(self, lengths: Iterable[int]) -> int:
        """Forward FLOPs of attention scores and values over samples of these lengths (causal or not)."""
        s = self.shape
        pairs = sum(n * (n + 1) if self.causal else 2 * n * n for n in lengths)
        return 2 * s.layers * s.heads * s.head_dim * pairs

    def forward(self, lengths: Sequence[int], head_rows: int) -> int:
        """Forward FLOPs of samples of `lengths` tokens with `head_rows` positions through the output layer."""
        tokens = sum(lengths)
        return (
            tokens * self.linear_per_token()
            + self.attention(lengths)
            + head_rows * 2 * self.shape.hidden * self.shape.vocab
        )

    def batch(self, batch: Mapping[str, Any]) -> int:
        """Training FLOPs (3 x forward) of one micro-batch; 0 for a batch without `input_ids`."""
        if "input_ids" not in batch:
            return 0
        lengths = sample_lengths(batch, self.pad_id)
        return 3 * self.forward(lengths, self._head_rows(batch, sum(lengths)))

    def _head_rows(self, batch: Mapping[str, Any], tokens: int) -> int:
        if self.head == "none":
            return 0
        labels = batch.get("labels")
        if self.head == "all" or labels is None:
            return tokens
        return int((labels[:, 1:] != IGNORE_INDEX).sum())


def sample_lengths(batch: Mapping[str, Any], pad_id: int | None = None) -> list[int]:
    """The real length of every sample of a CPU batch (each packed sample apart, padding excluded).

    Unpacked: a row's `attention_mask` ones. Packed (no mask, `position_ids` restarting at 0 per
    sample): the row's real tokens are `num_tokens` for a one-row batch, else the row without its
    trailing padding (`pad_id` with label -100); each sample runs from one position reset to the next.
    """
    input_ids = batch["input_ids"]
    if "attention_mask" in batch:
        return [int(n) for n in batch["attention_mask"].sum(dim=1).tolist() if n]
    if "position_ids" not in batch:
        return [int(input_ids.shape[1])] * int(input_ids.shape[0])
    rows = int(input_ids.shape[0])
    real = (
        _packed_row_lengths(batch, pad_id)
        if rows > 1 or "num_tokens" not in batch
        else [int(batch["num_tokens"])]
    )
    lengths: list[int] = []
    for row, n in zip(batch["position_ids"], real, strict=True):
        starts = [0, *(i for i in torch.nonzero(row[:n] == 0).flatten().tolist() if i > 0), n]
        lengths += [b - a for a, b in itertools.pairwise(starts) if b > a]
    return lengths


def _packed_row_lengths(batch: Mapping[str, Any], pad_id: int | None) -> list[int]:
    input_ids = batch["input_ids"]
    width = int(input_ids.shape[1])
    if pad_id is None:
        return [width] * int(input_ids.shape[0])
    labels = batch.get("labels")
    padding = input_ids == pad_id
    if labels is not None:
        padding &= labels == IGNORE_INDEX
    real = []
    for row in padding:  # the trailing run of padding
        kept = torch.nonzero(~row).flatten()
        real.append(int(kept[-1]) + 1 if len(kept) else 0)
    return real


def peak_tflops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak TFLOPS for `dtype` (bf16/fp16) from `PEAK_TFLOPS`; None where unknown."""
    if device.type != "cuda" or dtype not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device).upper()
    return peak_of_name(name)


def peak_of_name(name: str) -> float | None:
    """The peak of the first `PEAK_TFLOPS` entry whose words are all words of a device name
    ("NVIDIA A100-SXM4-80GB" is A100; an L40S is not an L4)."""
    words = set(re.split(r"[^A-Z0-9]+", name.upper()))
    for key, peak in PEAK_TFLOPS.items():
        if all(word in words for word in key.split()):
            return peak
    return None


def pad_id_or_none(tokenizer: Any) -> int | None:
    """The collate's padding id for `tokenizer` (`arctic_core.data.collate.pad_id_of`), None without one."""
    from arctic_core.data.collate import pad_id_of

    try:
        return pad_id_of(tokenizer)
    except (AttributeError, ValueError):
        return None


def is_causal(model: Any) -> bool:
    """False when every attention module of a transformers model says `is_causal = False` (an encoder)."""
    modules = model.modules() if hasattr(model, "modules") else ()
    flags = [m.is_causal for m in modules if isinstance(getattr(m, "is_causal", None), bool)]
    return not flags or any(flags)


def counter_for(model: Any, *, pad_id: int | None) -> FlopsCounter | None:
    """The counter for a trainer's model (its transformers config), or None for a model without one.

    The output layer sees only trained positions when the model is a causal LM with an output
    layer (the fused loss), none when the model has none (an embedding model); attention is
    bidirectional where the model's attention modules say so (`is_causal`).
    """
    from arctic_core.losses import backbone_and_head

    module = getattr(model, "module", model)  # a DeepSpeed engine's model
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers") or not hasattr(config, "hidden_size"):
        return None
    try:
        backbone_and_head(module)
        head = "trained"
    except TypeError:
        head = "none"
    try:
        return FlopsCounter.from_config(config, head=head, pad_id=pad_id, causal=is_causal(module))
    except (AttributeError, TypeError, ValueError):  # a config without a decoder's shape
        return None
