"""Speculator folders: the layout vLLM and ArcticInference load, the base model's identity, loading back.

An exported folder holds

- `config.json`: `model_type: "mlp_speculator"`, `architectures` (`MLPSpeculatorPreTrainedModel` for
  the MLP speculator, `ArcticLSTMSpeculatorPreTrainedModel` for sum_rnn/sum_lstm) and the fields
  those loaders read (`Speculator.export_config`: n_predict, inner_dim, emb_dim, vocab_size,
  top_k_tokens_per_head, n_candidates, tie_weights, scale_input; the LSTM's input_hidden_dim,
  proj_dim, method, tie_lstm_embs), plus `base_model_name_or_path` (as ArcticTraining writes it),
  `torch_dtype`, and Arctic's `arctic_base_fingerprint` and `arctic_settings`;
- `model.safetensors`: the speculator's state dict under its published parameter names (tied
  weights appear under every name, as the loaders look each one up).

The base model's fingerprint is a SHA-256 over its parameters' names, shapes, dtypes and bytes
(`base_fingerprint`). `load_speculator(folder, base)` refuses a base model whose fingerprint
differs (`SpeculatorMismatch`, naming both), and reads ArcticTraining's own output as well
(`pytorch_model.bin` + its `config.json`, which has no fingerprint: then vocabulary size and hidden
size are checked). The `speculator` checkpoint type (`[[checkpoint]] type = "speculator"`, alias
`arctic-lstm-speculator` as ArcticTraining names it) writes this layout from a training run,
gathering ZeRO-3 parameters one at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from arctic_core.engine.checkpoint import CheckpointEngine, register_checkpoint
from arctic_core.errors import ArcticError
from arctic_speculator.modeling import Speculator, build_speculator

WEIGHTS = "model.safetensors"
ARCTIC_TRAINING_WEIGHTS = "pytorch_model.bin"


class SpeculatorMismatch(ArcticError):
    """A speculator folder does not belong to the base model it is loaded against (exit 1)."""

    exit_code = 1


def base_fingerprint(model: torch.nn.Module, zero3: bool = False) -> str:
    """SHA-256 over the base model's parameter names, shapes, dtypes and values (ZeRO-3: gathered)."""
    from arctic_core.gather import gathered_parameters

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        with gathered_parameters([param], enabled=zero3 and hasattr(param, "ds_id")):
            tensor = param.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def speculator_config(speculator: Speculator, base_name: str, fingerprint: str) -> dict[str, Any]:
    """The exported `config.json`."""
    dtype = str(next(speculator.parameters()).dtype).removeprefix("torch.")
    return {
        **speculator.export_config(),
        "base_model_name_or_path": base_name,
        "torch_dtype": dtype,
        "arctic_base_fingerprint": fingerprint,
        "arctic_settings": speculator.settings(),
    }


def write_speculator(folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write `config.json` and `model.safetensors` (every tied name its own copy, as safetensors needs)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_speculator(
    folder: str | Path, speculator: Speculator, base: torch.nn.Module, base_name: str
) -> Path:
    """Export a (whole, not partitioned) speculator trained on `base` into `folder`."""
    folder = Path(folder)
    write_speculator(
        folder, speculator.state_dict(), speculator_config(speculator, base_name, base_fingerprint(base))
    )
    return folder


def settings_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """`build_speculator` settings from an exported config: Arctic's own, or ArcticTraining's / vLLM's fields."""
    if "arctic_settings" in config:
        return dict(config["arctic_settings"])
    settings: dict[str, Any] = {
        "n_predict": int(config["n_predict"]),
        "tie_weights": bool(config.get("tie_weights", False)),
        "scale_input": bool(config.get("scale_input", False)),
    }
    if "method" in config:  # ArcticTraining's ArcticLSTMSpeculatorConfig
        settings.update(
            method=config["method"],
            inner_dim=str(config["inner_dim"]),
            proj_dim=str(config["proj_dim"]),
            emb_dim=str(config["emb_dim"]),
            tie_lstm_embs=bool(config.get("tie_lstm_embs", False)),
        )
    else:  # fms-extras / vLLM MLPSpeculatorConfig
        settings.update(method="mlp", inner_dim=int(config.get("inner_dim") or 0))
    return settings


def _hidden_size(config: dict[str, Any]) -> int:
    return int(config["input_hidden_dim"] if "input_hidden_dim" in config else config["emb_dim"])


def check_base(config: dict[str, Any], base: torch.nn.Module, folder: Path) -> None:
    """Refuse a base model other than the one the speculator in `folder` was trained on."""
    base_config: Any = getattr(base, "config", None)
    vocab = int(getattr(base_config, "vocab_size", -1))
    hidden = int(getattr(base_config, "hidden_size", -1))
    if vocab != int(config["vocab_size"]) or hidden != _hidden_size(config):
        raise SpeculatorMismatch(
            f"the speculator in {folder} was trained for a base model with vocabulary {config['vocab_size']} and "
            f"hidden size {_hidden_size(config)}; this base model has {vocab} and {hidden}"
        )
    expected = config.get("arctic_base_fingerprint")
    if expected:
        found = base_fingerprint(base)
        if found != expected:
            raise SpeculatorMismatch(
                f"the speculator in {folder} was trained on base model "
                f"{config.get('base_model_name_or_path')!r} (weights {expected[:16]}...); the base model given has "
                f"other weights ({found[:16]}...). Load it with the base model it was trained on."
            )


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).exists():
        from safetensors.torch import load_file

        return load_file(str(folder / WEIGHTS))
    if (folder / ARCTIC_TRAINING_WEIGHTS).exists():
        state: dict[str, torch.Tensor] = torch.load(folder / ARCTIC_TRAINING_WEIGHTS, map_location="cpu")
        return state
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS} nor {ARCTIC_TRAINING_WEIGHTS}")


def load_speculator(folder: str | Path, base: torch.nn.Module | None = None) -> Speculator:
    """A speculator from an exported (Arctic) or ArcticTraining folder, checked against `base` when given."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "mlp_speculator":
        raise SpeculatorMismatch(
            f"{folder}/config.json is not a speculator (model_type {config.get('model_type')!r})"
        )
    if base is not None:
        check_base(config, base, folder)
    speculator = build_speculator(
        _hidden_size(config), int(config["vocab_size"]), settings_from_config(config)
    )
    state = read_state(folder)
    wanted = speculator.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise SpeculatorMismatch(f"{folder}: parameters missing {missing[:5]}, unexpected {unexpected[:5]}")
    speculator.load_state_dict(state)
    dtype = getattr(torch, str(config.get("torch_dtype", "float32")), torch.float32)
    return speculator.to(dtype).eval()


@register_checkpoint("speculator")
class SpeculatorCheckpoint(CheckpointEngine):
    """The trained speculator in the vLLM / ArcticInference layout, with the base model's identity."""

    def save(self, folder: Path) -> None:
        from arctic_core.engine import distributed
        from arctic_core.gather import gathered_state_dict

        trainer: Any = self.trainer
        zero3 = trainer.zero_stage == 3
        module: Any = trainer.engine.module
        state = gathered_state_dict(module, zero3)
        fingerprint = base_fingerprint(trainer.base.module, zero3)
        if distributed.rank() == 0:
            name = trainer.config.model.name_or_path
            write_speculator(folder, state, speculator_config(module, name, fingerprint))


@register_checkpoint("arctic-lstm-speculator")
class ArcticLSTMSpeculatorCheckpoint(SpeculatorCheckpoint):
    """ArcticTraining's name for the speculator checkpoint type."""
