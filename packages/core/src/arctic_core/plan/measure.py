"""Exact peak of live tensor memory, for calibrating the planner against real runs (CPU or GPU).

`TensorMemory` is a `TorchDispatchMode` that sees every tensor an operator returns (forward, the
autograd engine's backward, the optimizer's step), records its storage by `data_ptr` and `nbytes`
once, and drops it when the storage is freed (a `weakref.finalize` on the storage, whose Python
object PyTorch keeps alive exactly as long as the storage). Process RSS is far too coarse for this:
the allocator keeps freed pages. Views share their base's storage and are counted once.

    with TensorMemory(tracked=[*model.parameters()]) as memory:
        step()
    memory.peak  # bytes
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """Live tensor bytes while active: `current`, and `peak` since entering (or `reset()`)."""

    def __init__(self, tracked: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        for tensor in tracked:
            self.track(tensor)

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage (once) until it is freed; tensors made before entering need this."""
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in self.live:
            return
        size = storage.nbytes()
        self.live[pointer] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, pointer, size)

    def _free(self, pointer: int, size: int) -> None:
        if self.live.get(pointer) == size:
            del self.live[pointer]
            self.current -= size

    def reset(self) -> None:
        """Start a new peak from what is live now."""
        self.peak = self.current

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of an optimizer's state (to `track` state made before measuring)."""
    found: list[torch.Tensor] = []
    for state in optimizer.state.values():
        found += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return found


def measure_training_step(
    model: torch.nn.Module, *, micro_batch: int, sequence: int, checkpointing: bool, seed: int = 0
) -> int:
    """Peak live tensor bytes of one steady-state step (forward, core's fused loss, backward, AdamW).

    One unmeasured step first creates the optimizer state, as in every step of a run but the first;
    then gradients are set to None and the second step is measured, the model's parameters and the
    optimizer's state counted from the start. The model trains in its own dtype, without DeepSpeed.
    """
    from arctic_core.engine.model import enable_activation_checkpointing
    from arctic_core.losses import causal_lm_loss

    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    config: Any = model.config
    vocab = int(config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (micro_batch, sequence), generator=generator)
    batch = {"input_ids": ids, "labels": ids.clone()}

    def step() -> None:
        causal_lm_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with TensorMemory([*model.parameters(), *model.buffers(), *optimizer_tensors(optimizer)]) as memory:
        memory.reset()
        step()
    return memory.peak


def live_tensors() -> list[torch.Tensor]:
    """Every tensor the garbage collector knows of (to `track` a library's buffers made before measuring)."""
    import gc
    import warnings

    gc.collect()
    with warnings.catch_warnings():  # isinstance on some objects touches deprecated torch attributes
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta]


def measure_deepspeed_step(
    model: torch.nn.Module, ds_config: dict[str, Any], *, micro_batch: int, sequence: int, seed: int = 0
) -> int:
    """`measure_training_step` through a DeepSpeed engine (ZeRO 0-3) with torch's fused AdamW, as Arctic builds it.

    Needs a process group (`arctic_core.engine.distributed.init_distributed()`); every tensor alive
    before the measured step (parameters, partitions, flat buffers, optimizer state) counts from the start.
    """
    import deepspeed

    from arctic_core.losses import causal_lm_loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    config: Any = model.config
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(config.vocab_size), (micro_batch, sequence), generator=generator)
    batch = {"input_ids": ids, "labels": ids.clone()}

    def step() -> None:
        engine.backward(causal_lm_loss(engine.module, batch, call=engine))
        engine.step()

    step()
    with TensorMemory(live_tensors()) as memory:
        memory.reset()
        step()
    engine.destroy()
    return memory.peak
