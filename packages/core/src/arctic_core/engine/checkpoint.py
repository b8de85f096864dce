"""Checkpoint engines, a small registry keyed by `[[checkpoint]] type`, and the `huggingface` export.

A checkpoint engine decides when it saves (`save_every_n_steps`, `save_every_n_epochs`,
`save_end_of_training`) and writes one folder. Every folder is written under a temporary
name beside its target and renamed when complete, so a killed run never leaves a
half-written checkpoint under the real name. Methods add their own types with
`@register_checkpoint("name")`. The `deepspeed` type (full training state, resume) lives in
`arctic_core.engine.resume`.

Folders: periodic saves go to `<output_dir>/global_step_<N>` (or `epoch_<E>`), the
end-of-training save to `<output_dir>` itself; `output_dir` defaults to
`<run folder>/checkpoints/<type>`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from arctic_core.config import CheckpointConfig
from arctic_core.engine import distributed
from arctic_core.errors import RecipeError
from arctic_core.gather import gathered_state_dict

if TYPE_CHECKING:
    from arctic_core.trainer import Trainer

_ENGINES: dict[str, type[CheckpointEngine]] = {}
RECIPE_FILE = "arctic_recipe.yaml"


def register_checkpoint(name: str) -> Callable[[type[CheckpointEngine]], type[CheckpointEngine]]:
    def decorate(cls: type[CheckpointEngine]) -> type[CheckpointEngine]:
        existing = _ENGINES.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"checkpoint type {name!r} is registered by both {existing} and {cls}")
        cls.type = name
        _ENGINES[name] = cls
        return cls

    return decorate


def checkpoint_engine_class(name: str, index: int) -> type[CheckpointEngine]:
    import arctic_core.engine.resume  # noqa: F401  (registers "deepspeed")

    if name not in _ENGINES:
        known = ", ".join(sorted(_ENGINES))
        raise RecipeError(
            f"unknown checkpoint type {name!r}; available: {known}", path=f"checkpoint[{index}].type"
        )
    return _ENGINES[name]


PERIODIC_PREFIXES = ("global_step_", "epoch_")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    import ctypes
    import os

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _move_periodic(source: Path, target: Path) -> None:
    """Move the complete periodic checkpoints (`global_step_*`, `epoch_*`) of `source` into `target`."""
    for child in source.iterdir():
        if child.is_dir() and child.name.startswith(PERIODIC_PREFIXES) and not (target / child.name).exists():
            child.rename(target / child.name)


def _recover(target: Path, temp: Path, old: Path) -> None:
    """Undo what a run killed inside `atomic_folder` left behind, before a new save starts."""
    if not target.exists() and old.is_dir():  # killed between the two renames of the fallback path
        old.rename(target)
    if temp.is_dir() and target.is_dir():  # periodic checkpoints parked in the temporary folder
        _move_periodic(temp, target)


def apply_umask(folder: Path) -> None:
    """Give `folder` and what it holds the modes the user's umask gives new files and folders.

    Some writers create files private (safetensors writes through a 0600 temporary file);
    a checkpoint should be as readable as any other file the user makes.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Rank 0 writes into a temporary folder that replaces `target` once the block completes.

    Periodic checkpoints already inside `target` (`global_step_*`, `epoch_*`) stay in it. Where the
    filesystem can swap two folders atomically, `target` is never missing; elsewhere it is renamed
    aside for a moment, and the next save (or `_recover`) puts it back if the run died then.
    """
    temp = target.parent / f".{target.name}.incomplete"
    old = target.parent / f".{target.name}.old"
    if distributed.rank() == 0:
        _recover(target, temp, old)
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    distributed.barrier()  # every rank may write into `temp`
    yield temp
    distributed.barrier()
    if distributed.rank() == 0:
        apply_umask(temp)
        if not target.exists():
            temp.rename(target)
        elif _exchange(temp, target):  # `target` is the new checkpoint, `temp` the old one
            _move_periodic(temp, target)
            shutil.rmtree(temp)
        else:
            _move_periodic(target, temp)
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            temp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


class CheckpointEngine:
    """Saves one kind of checkpoint on the schedule its `[[checkpoint]]` entry gives."""

    type: ClassVar[str]

    def __init__(self, trainer: Trainer, config: CheckpointConfig):
        self.trainer = trainer
        self.config = config
        self.output_dir = Path(config.output_dir or Path(trainer.config.run_dir) / "checkpoints" / self.type)

    def after_step(self, step: int) -> None:
        every = self.config.save_every_n_steps
        if self.config.enabled and every and step % every == 0:
            self.save_to(self.output_dir / f"global_step_{step}")
            self.prune("global_step_")

    def after_epoch(self, epoch: int) -> None:
        every = self.config.save_every_n_epochs
        if self.config.enabled and every and (epoch + 1) % every == 0:
            self.save_to(self.output_dir / f"epoch_{epoch + 1}")
            self.prune("epoch_")

    def prune(self, prefix: str) -> None:
        """With `keep_last_n`, delete all but the newest N periodic checkpoints of this kind (rank 0)."""
        keep = self.config.keep_last_n
        if not keep or distributed.rank() != 0 or not self.output_dir.is_dir():
            return
        found = [p for p in self.output_dir.iterdir() if p.is_dir() and p.name.startswith(prefix)]
        found.sort(key=lambda p: int(p.name[len(prefix) :]) if p.name[len(prefix) :].isdigit() else -1)
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def end_of_training(self) -> None:
        if self.config.enabled and self.config.save_end_of_training:
            self.save_to(self.output_dir)

    def on_stop(self, step: int) -> Path | None:
        """The run stops on a signal after `step`: the folder saved, if any (default none; `deepspeed` saves)."""
        return None

    def save_to(self, target: Path) -> None:
        from arctic_core.engine.integrity import disk_full_reported

        target.parent.mkdir(parents=True, exist_ok=True)
        with disk_full_reported(target), atomic_folder(target) as temp:  # ENOSPC: said, temp removed
            self.save(temp)
        self.trainer.log.info("saved %s checkpoint to %s", self.type, target)

    def save(self, folder: Path) -> None:
        """Write the checkpoint into `folder` (every rank calls this; rank 0 writes)."""
        raise NotImplementedError


def end_of_turn_token_id(tokenizer: Any) -> int | None:
    """The special token that closes an assistant turn in the tokenizer's chat template, if any.

    Renders a two-turn conversation whose answer is a probe string and reads the first token
    after the probe: `<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3. None when there is no
    template or the next token is not a special token.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "ARCTICPROBEANSWER"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as exc:  # e.g. the template's own raise_exception(): no turn to read the token from
        logging.getLogger("arctic").warning(
            "the chat template rejects a user/assistant conversation (%s); the exported "
            "generation_config stops at the EOS token only, not at an end-of-turn token",
            exc,
        )
        return None
    if probe not in text:
        return None
    after = text[text.rindex(probe) + len(probe) :]
    ids = tokenizer.encode(after.lstrip(" "), add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    return ids[0] if ids and ids[0] in special else None


def stop_token_ids(model_config: Any, generation_config: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (
        getattr(generation_config, "eos_token_id", None),
        getattr(model_config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        end_of_turn_token_id(tokenizer),
    ):
        for token in source if isinstance(source, list) else [source]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


@register_checkpoint("huggingface")
class HuggingFaceCheckpoint(CheckpointEngine):
    """safetensors + config + generation config + tokenizer + the resolved recipe; `from_pretrained` loads it."""

    def save(self, folder: Path) -> None:
        trainer = self.trainer
        module: Any = trainer.engine.module if trainer.engine is not None else trainer.model
        zero3 = trainer.zero_stage == 3
        if trainer.config.model.peft_config:  # the adapter alone, maybe + merged/ (arctic_core.engine.peft)
            from arctic_core.engine.peft import save_adapter

            save_adapter(
                module,
                folder,
                zero3=zero3,
                merge=self.config.merge_adapters,
                full_state=lambda: gathered_state_dict(module, zero3),
                write_companions=self.write_companions,
            )
            return
        state = gathered_state_dict(module, zero3)
        if distributed.rank() != 0:
            return
        module.save_pretrained(folder, state_dict=state, safe_serialization=True)
        self.write_companions(folder, module)

    def write_companions(self, folder: Path, module: Any) -> None:
        """Generation config (with end-of-turn EOS ids), tokenizer and resolved recipe, beside the weights."""
        from transformers import GenerationConfig

        from arctic_core.recipe.render import render

        trainer = self.trainer
        generation = getattr(module, "generation_config", None) or GenerationConfig.from_model_config(
            module.config
        )
        eos = stop_token_ids(module.config, generation, trainer.tokenizer)
        if eos:
            generation.eos_token_id = eos if len(eos) > 1 else eos[0]
        generation.save_pretrained(folder)
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(folder)
        (folder / RECIPE_FILE).write_text(render(trainer.config, "yaml"))
