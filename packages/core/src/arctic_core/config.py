"""Recipe schema: one frozen, keyword-only attrs class per recipe table.

Key names and defaults follow ArcticTraining's so its recipes run unchanged. Every field
carries a one-line doc in its metadata (`arctic config show --docs` prints them). Checks
that need several fields live in `__attrs_post_init__` and raise `FieldError`, which the
recipe loader turns into a message naming the full key path. Nothing here touches the
disk, the network or torch: parsing a recipe has no side effects.

Methods extend the schema by subclassing `TrainerConfig` (and, where they need new keys
in a table, that table's class) and naming the subclass in their plugin.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import attrs

from arctic_core.errors import FieldError
from arctic_core.kernels.registry import MODES as KERNEL_MODES

_NOTHING: Any = attrs.NOTHING
_SOURCE_STRING = re.compile(r"^(?P<name>[^:]+?)(?::(?P<split>[A-Za-z0-9_.\-]+(?:\[[^\]]*\])?))?$")


def setting(
    default: Any = _NOTHING,
    *,
    doc: str,
    factory: Callable[[], Any] | None = None,
    check: Callable[[Any, attrs.Attribute, Any], None] | None = None,
) -> Any:
    """A recipe field: `doc` is its one-line description."""
    if factory is not None:
        return attrs.field(factory=factory, validator=check, metadata={"doc": doc})
    return attrs.field(default=default, validator=check, metadata={"doc": doc})


# --- validators: each raises FieldError naming its own field ------------------------------------


def at_least(low: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and value < low:
            raise FieldError(attribute.name, f"must be >= {low}, got {value!r}")

    return check


def greater_than(low: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and value <= low:
            raise FieldError(attribute.name, f"must be > {low}, got {value!r}")

    return check


def between(low: float, high: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise FieldError(attribute.name, f"must be between {low} and {high}, got {value!r}")

    return check


def one_of(*choices: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and value not in choices:
            hint = difflib.get_close_matches(str(value), choices, n=1)
            tip = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise FieldError(attribute.name, f"must be one of {', '.join(choices)}; got {value!r}{tip}")

    return check


DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "bfloat": "bf16",
    "torch.bfloat16": "bf16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "torch.float32": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "torch.float16": "fp16",
}


def _dtype(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in DTYPE_ALIASES:
        hint = difflib.get_close_matches(str(value), DTYPE_ALIASES, n=1)
        tip = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise FieldError(attribute.name, f"must be bf16, fp32 or fp16; got {value!r}{tip}")


def _canonical(instance: Any, name: str, value: Any) -> None:
    object.__setattr__(instance, name, value)


# --- tables -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ModelConfig:
    """[model]: which network to train and how to build it."""

    type: str = setting(
        "huggingface",
        doc="Model factory: huggingface, or liger (Liger kernels on GPUs; needs the arctic-core[liger] extra).",
        check=one_of("huggingface", "liger"),
    )
    name_or_path: str = setting(doc="Hub id or local folder of a pretrained model.")
    dtype: str = setting("bf16", doc="Training precision: bf16, fp32, or fp16 (GPUs only).", check=_dtype)
    attn_implementation: str = setting(
        "sdpa",
        doc="Attention backend: sdpa (packed samples attended one at a time), eager, flash_attention_2, flash_attention_3 or flex_attention.",
        check=one_of("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"),
    )
    disable_activation_checkpoint: bool | None = setting(
        None,
        doc="true: activation checkpointing off; false: on; unset: auto (on when the planned peak without it would not fit).",
    )
    hf_config_kwargs: dict[str, Any] = setting(
        factory=dict, doc="Overrides for the model's config; a changed shape means random init."
    )
    from_config: bool = setting(False, doc="Build from the config with random weights, not from weights.")
    peft_config: dict[str, Any] | None = setting(
        None, doc="PEFT adapter settings (peft_type = 'lora', r, ...)."
    )
    trainable_parameters: list[str] = setting(
        factory=list, doc="Glob patterns of parameter names to train; empty trains all."
    )
    frozen_parameters: list[str] = setting(factory=list, doc="Glob patterns of parameter names to freeze.")
    trust_remote_code: bool = setting(False, doc="Allow model code from the model's folder or hub repo.")
    revision: str | None = setting(None, doc="Hub revision (branch, tag or commit).")
    router_aux_loss_coef: float | None = setting(
        None,
        doc="MoE models: weight of the router's load-balancing loss in the loss; unset: the model's own, 0: off.",
        check=at_least(0.0),
    )
    moe_leaf_modules: list[str] = setting(
        factory=list, doc="MoE models: more module class names to mark as ZeRO-3 leaf modules (docs/moe.md)."
    )

    def __attrs_post_init__(self) -> None:
        _canonical(self, "dtype", DTYPE_ALIASES[self.dtype])


@attrs.frozen(kw_only=True)
class TokenizerConfig:
    """[tokenizer]: which tokenizer, and its chat template."""

    name_or_path: str | None = setting(None, doc="Hub id or local folder; defaults to the model's.")
    chat_template: str | None = setting(
        None, doc="A Jinja chat template, or the path of a file holding one; overrides the tokenizer's."
    )
    tokenize_kwargs: dict[str, Any] = setting(factory=dict, doc="Extra keyword arguments for tokenizing.")


@attrs.frozen(kw_only=True)
class SourceConfig:
    """One data source: a hub id, a local file or folder, or a table with options.

    A plain string `name[:split]` is accepted wherever a source is expected.
    """

    type: str | None = setting(
        None, doc="Loader: huggingface, jsonl, json, parquet, csv, disk; inferred when unset."
    )
    name_or_path: str = setting(doc="Hub dataset id, local file, or local folder.")
    split: str | None = setting(None, doc="Split, with an optional slice: 'train', 'train[:1000]'.")
    format: str | None = setting(
        None,
        doc="Row format: chat, sharegpt, alpaca, prompt_completion, text, preference; detected if unset.",
        check=one_of("chat", "sharegpt", "alpaca", "prompt_completion", "text", "preference"),
    )
    role_mapping: dict[str, str] = setting(factory=dict, doc="Maps this source's column names to Arctic's.")
    sample_count: int | None = setting(
        None, doc="Keep this many rows, chosen with sample_seed.", check=at_least(1)
    )
    sample_ratio: float | None = setting(
        None, doc="Keep this fraction of rows, chosen with sample_seed.", check=between(0.0, 1.0)
    )
    sample_seed: int = setting(42, doc="Seed for sample_count / sample_ratio.")
    process: bool = setting(True, doc="Tokenize this source; false for rows that hold input_ids already.")
    kwargs: dict[str, Any] = setting(factory=dict, doc="Extra keyword arguments for datasets.load_dataset.")
    split_mapping: dict[str, str] = setting(
        factory=dict, doc="Maps generic split names to this dataset's: {train = 'train_sft'}."
    )

    def __attrs_post_init__(self) -> None:
        if self.sample_count is not None and self.sample_ratio is not None:
            raise FieldError("sample_ratio", "set sample_count or sample_ratio, not both")

    @classmethod
    def from_string(cls, text: str) -> SourceConfig:
        """`name`, `name:split` or `name:split[slice]` (a local path is taken whole)."""
        match = _SOURCE_STRING.match(text)
        if match is None or "://" in text:
            return cls(name_or_path=text)
        return cls(name_or_path=match["name"], split=match["split"])


@attrs.frozen(kw_only=True)
class DataConfig:
    """[data]: sources, tokenization, masking, packing and caching."""

    type: str | None = setting(None, doc="Data factory; the method's own when unset.")
    sources: list[SourceConfig] = setting(factory=list, doc="Training data: hub ids, local paths or tables.")
    eval_sources: list[SourceConfig] = setting(factory=list, doc="Evaluation data.")
    train_eval_split: tuple[float, float] = setting(
        (1.0, 0.0), doc="Fractions of the training data kept for training and held out for eval."
    )
    max_length: int = setting(8192, doc="Longest sample (or packed row) in tokens.", check=at_least(2))
    div_length: int | None = setting(
        None,
        doc="Pad each batch's length up to a multiple of this; unset: its longest sample's, rounded up to 8.",
        check=at_least(1),
    )
    pad_to: str = setting(
        "div_length",
        doc="Pad batches to a multiple of div_length, or to max_length.",
        check=one_of("div_length", "max_length"),
    )
    group_by_length: bool = setting(
        False, doc="Batch samples of similar length together (less padding; seeded, resumable)."
    )
    mask_inputs: bool = setting(True, doc="Train only on assistant tokens (false: on every token).")
    train_on_reasoning: bool = setting(
        True, doc="Train on assistant reasoning (thinking) tokens; false masks them (docs/data.md)."
    )
    ignore_empty_think: bool = setting(
        False, doc="Mask an assistant turn's empty thinking block (<think></think>), as ArcticTraining does."
    )
    pack_samples: bool = setting(False, doc="Pack several samples into each row, kept apart in attention.")
    filter_samples: bool = setting(True, doc="Drop samples longer than max_length (false: truncate them).")
    strict: bool = setting(False, doc="Make dropped samples (too long, nothing trainable) errors.")
    num_proc: int | None = setting(
        None, doc="Tokenizing processes; default min(16, CPU count).", check=at_least(1)
    )
    dl_num_workers: int = setting(2, doc="Data loader worker processes per rank.", check=at_least(0))
    cache_dir: str | None = setting(
        None, doc="Tokenized-data cache; default $ARCTIC_CACHE_DIR/data or ~/.cache/arctic/data."
    )
    seed: int = setting(42, doc="Seed for shuffling and splitting the data.")

    def __attrs_post_init__(self) -> None:
        train, held_out = self.train_eval_split
        if train < 0 or held_out < 0 or abs(train + held_out - 1.0) > 1e-6:
            raise FieldError(
                "train_eval_split",
                f"must be two non-negative fractions that sum to 1, got {[train, held_out]}",
            )


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """[optimizer]: AdamW and its settings."""

    __recipe_aliases__: ClassVar[dict[str, str]] = {"learning_rate": "lr"}

    type: str = setting(
        "adamw",
        doc="adamw (torch, no compiled op), fused_adam (GPUs) or cpu_adam (DeepSpeed).",
        check=one_of("adamw", "fused_adam", "cpu_adam"),
    )
    lr: float = setting(5e-4, doc="Peak learning rate (alias: learning_rate).", check=greater_than(0.0))
    weight_decay: float = setting(
        0.1, doc="Decoupled weight decay; biases and norms get none.", check=at_least(0.0)
    )
    betas: tuple[float, float] = setting((0.9, 0.999), doc="Adam betas.")
    eps: float = setting(1e-8, doc="Adam epsilon.", check=greater_than(0.0))

    def __attrs_post_init__(self) -> None:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise FieldError("betas", f"each beta must be in [0, 1), got {list(self.betas)}")


SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "wsd")


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """[scheduler]: learning-rate schedule over optimizer steps."""

    name: str = setting(
        "linear",
        doc="linear, cosine, constant (no warmup), constant_with_warmup, or wsd (warmup-stable-decay).",
        check=one_of(*SCHEDULES),
    )
    warmup_ratio: float = setting(0.1, doc="Fraction of all steps spent warming up.", check=between(0.0, 1.0))
    num_warmup_steps: int | None = setting(
        None, doc="Warmup steps; overrides warmup_ratio.", check=at_least(0)
    )
    num_decay_steps: int | None = setting(None, doc="wsd: steps of the final decay.", check=at_least(0))
    decay_ratio: float = setting(
        0.1, doc="wsd: fraction of all steps for the decay.", check=between(0.0, 1.0)
    )
    min_lr_ratio: float = setting(
        0.0, doc="Lowest learning rate, as a fraction of the peak.", check=between(0.0, 1.0)
    )


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    """[[checkpoint]]: one checkpoint engine and when it saves."""

    type: str = setting(doc="huggingface (export) or deepspeed (full training state), or a method's own.")
    output_dir: str | None = setting(None, doc="Where to write; default <run folder>/checkpoints/<type>.")
    enabled: bool = setting(True, doc="Write this checkpoint at all.")
    auto_resume: bool = setting(False, doc="Continue from the newest complete checkpoint (deepspeed only).")
    save_every_n_steps: int = setting(0, doc="Save every N optimizer steps (0: never).", check=at_least(0))
    save_every_n_epochs: int = setting(0, doc="Save every N epochs (0: never).", check=at_least(0))
    save_end_of_training: bool = setting(False, doc="Save once training ends.")
    keep_last_n: int = setting(0, doc="Keep only the newest N checkpoints (0: keep all).", check=at_least(0))
    merge_adapters: bool = setting(False, doc="huggingface with PEFT: also export the merged model.")
    allow_recipe_changes: bool = setting(
        False,
        doc="auto_resume: continue even if the recipe changed keys that decide data order or optimizer state.",
    )

    def __attrs_post_init__(self) -> None:
        if self.auto_resume and self.type != "deepspeed":
            raise FieldError(
                "auto_resume", f"only a deepspeed checkpoint can resume; this one is {self.type!r}"
            )


Ranks = list[int] | str
"""A list of ranks, or "*" for every rank."""


def _ranks(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, str) and value != "*":
        raise FieldError(attribute.name, f"must be a list of ranks or '*', got {value!r}")


@attrs.frozen(kw_only=True)
class LoggerConfig:
    """[logger]: run folder, log level, optional trackers."""

    output_dir: str | None = setting(None, doc="Run folder; default runs/<recipe file stem>.")
    level: str = setting("INFO", doc="Log level.", check=one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    print_output_ranks: Ranks = setting(
        factory=lambda: [0], doc="Ranks that print to the console: a list, or '*' for all.", check=_ranks
    )
    tensorboard: bool = setting(False, doc="Also write TensorBoard event files (needs tensorboard).")
    progress_bar: bool = setting(True, doc="Show a progress bar on rank 0.")

    def prints(self, rank: int) -> bool:
        """Whether `rank` logs to the console."""
        return self.print_output_ranks == "*" or rank in self.print_output_ranks


@attrs.frozen(kw_only=True)
class WandbConfig:
    """[wandb]: Weights & Biases tracking, off by default."""

    enable: bool = setting(False, doc="Log to Weights & Biases (needs wandb).")
    project: str | None = setting("arctic", doc="Project name; null: wandb's default.")
    entity: str | None = setting(None, doc="Team or user.")
    name: str | None = setting(None, doc="Run name; default the run folder's name.")


@attrs.frozen(kw_only=True)
class GenerationEvalConfig:
    """[generation_eval]: greedy-decoding accuracy on held-out prompts, before and after training."""

    path: str | None = setting(
        None, doc="Chat JSONL whose last message is the reference answer; unset turns this off."
    )
    max_new_tokens: int = setting(32, doc="Longest answer decoded.", check=at_least(1))
    max_samples: int = setting(0, doc="Score only the first N rows (0: all).", check=at_least(0))
    batch_size: int = setting(32, doc="Prompts decoded together per rank.", check=at_least(1))
    before_training: bool = setting(True, doc="Score the model before the first step.")
    after_training: bool = setting(True, doc="Score the model after the last step.")


@attrs.frozen(kw_only=True)
class EndpointConfig:
    """[generate.endpoint]: an OpenAI-compatible chat completions server (vLLM, TGI, llama.cpp, OpenAI, Azure)."""

    base_url: str = setting("https://api.openai.com/v1", doc="The API's base URL (Azure: the resource URL).")
    model: str = setting(
        "", doc="Model name sent with each request; default the recipe's model.name_or_path."
    )
    api_key_env: str = setting(
        "OPENAI_API_KEY", doc="Environment variable holding the API key (the key is never written anywhere)."
    )
    api_version: str = setting("", doc="Azure OpenAI API version; set, the Azure client is used.")
    concurrency: int = setting(8, doc="Requests in flight at once, at most.", check=at_least(1))
    max_retries: int = setting(6, doc="Retries of a request after 429, 5xx, timeouts.", check=at_least(0))
    backoff: float = setting(
        1.0, doc="First retry wait in seconds, doubled per retry (Retry-After wins).", check=at_least(0.0)
    )
    timeout: float = setting(
        120.0, doc="Seconds before a request is abandoned and retried.", check=greater_than(0)
    )
    input_price: float = setting(0.0, doc="Cost per million prompt tokens (accounting).", check=at_least(0.0))
    output_price: float = setting(0.0, doc="Cost per million completion tokens.", check=at_least(0.0))


@attrs.frozen(kw_only=True)
class JudgeConfig:
    """[clean.judge]: an LLM scores each row with a rubric; rows under the threshold are dropped."""

    rubric: str = setting(
        "", doc="Jinja template of the judge prompt over `prompt` and `answer`; empty turns the judge off."
    )
    threshold: float = setting(5.0, doc="Keep rows scored at least this (the first number in the reply).")
    model: str = setting("", doc="Judge model for local backends; default the recipe's model.")
    backend: str = setting(
        "auto",
        doc="auto, hf, vllm or openai (as generate.backend).",
        check=one_of("auto", "hf", "vllm", "openai"),
    )
    max_tokens: int = setting(8, doc="Tokens the judge may write.", check=at_least(1))
    endpoint: EndpointConfig = setting(factory=EndpointConfig, doc="[clean.judge.endpoint] for openai.")


@attrs.frozen(kw_only=True)
class GenerateConfig:
    """[generate]: prompts from sources, answered by a local model or an HTTP endpoint (`arctic data generate`)."""

    sources: list[SourceConfig] = setting(factory=list, doc="Datasets whose rows give the prompts.")
    output_dir: str = setting("synthetic-data", doc="Folder of the generated dataset (jsonl shards).")
    prompts: str = setting(
        "turns",
        doc="turns: one prompt per assistant turn (the conversation before it); template: prompt_template "
        "over the row's columns; chunks: the templated conversation cut into gen_prompt_length tokens.",
        check=one_of("turns", "template", "chunks"),
    )
    prompt_template: str = setting("", doc="Jinja template of the user prompt over a row's columns.")
    system_prompt: str = setting("", doc="System message put before templated prompts.")
    gen_prompt_length: int = setting(64, doc="Tokens per prompt chunk (prompts = chunks).", check=at_least(1))
    max_tokens: int = setting(256, doc="Tokens generated per answer.", check=at_least(1))
    gen_temp: float = setting(1.0, doc="Sampling temperature; 0: greedy.", check=at_least(0.0))
    top_k: int = setting(
        0, doc="Sample from the k most likely tokens (0: all; not sent to endpoints).", check=at_least(0)
    )
    top_p: float = setting(1.0, doc="Nucleus sampling mass.", check=at_least(0.0))
    ignore_eos: bool = setting(False, doc="Keep generating past end-of-sequence tokens (local backends).")
    n: int = setting(1, doc="Answers per prompt.", check=at_least(1))
    batch_size: int = setting(64, doc="Prompts per generate call (local backends).", check=at_least(1))
    shard_size: int = setting(512, doc="Prompts per output shard (the unit of resuming).", check=at_least(1))
    max_prompts: int = setting(0, doc="Use at most this many prompts (0: all).", check=at_least(0))
    backend: str = setting(
        "auto",
        doc="hf (transformers generate), vllm, openai (generate.endpoint), or auto (vLLM when installed and on CUDA, else hf).",
        check=one_of("auto", "hf", "vllm", "openai"),
    )
    output: str = setting(
        "messages",
        doc="messages (chat rows), preference (prompt/chosen/rejected from n >= 2 ranked answers) or tokens "
        "(input_ids + labels, local backends).",
        check=one_of("messages", "preference", "tokens"),
    )
    rank_by: str = setting(
        "judge", doc="Ranks answers for preference output: judge ([clean.judge]) or a function in `code:`."
    )
    endpoint: EndpointConfig = setting(
        factory=EndpointConfig, doc="[generate.endpoint] for backend = openai."
    )

    def __attrs_post_init__(self) -> None:
        if self.prompts == "template" and not self.prompt_template:
            raise FieldError("prompt_template", "prompts = 'template' needs a prompt_template")
        if self.output == "preference" and self.n < 2:
            raise FieldError("n", f"output = 'preference' needs n >= 2 answers per prompt, got {self.n}")
        if self.prompts == "chunks" and self.output != "tokens":
            raise FieldError("output", "chunks prompts are token pieces: they give output = 'tokens' only")
        if self.backend == "openai" and (self.output == "tokens" or self.prompts == "chunks"):
            raise FieldError("backend", "an HTTP endpoint answers chat prompts in text: not chunks or tokens")


@attrs.frozen(kw_only=True)
class CleanConfig:
    """[clean]: deduplicate, filter and decontaminate a dataset (`arctic data clean`)."""

    sources: list[SourceConfig] = setting(factory=list, doc="Data to clean; default generate.output_dir.")
    output_dir: str = setting("clean-data", doc="Folder of the cleaned rows (data.jsonl) and report.json.")
    exact_dedup: bool = setting(True, doc="Drop rows whose text repeats an earlier row's exactly.")
    near_dedup: float = setting(
        0.8,
        doc="Drop rows whose estimated Jaccard similarity to a kept row is at least this (0: off).",
        check=between(0.0, 1.0),
    )
    shingle_words: int = setting(3, doc="Words per shingle for near-duplicates.", check=at_least(1))
    num_perm: int = setting(128, doc="MinHash permutations.", check=at_least(16))
    min_words: int = setting(0, doc="Drop rows whose answers have fewer words (0: off).", check=at_least(0))
    max_words: int = setting(0, doc="Drop rows whose answers have more words (0: off).", check=at_least(0))
    languages: list[str] = setting(
        factory=list, doc="Keep rows detected as one of these (en, de, fr, es, it, pt, nl); empty: off."
    )
    eval_sources: list[SourceConfig] = setting(factory=list, doc="Eval sets to decontaminate against.")
    ngram: int = setting(
        13, doc="Words per n-gram shared with an eval row that marks contamination.", check=at_least(1)
    )
    filters: list[str] = setting(
        factory=list, doc="Functions in the recipe's `code:` file: row -> bool (keep), applied in order."
    )
    judge: JudgeConfig = setting(factory=JudgeConfig, doc="[clean.judge] table.")
    examples: int = setting(3, doc="Removed rows shown per step in the report.", check=at_least(0))


@attrs.frozen(kw_only=True)
class TrainerConfig:
    """A whole recipe: the training run and every table in it."""

    type: str = setting("sft", doc="Method or registered trainer name.")
    code: str | None = setting(
        None,
        doc="Python file defining custom trainers, beside the recipe or in the working directory; "
        "default train.py there if present.",
    )
    micro_batch_size: int = setting(
        1, doc="Samples (or packed rows) per rank per micro-step.", check=at_least(1)
    )
    gradient_accumulation_steps: int = setting(1, doc="Micro-steps per optimizer step.", check=at_least(1))
    epochs: int = setting(1, doc="Passes over the training data.", check=at_least(1))
    train_iters: int = setting(
        0, doc="Optimizer steps to run; 0: as many as `epochs` gives.", check=at_least(0)
    )
    exit_iteration: int = setting(0, doc="Stop after this optimizer step (0: never).", check=at_least(0))
    exit_iteration_this_run: int = setting(
        0,
        doc="Stop after this many optimizer steps of this run, resumed or not (0: never).",
        check=at_least(0),
    )
    min_iterations: int = setting(
        0,
        doc="Repeat the training data (whole epochs) until it gives at least this many optimizer steps.",
        check=at_least(0),
    )
    seed: int = setting(42, doc="Seed for model init, dropout and data order.")
    kernels: str = setting(
        "auto",
        doc="Custom kernels, every method: auto (Triton on CUDA where validated on a GPU; none is yet), "
        "torch (PyTorch references) or triton (CUDA, or TRITON_INTERPRET=1).",
        check=one_of(*KERNEL_MODES),
    )
    eval_interval: int = setting(0, doc="Evaluate every N optimizer steps (0: never).", check=at_least(0))
    train_log_metrics_path: str | None = setting(
        None, doc="Per-step metrics; default <run folder>/metrics.jsonl."
    )
    model: ModelConfig = setting(doc="[model] table.")
    tokenizer: TokenizerConfig = setting(factory=TokenizerConfig, doc="[tokenizer] table.")
    data: DataConfig = setting(factory=DataConfig, doc="[data] table.")
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig, doc="[optimizer] table.")
    scheduler: SchedulerConfig = setting(factory=SchedulerConfig, doc="[scheduler] table.")
    checkpoint: list[CheckpointConfig] = setting(factory=list, doc="[[checkpoint]] entries.")
    logger: LoggerConfig = setting(factory=LoggerConfig, doc="[logger] table.")
    wandb: WandbConfig = setting(factory=WandbConfig, doc="[wandb] table.")
    generation_eval: GenerationEvalConfig = setting(
        factory=GenerationEvalConfig, doc="[generation_eval] table."
    )
    generate: GenerateConfig = setting(
        factory=GenerateConfig, doc="[generate] table (`arctic data generate`)."
    )
    clean: CleanConfig = setting(factory=CleanConfig, doc="[clean] table (`arctic data clean`).")
    deepspeed: dict[str, Any] = setting(factory=dict, doc="DeepSpeed config, merged over computed defaults.")

    def __attrs_post_init__(self) -> None:
        resuming = [c for c in self.checkpoint if c.auto_resume]
        if len(resuming) > 1:
            raise FieldError("checkpoint", "at most one [[checkpoint]] entry may set auto_resume = true")
        if self.eval_interval and not (self.data.eval_sources or self.data.train_eval_split[1] > 0):
            raise FieldError(
                "eval_interval",
                "needs evaluation data: set data.eval_sources or a held-out data.train_eval_split",
            )

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """The method's checks of the recipe against its local model's `config.json` (a dict, with
        `model.hf_config_kwargs` applied and its path in `_path`): yield (key path, message).

        Run by `arctic config check` and before every run builds anything; no weights, no torch
        (`arctic_core.recipe.shapes`). Default: none.
        """
        return iter(())

    @property
    def run_dir(self) -> str:
        """The run folder (filled in by the recipe loader when unset)."""
        return self.logger.output_dir or "runs/recipe"

    @property
    def metrics_path(self) -> str:
        return self.train_log_metrics_path or f"{self.run_dir}/metrics.jsonl"
