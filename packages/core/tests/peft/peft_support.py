"""Shared pieces of the PEFT tests: in-memory token rows, a collate obeying the batch contract, and a
trainer (registered as `peft_test`) that records each step's adapter gradients.

This file is also a recipe `code:` file for launched ranks. The rows repeat a few short patterns, so a
LoRA adapter on a tiny random model can lower the loss within a handful of steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from arctic_core.testing.runs import read_metrics  # noqa: F401  (re-exported to the tests)
from arctic_core.trainer import Trainer

PAD_ID = 0
PROBE = torch.tensor([[11, 57, 300, 42, 999, 123, 7, 64, 11, 57]])
LORA = {
    "peft_type": "lora",
    "r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
}


def make_rows(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows cycling through 4 fixed token patterns (length 12 to 20); every token after the first trains."""
    g = torch.Generator().manual_seed(seed)
    patterns = [torch.randint(10, 1000, (int(12 + 2 * k),), generator=g).tolist() for k in range(4)]
    return [{"input_ids": patterns[i % 4], "labels": [-100, *patterns[i % 4][1:]]} for i in range(n)]


def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": torch.arange(width).expand(len(rows), width).clone(),
        "attention_mask": mask,
        "num_trainable_tokens": (labels != -100).sum(),
    }


class PeftTestTrainer(Trainer):
    """Trains on `make_rows`; records the adapter gradients of every step (full tensors, every ZeRO stage)."""

    name = "peft_test"
    train_rows = 32

    def setup_data(self) -> None:
        self.train_dataset = make_rows(self.train_rows, seed=1)
        self.eval_dataset = None
        self.collate = collate
        self.grads: list[dict[str, torch.Tensor]] = []

    def transform_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Records whether the model arrived partitioned (ZeRO-3 builds under zero.Init), before adapters."""
        self.built_partitioned = all(hasattr(p, "ds_id") for p in model.parameters())
        return model

    def before_optimizer_step(self) -> None:
        from deepspeed.utils import safe_get_full_grad

        grads = {}
        for name, param in self.engine.module.named_parameters():
            if param.requires_grad:
                grads[name] = safe_get_full_grad(param).detach().float().cpu().clone()
        self.grads.append(grads)

    def probe_logits(self) -> torch.Tensor:
        self.engine.eval()
        with torch.no_grad():
            logits = self.engine(input_ids=PROBE.to(self.device), use_cache=False).logits
        return logits.float().cpu()

    def train(self) -> None:
        super().train()
        if os.environ.get("ARCTIC_TEST_DUMP") != "1":
            return
        logits = self.probe_logits()
        if self.rank == 0:
            out = Path(self.config.run_dir) / "record"
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"logits": logits, "trainable": self.trainable_names}, out / "record.pt")
