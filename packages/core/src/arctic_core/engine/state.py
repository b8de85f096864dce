"""Where a run stands: one object, saved and restored whole by the `deepspeed` checkpoint.

`TrainingState` holds the counters the loop advances (optimizer steps, epoch, steps done in
the epoch, tokens seen), the training loader (which carries its own position in the data) and
reads and sets the process's RNG states. The loop is its only writer while training; the
checkpoint (`arctic_core.engine.resume`) writes `state_dict()` (every rank: `rank_state_dict()`)
and restores both through `load_state_dict()` before the first step.

A restored loader position is the truth for the epoch and the step in it (it differs from the
saved step count only when the user resumed a changed recipe on purpose, `allow_recipe_changes`);
a position at the end of its epoch means that epoch was complete, and the run goes on at the next.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs
import torch


def rng_state() -> dict[str, Any]:
    """This process's random generators as tensors and plain values (loadable with weights_only=True)."""
    import numpy as np

    version, keys, gauss = random.getstate()
    kind, mt, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "state": torch.from_numpy(np.asarray(mt, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Set python's, numpy's, torch's (and every CUDA device's) generators from `rng_state()`'s value."""
    import numpy as np

    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    mt = numpy["state"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], mt, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@attrs.define(kw_only=True)
class TrainingState:
    """The run's position: what an uninterrupted run and a resumed one must agree on before each step."""

    steps_per_epoch: int = 0
    """Optimizer steps in one pass over the data (fixed by setup; not saved)."""
    accumulation: int = 1
    """Micro-batches per optimizer step (fixed by setup; turns a loader position into steps)."""
    total_steps: int = 0
    """Optimizer steps the run trains for (fixed by setup; not saved)."""
    run_start_step: int = 0
    """The step this process started (or resumed) at (not saved)."""
    global_step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """The current epoch (0-based)."""
    step_in_epoch: int = 0
    """Optimizer steps done in the current epoch."""
    tokens: int = 0
    """Tokens trained on so far, every rank together."""
    loader: Any = None
    """The training loader (`arctic_core.engine.loaders.TrainLoader`): it keeps its own position."""

    def finish_step(self, tokens: int) -> None:
        """One more optimizer step done, of `tokens` tokens."""
        self.global_step += 1
        self.step_in_epoch += 1
        self.tokens += tokens

    def finish_epoch(self) -> None:
        """The current epoch is done; the next starts at its first step."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """The counters every rank shares (rank 0 saves them)."""
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "steps_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "tokens": self.tokens,
        }

    def rank_state_dict(self) -> dict[str, Any]:
        """What each rank saves for itself: its loader's position and its RNG states."""
        return {"loader": self.loader.state_dict(), "rng": rng_state()}

    def load_state_dict(self, shared: Mapping[str, Any], rank: Mapping[str, Any]) -> None:
        """Restore `state_dict()` and `rank_state_dict()` values (rank: `loader`, optional `rng`)."""
        if "rng" in rank:
            set_rng_state(rank["rng"])
        self.loader.load_state_dict(rank["loader"])
        self.global_step = int(shared["global_step"])
        self.tokens = int(shared.get("tokens", 0))
        self.epoch = self.loader.epoch
        self.step_in_epoch = self.loader.position // self.accumulation
        if self.step_in_epoch >= self.steps_per_epoch:  # that epoch was complete
            self.finish_epoch()
