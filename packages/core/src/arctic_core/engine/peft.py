"""PEFT adapters (LoRA and peft's other tuners) for every method: check, apply, export.

`model.peft_config` holds `peft_type` (any case: "lora", "LORA") and peft's own fields for
that type (`r`, `lora_alpha`, `target_modules`, ...). It is checked at setup time, before any
model loads (`check_recipe`): peft must be installed (`pip install 'arctic-core[peft]'`), the
type must be one of peft's, every field must be a field of peft's config class for that type,
and peft must accept the values. Recipe parsing never imports peft.

The trainer applies the adapter after `transform_model` and before `select_trainable`
(`apply_adapters`): the base model is wrapped in a `PeftModel`, seeded by the recipe's seed,
and only the adapter's parameters keep `requires_grad`, so only they enter the optimizer and
the base weights come out bit-identical. Under ZeRO-3 the base model was built under
`deepspeed.zero.Init`; the adapter's new parameters are created whole on every rank and
DeepSpeed partitions them (broadcast from rank 0) when the engine starts. With activation
checkpointing on, the input embeddings' output is made to require grad, so gradients reach
adapters inside checkpointed layers whatever the checkpointing flavour.

The `huggingface` checkpoint of a PEFT run (`save_adapter`) writes the adapter alone
(`adapter_model.safetensors`, `adapter_config.json`; `PeftModel.from_pretrained(base, folder)`
loads it) plus the tokenizer and the recipe; only adapter tensors are gathered under ZeRO-3.
With `merge_adapters = true` it also writes `<folder>/merged/`: base + adapter merged into a
plain transformers model, built on rank 0 from the gathered weights on a CPU copy, so the
training model is never merged in place (merging and unmerging would round the base weights).

Prompt-learning types (prompt tuning, prefix tuning, p-tuning, ...) change the sequence the
model sees, which breaks the batch contract (position ids, packing, labels): they are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from arctic_core.config import ModelConfig, TrainerConfig
from arctic_core.engine import distributed
from arctic_core.errors import RecipeError
from arctic_core.gather import gathered_state_dict

PATH = "model.peft_config"
INSTALL_HINT = "pip install 'arctic-core[peft]'"
ADAPTER_NAME = "default"
MERGED_DIR = "merged"
WEIGHT_READING_INITS = ("pissa", "olora", "loftq", "eva", "corda", "lora_ga")
"""LoRA initialisations computed from the base weights (refused under ZeRO-3)."""


def import_peft() -> Any:
    """The peft module, or a RecipeError naming the extra that provides it."""
    try:
        import peft
    except ImportError as exc:
        problem = "is not installed" if getattr(exc, "name", None) == "peft" else "failed to import"
        raise RecipeError(
            f"PEFT adapters need the peft package, which {problem} ({exc}); install it with {INSTALL_HINT}",
            path=PATH,
        ) from None
    return peft


def _config_classes(peft: Any) -> dict[str, type]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(key, "value", key)).upper(): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def _did_you_mean(word: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def adapter_config(model_config: ModelConfig, *, task_type: str | None = None) -> Any:
    """peft's config object for `model.peft_config` (None when unset); every problem is a RecipeError.

    `task_type` fills peft's `task_type` when the recipe leaves it unset.
    """
    raw = model_config.peft_config
    if not raw:
        return None
    peft = import_peft()
    settings = dict(raw)
    kind = settings.pop("peft_type", None)
    classes = _config_classes(peft)
    names = sorted(k.lower() for k in classes)
    if not isinstance(kind, str) or not kind:
        raise RecipeError(f"needs peft_type, one of: {', '.join(names)}", path=f"{PATH}.peft_type")
    config_class = classes.get(kind.upper())
    if config_class is None:
        tip = _did_you_mean(kind.lower(), names)
        raise RecipeError(
            f"unknown PEFT type {kind!r}{tip}; peft {peft.__version__} knows: {', '.join(names)}",
            path=f"{PATH}.peft_type",
        )
    fields = sorted(f.name for f in dataclasses.fields(config_class) if f.init and f.name != "peft_type")
    for key in settings:
        if key not in fields:
            raise RecipeError(
                f"{config_class.__name__} has no field {key!r}{_did_you_mean(key, fields)}",
                path=f"{PATH}.{key}",
            )
    if task_type is not None:
        settings.setdefault("task_type", task_type)
    try:
        config = config_class(**settings)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"peft rejects these settings: {exc}", path=PATH) from None
    if getattr(config, "is_prompt_learning", False) or kind.upper() == "ADAPTION_PROMPT":
        raise RecipeError(
            f"{kind!r} is a prompt-learning type, which changes the token sequence the model sees; "
            "use a tuner that adapts weights (lora, loha, lokr, ia3, oft, boft, vera, ...)",
            path=f"{PATH}.peft_type",
        )
    return config


def check_recipe(config: TrainerConfig) -> None:
    """Setup-time checks of PEFT settings, before any model loads (imports peft when it is asked for)."""
    for i, entry in enumerate(config.checkpoint):
        if entry.merge_adapters and not config.model.peft_config:
            raise RecipeError(
                "merges PEFT adapters, but model.peft_config is not set",
                path=f"checkpoint[{i}].merge_adapters",
            )
    built = adapter_config(config.model)
    init = getattr(built, "init_lora_weights", None)
    stage = int(config.deepspeed.get("zero_optimization", {}).get("stage", 2))
    if stage == 3 and isinstance(init, str) and init.lower().startswith(WEIGHT_READING_INITS):
        raise RecipeError(
            f"init_lora_weights = {init!r} reads the base weights, which ZeRO-3 has partitioned when the "
            "adapter is created; use ZeRO 0-2 or a random init",
            path=f"{PATH}.init_lora_weights",
        )


def _default_task_type(model: torch.nn.Module) -> str | None:
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None


def apply_adapters(
    model: torch.nn.Module, model_config: ModelConfig, *, seed: int, activation_checkpointing: bool
) -> torch.nn.Module:
    """Wrap `model` in a PeftModel for `model.peft_config` (unchanged when unset); only adapters train."""
    config = adapter_config(model_config, task_type=_default_task_type(model))
    if config is None:
        return model
    peft = import_peft()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            wrapped = peft.get_peft_model(model, config, adapter_name=ADAPTER_NAME)
        except ValueError as exc:  # peft's "target modules not found" and the like
            raise RecipeError(
                f"peft cannot apply it to {type(model).__name__}: {exc}{_experts_hint(model)}", path=PATH
            ) from None
    if activation_checkpointing:
        require_input_grads(model)
    return wrapped


def _experts_hint(model: torch.nn.Module) -> str:
    """For an MoE model: where its expert weights are, as peft's `target_parameters` names them."""
    names = sorted(
        {n.split("layers.")[-1].split(".", 1)[-1] for n, p in model.named_parameters() if p.ndim == 3}
    )
    if not names:
        return ""
    return (
        f"; this model stores each layer's experts as 3-D parameters ({', '.join(names)}): LoRA adapts "
        "them with target_parameters (see docs/moe.md), not with target_modules"
    )


def require_input_grads(model: Any) -> None:
    """Make the input embeddings' output require grad (what adapters inside checkpointed layers need)."""
    if getattr(model, "_require_grads_hooks", None):
        return  # transformers or peft already did
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        return
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        embeddings.register_forward_hook(lambda _module, _inputs, output: output.requires_grad_(True))


def is_adapter_tensor(name: str) -> bool:
    """Adapter tensors carry the adapter's name as one component (`...lora_A.default.weight`)."""
    return ADAPTER_NAME in name.split(".")


def save_adapter(
    module: Any,
    folder: Path,
    *,
    zero3: bool,
    merge: bool,
    full_state: Callable[[], dict[str, torch.Tensor]],
    write_companions: Callable[[Path, Any], None],
) -> None:
    """The adapter alone into `folder` (+ `folder/merged/` when `merge`); every rank calls, rank 0 writes.

    `full_state()` gathers the whole wrapped model (only called when merging);
    `write_companions(folder, model)` adds the tokenizer, generation config and recipe.
    """
    adapter_state = gathered_state_dict(module, zero3, keep=is_adapter_tensor)
    state = full_state() if merge else {}
    if distributed.rank() != 0:
        return
    module.save_pretrained(folder, safe_serialization=True, state_dict=adapter_state)
    write_companions(folder, module.get_base_model())
    if merge:
        merged = merged_model(module, state)
        merged.save_pretrained(folder / MERGED_DIR, safe_serialization=True)
        write_companions(folder / MERGED_DIR, merged)


def merged_model(module: Any, state: dict[str, torch.Tensor]) -> Any:
    """A CPU copy of the PeftModel `module` holding `state` (its full state dict), adapters merged in.

    The copy is built on the meta device, then given CPU memory and a copy of `state` (no random init).
    `state` may share memory with the training model, so it is copied, never adopted: merging then
    cannot touch the training model's weights.
    """
    peft = import_peft()
    base = module.get_base_model()
    config = module.peft_config[ADAPTER_NAME]
    with torch.device("meta"):
        skeleton = type(base)._from_config(base.config, dtype=base.dtype)
        copy = peft.get_peft_model(skeleton, dataclasses.replace(config), adapter_name=ADAPTER_NAME)
    copy.to_empty(device="cpu")
    expected = copy.state_dict()
    missing = [name for name in expected if name not in state]
    if missing:
        raise RuntimeError(f"merging adapters: no weights for {missing[:5]}")
    copy.load_state_dict({name: state[name] for name in expected}, strict=True)
    _restore_nonpersistent_buffers(copy, module)
    merged = copy.merge_and_unload()
    merged.generation_config = getattr(base, "generation_config", None)  # encoders have none
    return merged


def _restore_nonpersistent_buffers(copy: torch.nn.Module, module: torch.nn.Module) -> None:
    """Buffers outside the state dict (rotary frequencies) come from the training model, not to_empty's garbage."""
    source = dict(module.named_buffers())
    for name, buffer in copy.named_buffers():
        if name in source:
            buffer.data = source[name].detach().cpu().clone().to(buffer.dtype)
