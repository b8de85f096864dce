"""Checks of a recipe that need no weights and no data rows.

`arctic config check` runs them after the recipe parses, and every run runs them before it
builds anything (`arctic_core.engine.setup.distributed`), so a recipe that cannot train fails in a
second, not minutes later after data and model are built. Each check reports every problem
it finds; `preflight` gathers them into one `RecipeError` (exit 2) naming each key path.

The checks:

- precision against the hardware: fp16 without CUDA is refused; bf16 on a CPU without native
  bf16 (x86 without AVX512-BF16/AMX) is a warning with the slowdown measured on this machine
  and the fix (`model.dtype = "fp32"`). Arctic does not switch to fp32 by itself: the
  precision changes the numbers a run produces, and a recipe written for GPUs usually wants
  bf16 there (docs/architecture.md).
- kernels: `kernels = "triton"` needs triton and a CUDA device (or `TRITON_INTERPRET=1`).
- PEFT: `model.peft_config` builds (peft installed, a known `peft_type`, valid arguments).
- DeepSpeed: the `[deepspeed]` table against the recipe (batch sizes, precision tables,
  ZeRO stage, optimizer offload, optimizer/scheduler sections).
- checkpoint types and data source types are known to the installed packages.
- local input paths exist: model, tokenizer, data sources, generation-eval file. A value that
  reads as a hub id (`org/name`) is not checked (that needs the network).
- the recipe against the local model's `config.json` (`arctic_core.recipe.shapes`: heads and
  `sequence_parallel_size`, swiftkv's layers, the speculator's widths, `data.max_length`).
- the method's own checks (`Trainer.check_config`), and the features' (`FeatureHooks.check`,
  already run when the recipe loads).

None of them imports torch on a machine without a GPU driver (unless the recipe asks for PEFT
or bf16 on a CPU, whose checks need it), and the method's trainer class (which imports torch) is
imported for its `check_config` only once every other check has passed: a recipe whose problems
are found without torch is answered in well under two seconds.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from arctic_core.errors import RecipeError

if TYPE_CHECKING:
    from arctic_core.config import TrainerConfig

Problem = tuple[str | None, str]  # (key path, message)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _problem(exc: RecipeError) -> Problem:
    return exc.path, exc.message


def looks_local(value: str) -> bool:
    """Whether a model/data reference is meant as a local path rather than a hub id."""
    if "://" in value:
        return False
    if value.startswith(("/", "./", "../", "~")):
        return True
    if _HUB_ID.match(value) or "/" not in value:  # 'org/name' or a bare name: a hub id, unless a file
        return Path(value).suffix.lower() in {".jsonl", ".json", ".parquet", ".csv", ".arrow"}
    return True  # two or more slashes: a hub id has exactly one


# --- precision ------------------------------------------------------------------------------------


def no_gpu_driver() -> bool:
    """True when this Linux machine certainly has no GPU torch could use: no NVIDIA driver, no ROCm
    or WSL GPU device. Answers a CPU machine's precision check without importing torch."""
    if platform.system() != "Linux":
        return False
    dev = Path("/dev")
    nvidia = Path("/proc/driver/nvidia").exists() or any(dev.glob("nvidia[0-9]*"))
    return not (nvidia or (dev / "kfd").exists() or (dev / "dxg").exists())


def has_cuda() -> bool:
    if os.environ.get("DS_ACCELERATOR", "").lower() == "cpu" or no_gpu_driver():
        return False
    import torch

    return bool(torch.cuda.is_available())


def cpu_has_native_bf16() -> bool | None:
    """True/False from the CPU's flags (Linux), None when they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_slowdown(width: int = 256, rows: int = 128, vocab: int = 2048, repeats: int = 2) -> float:
    """How many times slower a small model's training step is in bf16 than in fp32 on this CPU.

    The probe (embedding, LayerNorm, MLP, output layer, cross-entropy, AdamW; about 1.5M
    parameters) takes a fraction of a second in fp32.
    """
    import torch

    def seconds(dtype: torch.dtype) -> float:
        generator = torch.Generator().manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Embedding(vocab, width),
            torch.nn.LayerNorm(width),
            torch.nn.Linear(width, 4 * width),
            torch.nn.GELU(),
            torch.nn.Linear(4 * width, width),
            torch.nn.Linear(width, vocab),
        ).to(dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, vocab, (rows,), generator=generator)
        targets = torch.randint(0, vocab, (rows,), generator=generator)

        def step() -> None:
            torch.nn.functional.cross_entropy(model(tokens).float(), targets).backward()
            optimizer.step()
            optimizer.zero_grad()

        step()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.bfloat16) / max(seconds(torch.float32), 1e-9)


def check_precision(config: TrainerConfig, warn: Callable[[str], None]) -> Iterator[Problem]:
    dtype = config.model.dtype
    if dtype == "fp32":
        return
    if has_cuda():
        import torch

        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            yield "model.dtype", "this GPU has no bf16; use fp16 or fp32"
        return
    if dtype == "fp16":
        yield "model.dtype", "fp16 needs a CUDA GPU; use fp32 (or bf16) on CPU"
    elif dtype == "bf16" and cpu_has_native_bf16() is not True:
        warn(
            f"model.dtype is bf16 but this CPU has no native bf16 (no AVX512-BF16/AMX): a small model's "
            f"training step measured {bf16_slowdown():.1f}x slower than in fp32 here. For a CPU run set "
            'model.dtype = "fp32" (--set model.dtype=fp32).'
        )


# --- the other checks -----------------------------------------------------------------------------


def check_kernels(config: TrainerConfig) -> Iterator[Problem]:
    """`kernels = "triton"` where Triton cannot run: refused now, not at the first step."""
    from arctic_core.kernels.registry import KEY, triton_installed, triton_problem

    if config.kernels == "triton":
        problem = triton_problem(on_cuda=triton_installed() and has_cuda())
        if problem is not None:
            yield KEY, problem


def check_peft(config: TrainerConfig) -> Iterator[Problem]:
    if not config.model.peft_config and not any(c.merge_adapters for c in config.checkpoint):
        return
    from arctic_core.engine.peft import check_recipe

    try:
        check_recipe(config)
    except RecipeError as exc:
        yield _problem(exc)


def check_deepspeed(config: TrainerConfig, world_size: int | None) -> Iterator[Problem]:
    from arctic_core.engine.deepspeed_config import build_deepspeed_config

    per_rank = config.micro_batch_size * config.gradient_accumulation_steps
    wanted = config.deepspeed.get("train_batch_size")
    if world_size is None:  # `config check`: the launcher decides the ranks later
        if isinstance(wanted, int) and wanted % per_rank:
            yield (
                "deepspeed.train_batch_size",
                f"is {wanted}, not a multiple of micro_batch_size x gradient_accumulation_steps = {per_rank}; "
                "set only micro_batch_size and gradient_accumulation_steps",
            )
            return
        world_size = wanted // per_rank if isinstance(wanted, int) and wanted > 0 else 1
    try:
        build_deepspeed_config(config, world_size)
    except RecipeError as exc:
        yield _problem(exc)


CORE_CHECKPOINT_TYPES = ("huggingface", "deepspeed")
"""Core's checkpoint types: known without importing their engines (which import torch)."""


def check_checkpoints(config: TrainerConfig) -> Iterator[Problem]:
    """Each `[[checkpoint]]` type is registered; a method's types are registered by its modules, so
    this runs once the trainer class is imported."""
    if all(entry.type in CORE_CHECKPOINT_TYPES for entry in config.checkpoint):
        return
    from arctic_core.engine.checkpoint import checkpoint_engine_class

    for i, entry in enumerate(config.checkpoint):
        try:
            checkpoint_engine_class(entry.type, i)
        except RecipeError as exc:
            yield _problem(exc)


def _missing(value: str | None) -> bool:
    return bool(value) and looks_local(value) and not Path(value).expanduser().exists()  # type: ignore[arg-type]


def check_inputs(config: TrainerConfig) -> Iterator[Problem]:
    from arctic_core.data.sources import loader_of

    model = config.model.name_or_path
    if _missing(model):
        yield "model.name_or_path", f"{model} does not exist (a hub id reads 'org/name')"
    tokenizer = config.tokenizer.name_or_path
    if _missing(tokenizer):
        yield "tokenizer.name_or_path", f"{tokenizer} does not exist"
    for table in ("sources", "eval_sources"):
        for i, source in enumerate(getattr(config.data, table)):
            path = f"data.{table}[{i}]"
            if _missing(source.name_or_path):
                yield path, f"{source.name_or_path} does not exist"
                continue
            try:
                loader_of(source)
            except RecipeError as exc:
                yield path + (f".{exc.path}" if exc.path else ""), exc.message
    evaluation = getattr(config, "generation_eval", None)
    if evaluation is not None and evaluation.path and not Path(evaluation.path).expanduser().exists():
        yield "generation_eval.path", f"{evaluation.path} does not exist"


def check_unread_keys(config: TrainerConfig) -> Iterator[Problem]:
    """Keys that exist for ArcticTraining's recipes but that Arctic cannot honour: refused, not ignored."""
    from arctic_core import plugins

    if config.tokenizer.tokenize_kwargs:
        yield (
            "tokenizer.tokenize_kwargs",
            "Arctic tokenizes through the chat template with fixed settings (no special tokens added, "
            "no truncation; data.max_length filters); remove this key",
        )
    from arctic_core.config import DataConfig

    factory = config.data.type  # a method with its own [data] class (embed) checks its own values
    own = (
        attrs.fields_dict(type(config.data))["type"].metadata
        == attrs.fields_dict(DataConfig)["type"].metadata
    )
    known = {
        config.type,
        *plugins.method_names(),
        *plugins.ARCTIC_METHODS,
    }  # ArcticTraining names its factory
    if own and factory is not None and factory not in known:
        yield (
            "data.type",
            f"{factory!r} is not a method; Arctic reads the data as `type` ({config.type!r}) does",
        )


def preflight(
    config: TrainerConfig,
    *,
    trainer: type | None = None,
    load_trainer: Callable[[], type] | None = None,
    world_size: int | None = None,
    source: str | None = None,
    warn: Callable[[str], None] = print,
) -> None:
    """Run every check; raise one RecipeError listing all problems; `warn` gets the warnings.

    `world_size` is the run's number of ranks (None in `config check`, where the launcher
    has not chosen it yet); `trainer` is the method's trainer class (its `check_config` runs),
    or `load_trainer` imports it, once every other check has passed (it imports torch).
    """
    from arctic_core.recipe.shapes import check_model_shape

    problems: list[Problem] = []
    problems.extend(check_precision(config, warn))
    for check in (check_kernels, check_peft, check_inputs, check_unread_keys):
        problems.extend(check(config))
    problems.extend(check_deepspeed(config, world_size))
    problems.extend(check_model_shape(config, warn))
    custom_checkpoints = any(entry.type not in CORE_CHECKPOINT_TYPES for entry in config.checkpoint)
    if trainer is None and load_trainer is not None and (custom_checkpoints or not problems):
        trainer = load_trainer()  # registers the method's checkpoint types
    problems.extend(check_checkpoints(config))
    hook: Any = getattr(trainer, "check_config", None)
    if hook is not None:
        problems.extend(hook(config))
    if problems:
        raise RecipeError.from_problems(problems, source=source)
