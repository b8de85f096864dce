"""Bi-encoder training: InfoNCE of each rank's queries against the documents of every rank.

For each micro-batch (the same on every rank of one step):

1. `prepare_batch`: gather the documents' keys from every data-parallel rank (no gradient) and
   turn the labelled pairs into rows, one per positive (`arctic_embed.loss.build_targets`).
   The micro-batch's weight is its number of rows, so the loop's weighting makes the step's
   loss the mean over every row of the global batch.
2. `loss`: embed the local queries and documents with the one shared encoder (pooled, in
   checkpointed chunks of `embed_chunk_size` when set), gather the documents with gradient
   (`arctic_core.gather.all_gather_with_grad`), and compute InfoNCE at `loss_temperature` over
   the gathered documents, plus the Matryoshka term when `mrl_dim` is set.

The sum over ranks of (rows_r / rows) x loss_r is the one-rank loss of the whole global batch and
its gradient flows back to whichever rank embedded each document; the loop's `R/N` scaling undoes
DeepSpeed's averaging, so the gradient is exact at every ZeRO stage (ArcticTraining instead
rescales ZeRO-1/2 gradient fragments by the world size after backward).

Data: pairs/triplets through `data.sources`, or ArcticTraining's pre-batched folders
(`data.root_directory`), each stored batch one optimizer step (`PreBatched`). The trained module
is the encoder (`transformers.AutoModel`); export and checkpoints are in `arctic_embed.export`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, ClassVar

import torch

import arctic_embed.export  # noqa: F401  (registers the sentence_transformers and biencoder checkpoints)
from arctic_core.engine.loaders import PreBatched
from arctic_core.engine.loop import Events
from arctic_core.errors import ArcticError
from arctic_core.gather import all_gather_detached, all_gather_with_grad
from arctic_core.trainer import LossOutput, Trainer
from arctic_embed import data as embed_data
from arctic_embed.config import BiencoderConfig, EmbedConfig
from arctic_embed.loss import build_targets, info_nce, mrl_loss
from arctic_embed.modeling import embed_texts, trim_padding


class EmbedTrainer(Trainer[EmbedConfig]):
    name = "embed"
    config_class = EmbedConfig
    reports_perplexity = False
    verify_skips: ClassVar[dict[str, str]] = {
        "accumulation": "in-batch negatives: each micro-batch's queries are scored against that "
        "micro-batch's documents (gathered over ranks), so k micro-batches of m are by design "
        "another loss than one of k x m (ranks, which gather their documents, must match)"
    }

    @classmethod
    def resolve_config(cls, config: Any, *, fetch: bool = False) -> tuple[Any, dict[str, str], list[str]]:
        """Unset pooling, normalisation, prompts and lengths from the model folder (`arctic_embed.folder`);
        with `fetch` (a run), a hub id's folder files are downloaded first, so a run reads what the hub
        folder declares even before it is cached (`arctic config show` stays offline)."""
        from arctic_embed.folder import resolve

        found = resolve(config, fetch=fetch)
        return found.config, found.sources, found.warnings

    @property
    def auto_model_class(self) -> Any:  # type: ignore[override]
        from transformers import AutoModel

        return AutoModel

    # --- setup ---------------------------------------------------------------------------------

    def setup_tokenizer(self) -> None:
        """The model's tokenizer; pre-batched data is already tokenized and may come without one."""
        from arctic_core.data import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(self.config)
        except Exception:
            if self.config.data.root_directory is None:
                raise
            self.tokenizer = None

    def setup_data(self) -> None:
        """Pre-batched folders (one stored batch per step), or pairs/triplets dealt by the sample loader."""
        settings = self.config.data
        if settings.root_directory is not None:
            self.train_dataset = PreBatched(
                embed_data.StoredBatches(
                    settings.root_directory,
                    split_factor=settings.split_factor,
                    max_query=settings.max_seq_length_query,
                    max_document=settings.max_seq_length_doc,
                    closing=embed_data.closing_tokens(self.tokenizer),
                ),
                split=embed_data.split_batch,
            )
            self.eval_dataset = self._prebatched_eval()
            self.collate = None
            return
        self.train_dataset = self._pairs(settings.sources, "data.sources")
        self.eval_dataset = (
            self._pairs(settings.eval_sources, "data.eval_sources") if settings.eval_sources else None
        )
        self.collate = functools.partial(
            embed_data.collate_pairs,
            rank=self.topology.dp_rank,
            max_query=settings.max_seq_length_query or settings.max_length,
            max_document=settings.max_seq_length_doc or settings.max_length,
            closing=embed_data.closing_tokens(self.tokenizer),
        )
        if not self.config.use_in_batch_negatives and not any(row["negatives"] for row in self.train_dataset):
            raise ArcticError("the training pairs have no negatives: set use_in_batch_negatives = true")

    def _prebatched_eval(self) -> PreBatched | None:
        settings = self.config.data
        if not settings.eval_root_directories:
            return None
        stores = [
            embed_data.StoredBatches(
                root,
                split_factor=settings.eval_split_factor,
                max_query=settings.eval_max_seq_length_query,
                max_document=settings.eval_max_seq_length_doc,
                closing=embed_data.closing_tokens(self.tokenizer),
            )
            for root in settings.eval_root_directories
        ]
        return PreBatched([batch for store in stores for batch in store], split=embed_data.split_batch)

    def _pairs(self, sources: list[Any], key: str) -> list[dict[str, list[list[int]]]]:
        from arctic_core.data.sources import load_source

        rows = []
        for i, source in enumerate(sources):
            table = load_source(
                source, "train" if key == "data.sources" else "eval", Path(self.config.run_dir)
            )
            name = f"{key}[{i}] ({source.name_or_path})"
            rows += embed_data.pair_rows(iter(table), name, self.config.data)
        if self.tokenizer is None:
            raise ArcticError(f"{key}: text pairs need a tokenizer (model.name_or_path has none)")
        return embed_data.tokenize_pairs(rows, self.tokenizer)

    # --- hooks ---------------------------------------------------------------------------------

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Place every labelled pair in the gathered documents and expand positives into rows."""
        batch = super().prepare_batch(batch)
        keys = all_gather_detached(batch["document_keys"], group=self.groups.dp_group)
        rel_query, rel_column, rel_value = embed_data.resolve_columns(batch, keys)
        targets = build_targets(
            rel_query,
            rel_column,
            rel_value,
            num_columns=int(keys.shape[0]),
            in_batch_negatives=self.config.use_in_batch_negatives,
        )
        return {**batch, "targets": targets}

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        """Rows: one per (query, positive) pair whose positive is among the gathered documents."""
        return float(batch["targets"].rows)

    def step_flops(self, micro_batch: dict[str, Any]) -> int | None:
        """The encoder's forward and backward (3 x forward, no output layer) over every query and
        document token encoded, at each text's real length (padding excluded); pooling not counted."""
        counter = self.flops_counter
        if counter is None:
            return None
        lengths = [
            int(n)
            for side in ("query", "document")
            for n in micro_batch[f"{side}_attention_mask"].sum(dim=1).tolist()
            if n
        ]
        return 3 * counter.forward(lengths, head_rows=0)

    @property
    def pooling(self) -> str:
        """The resolved pooling (`resolve_config` set it from the model folder, else the default)."""
        return self.config.model.pooling or "first_token"

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings through the engine, in checkpointed chunks when `embed_chunk_size` is set."""
        ids, mask = trim_padding(input_ids, attention_mask)
        return embed_texts(self.engine, ids, mask, self.pooling, chunk_size=self.config.embed_chunk_size)

    def loss_function(self) -> Any:
        """The chunked InfoNCE, each chunk computed by the block the `kernels` key picks (PyTorch or Triton)."""
        return functools.partial(
            info_nce, chunk_size=self.config.loss_chunk_size, kernels=self.config.kernels
        )

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        queries = self.embed(batch["query_input_ids"], batch["query_attention_mask"])
        documents = self.embed(batch["document_input_ids"], batch["document_attention_mask"])
        every_document = all_gather_with_grad(documents, group=self.groups.dp_group)
        loss, metrics = mrl_loss(
            queries,
            every_document,
            batch["targets"],
            self.config.loss_temperature,
            mrl_dim=self.config.mrl_dim,
            mrl_weight=self.config.mrl_weight,
            loss_fn=self.loss_function(),
        )
        return LossOutput(loss, metrics=metrics)

    # --- retrieval evaluation ------------------------------------------------------------------

    def subscribe(self, events: Events) -> None:
        """Retrieval eval before training (unless resumed) and after it."""
        settings = self.config.retrieval_eval
        if settings.path and settings.before_training and self.resume_point is None:
            events.subscribe("train_start", lambda: self.retrieval_eval("before training"))
        if settings.path and settings.after_training:
            events.subscribe("train_end", lambda: self.retrieval_eval("after training"))

    def retrieval_eval(self, when: str) -> dict[str, float]:
        """nDCG@10, recall@k, MRR on `[retrieval_eval] path` (every rank embeds a share of the texts)."""
        from arctic_embed.retrieval import evaluate_folder, worse_than_untouched

        module = self.engine.module if self.engine is not None else self.model
        results = evaluate_folder(
            module,
            self.tokenizer,
            self.config.retrieval_eval,
            pooling=self.pooling,
            query_prefix=self.config.data.query_prefix or "",
            document_prefix=self.config.data.document_prefix or "",
            device=self.device,
            group=self.groups.dp_group if self.zero_stage != 3 else None,
        )
        self.log.info("retrieval %s: %s", when, " ".join(f"{k}={v:.4f}" for k, v in results.items()))
        path = Path(self.config.run_dir) / "retrieval_eval.jsonl"
        record: dict[str, Any] = {"when": when, "step": self.global_step, **results}
        drop = worse_than_untouched(path, results) if when == "after training" else None
        if drop is not None:  # never silently worse than not training
            self.log.warning("%s", drop)
            record["warning"] = drop
        if self.rank == 0:
            with path.open("a") as out:
                out.write(json.dumps(record) + "\n")
        return results


class BiencoderTrainer(EmbedTrainer):
    """ArcticTraining's `biencoder` trainer name."""

    name = "biencoder"
    config_class = BiencoderConfig
