"""Recipes of the `speculator` method (and its ArcticTraining aliases).

The speculator's shape goes in `[model]`, beside the base model it drafts for, as in
ArcticTraining. Keys carry the names of the exported config that vLLM and ArcticInference read
(`n_predict`, `inner_dim`, `proj_dim`, `emb_dim`, `tie_weights`, `scale_input`, `method`,
`tie_lstm_embs`); ArcticTraining's recipe spellings are accepted for the same keys
(`n_speculator_heads`, `speculator_width`, `speculator_tie_weights`, `speculator_scale_input`), and
its recipe types `arctic-lstm-speculator` (default `method = "sum_rnn"`, as there) and `spec-decode`
(the MLP speculator) are aliases of the method. `[generate]` sets up data generation (`arctic
speculator generate`) and `[evaluate]` the acceptance and speculative-decoding evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from arctic_core.config import GenerateConfig as CoreGenerateConfig
from arctic_core.config import ModelConfig, SourceConfig, TrainerConfig, at_least, one_of, setting
from arctic_core.errors import FieldError

METHODS = ("mlp", "sum_rnn", "sum_lstm")


def _widths(_: object, attribute: attrs.Attribute, value: Any) -> None:
    """A width: an integer, or integers joined by '.' (ArcticTraining accepts both)."""
    from arctic_speculator.modeling import parse_dims

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FieldError(attribute.name, f"expected an integer or a string like '4096.4096', got {value!r}")
    try:
        parse_dims(value, 1)
    except ValueError as exc:
        raise FieldError(attribute.name, str(exc)) from None


@attrs.frozen(kw_only=True)
class SpeculatorModelConfig(ModelConfig):
    """[model] for a speculator: the frozen base model (`name_or_path`...) and the speculator's shape."""

    __recipe_aliases__ = {
        "n_speculator_heads": "n_predict",
        "speculator_width": "inner_dim",
        "speculator_tie_weights": "tie_weights",
        "speculator_scale_input": "scale_input",
    }

    method: str = setting(
        "mlp",
        doc="Speculator: mlp (fms-extras MLP speculator), sum_rnn or sum_lstm (ArcticTraining's LSTM speculator).",
        check=one_of(*METHODS),
    )
    n_predict: int = setting(
        3,
        doc="Speculator heads: tokens drafted after the base model's next one (alias: n_speculator_heads).",
        check=at_least(1),
    )
    inner_dim: Any = setting(
        0,
        doc="Width of the speculator's state, multi-stage as '4096.4096' for sum_rnn (alias: speculator_width); 0: the base hidden size.",
        check=_widths,
    )
    proj_dim: Any = setting(
        0,
        doc="sum_rnn/sum_lstm: width of the state projections ('4096' or '4096.4096'); 0: inner_dim.",
        check=_widths,
    )
    emb_dim: Any = setting(
        0,
        doc="sum_rnn/sum_lstm: width of the token embeddings; mlp: the base hidden size read (must equal it); 0: derived.",
        check=_widths,
    )
    tie_weights: bool = setting(
        False,
        doc="Share embedding, norm and output layer over all heads, and proj over heads >= 1 (alias: speculator_tie_weights).",
    )
    scale_input: bool = setting(
        False,
        doc="Normalise the base hidden state (norm without parameters) and divide by sqrt(2) (alias: speculator_scale_input).",
    )
    tie_lstm_embs: bool = setting(False, doc="sum_lstm: one embedding for all four gates.")

    def __attrs_post_init__(self) -> None:
        super_post = getattr(super(), "__attrs_post_init__", None)
        if super_post is not None:
            super_post()
        if self.tie_weights and self.n_predict < 2:
            raise FieldError("tie_weights", "needs n_predict >= 2")
        for key in ("inner_dim", "proj_dim", "emb_dim"):  # one spelling: "4096", "4096.4096"
            object.__setattr__(self, key, str(getattr(self, key)))
        if self.method == "mlp":
            for key in ("inner_dim", "emb_dim"):
                if "." in getattr(self, key):
                    raise FieldError(key, "multi-stage widths are for method sum_rnn, not mlp")
        if self.method != "mlp":
            self.check_lstm_widths()
        if self.tie_lstm_embs and self.method != "sum_lstm":
            raise FieldError("tie_lstm_embs", "applies to method sum_lstm only")

    def check_lstm_widths(self) -> None:
        """The LSTM speculator's widths fit together; with inner_dim 0 (the base's hidden size, unknown
        here) only the options are checked, and the trainer checks the widths once the base is loaded."""
        from arctic_speculator.modeling import check_lstm_shape, parse_dims

        inner = parse_dims(self.inner_dim, 0)
        if 0 in inner:
            inner = [1]
            proj, emb = [1], [1]
        else:
            proj = parse_dims(self.proj_dim, inner[0])
            emb = parse_dims(self.emb_dim, proj[-1])
        if self.method == "sum_lstm" and (
            "." in self.proj_dim or "." in self.emb_dim or "." in self.inner_dim
        ):
            raise FieldError(
                "method", "sum_lstm takes single-stage widths (multi-stage widths are for sum_rnn)"
            )
        try:
            check_lstm_shape(self.method, inner, proj, emb, self.tie_weights, self.n_predict)
        except ValueError as exc:
            key = "tie_weights" if "tie" in str(exc) else "method" if "sum_lstm" in str(exc) else "proj_dim"
            raise FieldError(key, str(exc)) from None

    def speculator_settings(self) -> dict[str, object]:
        """The keyword arguments of `arctic_speculator.modeling.build_speculator`."""
        settings: dict[str, object] = {
            "method": self.method,
            "n_predict": self.n_predict,
            "inner_dim": self.inner_dim,
            "tie_weights": self.tie_weights,
            "scale_input": self.scale_input,
        }
        if self.method != "mlp":
            settings.update(proj_dim=self.proj_dim, emb_dim=self.emb_dim, tie_lstm_embs=self.tie_lstm_embs)
        return settings


@attrs.frozen(kw_only=True)
class GenerateConfig(CoreGenerateConfig):
    """[generate]: the base model answers chat prompts; its answers (tokens) become the training data.

    Core's `[generate]` table (`arctic data generate`) with ArcticTraining's defaults for speculators.
    """

    output_dir: str = setting("speculator-data", doc="Folder of the generated dataset (jsonl shards).")
    prompts: str = setting(
        "chunks",
        doc="chunks: the templated conversation cut into gen_prompt_length-token prompts (ArcticTraining); turns: one prompt per assistant turn.",
        check=one_of("chunks", "turns"),
    )
    top_k: int = setting(10, doc="Sample from the k most likely tokens (0: all).", check=at_least(0))
    ignore_eos: bool = setting(True, doc="Keep generating past end-of-sequence tokens (ArcticTraining).")
    backend: str = setting(
        "auto",
        doc="hf (transformers generate), vllm, or auto (vLLM when installed and on CUDA).",
        check=one_of("auto", "hf", "vllm"),
    )
    output: str = setting(
        "tokens", doc="tokens: input_ids + labels (the prompt masked).", check=one_of("tokens")
    )


@attrs.frozen(kw_only=True)
class EvaluateConfig:
    """[evaluate]: per-head acceptance, tau and a real greedy speculative-decoding loop on held-out prompts."""

    sources: list[SourceConfig] = setting(
        factory=list, doc="Held-out chat data (default: data.eval_sources)."
    )
    speculator_path: str = setting(
        "",
        doc="Exported speculator folder; default: the run's `speculator` checkpoint (<run folder>/checkpoints/speculator).",
    )
    max_prompts: int = setting(
        16, doc="Prompts evaluated (one per assistant turn, in order).", check=at_least(1)
    )
    max_new_tokens: int = setting(64, doc="Tokens decoded per prompt.", check=at_least(1))
    output: str = setting("", doc="JSON results file; default <run folder>/speculator_eval.json.")


@attrs.frozen(kw_only=True)
class SpeculatorConfig(TrainerConfig):
    """A speculator recipe: the base model frozen, only the speculator trains."""

    type: str = setting("speculator", doc="Method or registered trainer name.")
    model: SpeculatorModelConfig = setting(doc="[model] table.")
    loss_chunk_size: int = setting(
        4096,
        doc="Rows per chunk of a head's output layer in the loss (bounds the logits' memory).",
        check=at_least(1),
    )
    generate: GenerateConfig = setting(factory=GenerateConfig, doc="[generate] table.")
    evaluate: EvaluateConfig = setting(factory=EvaluateConfig, doc="[evaluate] table.")

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """The speculator's widths against its base model (`check_base_shape`)."""
        return check_base_shape(self.model, shape)


def check_base_shape(
    model: SpeculatorModelConfig, shape: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    """The speculator's widths against the base model's hidden size (from its local config.json)."""
    from arctic_speculator.modeling import check_lstm_shape, parse_dims

    hidden = shape.get("hidden_size")
    if not isinstance(hidden, int):
        return
    where = f"the base model's hidden size is {hidden} ({shape['_path']})"
    if model.method == "mlp":
        if int(model.emb_dim) not in (0, hidden):
            yield "model.emb_dim", f"is {model.emb_dim}, but {where}; 0 takes it"
        return
    inner = parse_dims(model.inner_dim, hidden)
    proj = parse_dims(model.proj_dim, inner[0])
    emb = parse_dims(model.emb_dim, proj[-1])
    try:
        check_lstm_shape(model.method, inner, proj, emb, model.tie_weights, model.n_predict)
    except ValueError as exc:
        yield "model.inner_dim", f"{exc} (inner_dim 0 takes the base's hidden size: {where})"


@attrs.frozen(kw_only=True)
class ArcticLSTMSpeculatorModelConfig(SpeculatorModelConfig):
    """[model] of ArcticTraining's `arctic-lstm-speculator` recipes: method sum_rnn by default, as there."""

    method: str = setting("sum_rnn", doc="Speculator: mlp, sum_rnn or sum_lstm.", check=one_of(*METHODS))


@attrs.frozen(kw_only=True)
class ArcticLSTMSpeculatorConfig(SpeculatorConfig):
    """ArcticTraining's `type: arctic-lstm-speculator` recipe (an alias of `speculator`)."""

    type: str = setting("arctic-lstm-speculator", doc="Method or registered trainer name.")
    model: ArcticLSTMSpeculatorModelConfig = setting(doc="[model] table.")
