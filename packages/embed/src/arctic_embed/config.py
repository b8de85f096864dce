"""Recipes of the `embed` method: core's keys plus ArcticTraining's bi-encoder keys.

Key names follow ArcticTraining's `projects/arctic_embed` where it has one, so its recipes
run unchanged: top-level `use_in_batch_negatives`, `loss_temperature`, `mrl_dim`;
`model.pooling` (`first_token`, `mean`, `last_token`; `cls` is an alias of `first_token`);
`data.root_directory`, `data.split_factor`, `data.max_seq_length_query/doc`,
`data.eval_root_directories` for the pre-batched layout. Arctic's own additions: pairs and
triplets from `data.sources` with query/document prefixes, a memory bound for large global
batches (`embed_chunk_size`, `loss_chunk_size`), the MRL weight, and a retrieval evaluation
table. Parsing has no side effects.
"""

from __future__ import annotations

from typing import Any

import attrs

from arctic_core.config import (
    DataConfig,
    ModelConfig,
    TrainerConfig,
    at_least,
    between,
    greater_than,
    one_of,
    setting,
)
from arctic_core.errors import FieldError

POOLING_ALIASES = {
    "first_token": "first_token",
    "cls": "first_token",
    "mean": "mean",
    "last_token": "last_token",
}


def _canonical(instance: Any, name: str, value: Any) -> None:
    object.__setattr__(instance, name, value)


@attrs.frozen(kw_only=True)
class EmbedModelConfig(ModelConfig):
    """[model]: the shared encoder tower (transformers `AutoModel`) and its pooling."""

    type: str = setting(
        "huggingface",
        doc="Model factory: huggingface (ArcticTraining's 'biencoder' is accepted).",
        check=one_of("huggingface", "biencoder"),
    )
    pooling: str | None = setting(
        None,
        doc="Pooling of the last hidden states: first_token (CLS; alias cls), mean, or last_token; "
        "unset: the model folder's, else first_token.",
        check=one_of(*POOLING_ALIASES),
    )
    normalize: bool | None = setting(
        None,
        doc="Whether the exported folder L2-normalises (a Normalize module); the loss always scores cosines. "
        "Unset: the model folder's, else true.",
    )
    kwargs: dict[str, Any] = setting(
        factory=dict, doc="ArcticTraining's config overrides (merged into hf_config_kwargs)."
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.pooling is not None:
            _canonical(self, "pooling", POOLING_ALIASES[self.pooling])
        if self.kwargs:
            _canonical(self, "hf_config_kwargs", {**self.kwargs, **self.hf_config_kwargs})


@attrs.frozen(kw_only=True)
class EmbedDataConfig(DataConfig):
    """[data]: pairs/triplets from `sources`, or ArcticTraining's pre-batched folders."""

    type: str | None = setting(
        None,
        doc="Data factory; ArcticTraining's 'contrastive_pretokenized' is accepted.",
        check=one_of("contrastive_pretokenized", "pairs"),
    )
    dl_num_workers: int = setting(0, doc="Data loader worker processes per rank.", check=at_least(0))
    filesystem: str = setting("local", doc="Where root_directory lives (local only).", check=one_of("local"))
    root_directory: str | None = setting(
        None, doc="Pre-batched training data: a folder of batch_*/{queries,documents,relations}.parquet."
    )
    split_factor: int = setting(
        1, doc="Cut each stored batch into this many optimizer steps.", check=at_least(1)
    )
    max_seq_length_query: int | None = setting(
        None,
        doc="Truncate queries to this many tokens; unset: the model folder's max_seq_length (at most max_length).",
        check=at_least(1),
    )
    max_seq_length_doc: int | None = setting(
        None,
        doc="Truncate documents to this many tokens; unset: the model folder's max_seq_length (at most max_length).",
        check=at_least(1),
    )
    eval_root_directories: list[str] = setting(factory=list, doc="Pre-batched evaluation folders (loss).")
    eval_split_factor: int = setting(1, doc="split_factor of the evaluation folders.", check=at_least(1))
    eval_max_seq_length_query: int | None = setting(
        None, doc="Query truncation in evaluation.", check=at_least(1)
    )
    eval_max_seq_length_doc: int | None = setting(
        None, doc="Document truncation in evaluation.", check=at_least(1)
    )
    query_prefix: str | None = setting(
        None,
        doc="Text put before every query (e5: 'query: '); unset: the model folder's 'query' prompt, else none.",
    )
    document_prefix: str | None = setting(
        None,
        doc="Text put before every document (e5: 'passage: '); unset: the folder's 'document' prompt, else none.",
    )
    query_column: str = setting("query", doc="Pairs/triplets: the query's column.")
    positive_column: str = setting(
        "positive", doc="Pairs/triplets: the positive document's column (a string or a list of them)."
    )
    negatives_column: str = setting(
        "negatives", doc="Pairs/triplets: the hard negatives' column (a string or a list; optional)."
    )
    num_negatives: int | None = setting(
        None,
        doc="Keep this many hard negatives per query (None: all; rows must then agree).",
        check=at_least(0),
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.root_directory is not None and self.sources:
            raise FieldError("root_directory", "set data.root_directory or data.sources, not both")


@attrs.frozen(kw_only=True)
class RetrievalEvalConfig:
    """[retrieval_eval]: nDCG@10, recall@k and MRR on a held-out BEIR-style folder, before/after training."""

    path: str | None = setting(
        None, doc="Folder with corpus.jsonl, queries.jsonl and qrels/test.tsv; unset turns this off."
    )
    split: str = setting("test", doc="The qrels file: qrels/<split>.tsv.")
    ks: list[int] = setting(factory=lambda: [1, 5, 10, 100], doc="Cut-offs of recall@k.")
    batch_size: int = setting(64, doc="Texts embedded at once.", check=at_least(1))
    max_length: int | None = setting(
        None,
        doc="Truncate queries and documents to this many tokens; unset: the model folder's max_seq_length, else 512.",
        check=at_least(2),
    )
    before_training: bool = setting(True, doc="Evaluate before the first step.")
    after_training: bool = setting(True, doc="Evaluate after the last step.")


@attrs.frozen(kw_only=True)
class EmbedConfig(TrainerConfig):
    """A bi-encoder recipe: InfoNCE over the global batch of (query, document) embeddings."""

    type: str = setting("embed", doc="Method or registered trainer name.")
    model: EmbedModelConfig = setting(doc="[model] table.")
    data: EmbedDataConfig = setting(factory=EmbedDataConfig, doc="[data] table.")
    use_in_batch_negatives: bool = setting(
        False, doc="Treat unlabelled (query, document) pairs of the global batch as negatives."
    )
    loss_temperature: float = setting(0.02, doc="InfoNCE temperature.", check=greater_than(0.0))
    mrl_dim: int | None = setting(
        None,
        doc="Matryoshka: also train the first mrl_dim dimensions (weight mrl_weight).",
        check=at_least(1),
    )
    mrl_weight: float = setting(
        0.5, doc="Weight of the truncated loss when mrl_dim is set.", check=between(0.0, 1.0)
    )
    embed_chunk_size: int = setting(
        0,
        doc="Embed at most this many texts per checkpointed encoder call (0: all at once); bounds activation memory.",
        check=at_least(0),
    )
    loss_chunk_size: int = setting(
        1024, doc="Rows of the similarity matrix computed at once in the loss.", check=at_least(1)
    )
    retrieval_eval: RetrievalEvalConfig = setting(factory=RetrievalEvalConfig, doc="[retrieval_eval] table.")

    def __attrs_post_init__(self) -> None:
        # TrainerConfig's own checks, with pre-batched evaluation folders counted as evaluation data.
        if len([c for c in self.checkpoint if c.auto_resume]) > 1:
            raise FieldError("checkpoint", "at most one [[checkpoint]] entry may set auto_resume = true")
        prebatched = self.data.root_directory is not None
        held_out = self.data.train_eval_split[1] > 0 and not prebatched
        if self.eval_interval and not (self.data.eval_sources or self.data.eval_root_directories or held_out):
            raise FieldError(
                "eval_interval",
                "needs data.eval_sources, data.eval_root_directories or a held-out train_eval_split",
            )
        if not prebatched and not self.data.sources:
            raise FieldError(
                "data.sources", "set data.sources (pairs/triplets) or data.root_directory (pre-batched)"
            )
        if self.mrl_dim is not None and self.mrl_weight in (0.0, 1.0):
            raise FieldError("mrl_weight", "must be strictly between 0 and 1 when mrl_dim is set")


@attrs.frozen(kw_only=True)
class BiencoderConfig(EmbedConfig):
    """ArcticTraining's `biencoder` recipe type: the `embed` method under its original name."""

    type: str = setting("biencoder", doc="Method or registered trainer name.")
