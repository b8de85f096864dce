"""Saving the bi-encoder: a sentence-transformers folder, and ArcticTraining's `biencoder` layout.

A sentence-transformers folder is the encoder's own files at the root (config, safetensors,
tokenizer) plus:

    modules.json                       [Transformer "" , Pooling "1_Pooling", Normalize "2_Normalize"]
    sentence_bert_config.json          {"max_seq_length": ..., "do_lower_case": false}
    1_Pooling/config.json              word_embedding_dimension and one pooling_mode_* flag
                                       (first_token -> cls_token, mean -> mean_tokens,
                                       last_token -> lasttoken), include_prompt true
    2_Normalize/                       (no files)
    config_sentence_transformers.json  prompts {"query": query prefix, "document": document prefix},
                                       similarity "cosine"

`SentenceTransformer(folder).encode(text, prompt_name="query")` then embeds exactly as Arctic
does: the prompt is prepended to the text, tokenized with special tokens, pooled, normalised.
`biencoder_config.json` (`{"pooling": ...}`) is written too, so ArcticTraining's loader works,
and `read_sentence_transformers_pooling` lets Arctic start from any sentence-transformers folder.
Checkpoint types: `sentence_transformers` (alias `biencoder`), beside core's `huggingface`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arctic_core.engine.checkpoint import CheckpointEngine, register_checkpoint
from arctic_embed.modeling import save_biencoder_config

POOLING_FLAGS = {
    "first_token": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
ALL_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def write_sentence_transformers_files(
    folder: str | Path,
    *,
    pooling: str,
    hidden_size: int,
    max_seq_length: int,
    query_prefix: str = "",
    document_prefix: str = "",
    normalize: bool = True,
) -> Path:
    """The sentence-transformers module files, beside an encoder already saved in `folder`."""
    out = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    _write(out / "modules.json", modules)
    _write(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    flags = {flag: flag == POOLING_FLAGS[pooling] for flag in ALL_FLAGS}
    _write(
        out / "1_Pooling" / "config.json",
        {"word_embedding_dimension": hidden_size, **flags, "include_prompt": True},
    )
    if normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
    prompts = {name: text for name, text in (("query", query_prefix), ("document", document_prefix))}
    _write(
        out / "config_sentence_transformers.json",
        {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    save_biencoder_config(out, pooling)
    return out


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def read_sentence_transformers_pooling(folder: str | Path) -> str | None:
    """The pooling a model folder declares (`arctic_embed.folder`), None if it declares none."""
    from arctic_embed.folder import read_folder

    found = read_folder(str(folder)).pooling
    return None if found is None else str(found.value)


def read_prompts(folder: str | Path) -> dict[str, str]:
    """The folder's query and document prompts (only those it declares)."""
    from arctic_embed.folder import read_folder

    found = read_folder(str(folder))
    pairs = (("query", found.query_prompt), ("document", found.document_prompt))
    return {name: str(value.value) for name, value in pairs if value is not None}


def ensure_pad_token(tokenizer: Any) -> Any:
    """sentence-transformers pads with the tokenizer's pad token: give one (EOS, else id 0) if missing."""
    if tokenizer is not None and tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def export_model(
    module: Any,
    tokenizer: Any,
    folder: str | Path,
    *,
    pooling: str,
    max_seq_length: int = 512,
    query_prefix: str = "",
    document_prefix: str = "",
    state_dict: dict[str, Any] | None = None,
    normalize: bool = True,
) -> Path:
    """Save `module` (an `AutoModel` encoder) and `tokenizer` as a sentence-transformers folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        ensure_pad_token(tokenizer).save_pretrained(out)
    return write_sentence_transformers_files(
        out,
        pooling=pooling,
        hidden_size=int(module.config.hidden_size),
        max_seq_length=max_seq_length,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        normalize=normalize,
    )


@register_checkpoint("sentence_transformers")
class SentenceTransformersCheckpoint(CheckpointEngine):
    """The trained encoder as a sentence-transformers folder (PEFT adapters merged first)."""

    def save(self, folder: Path) -> None:
        from arctic_core.engine import distributed
        from arctic_core.gather import gathered_state_dict

        trainer: Any = self.trainer
        module: Any = trainer.engine.module if trainer.engine is not None else trainer.model
        state: dict[str, Any] | None = gathered_state_dict(module, trainer.zero_stage == 3)
        if distributed.rank() != 0:
            return
        if trainer.config.model.peft_config:
            from arctic_core.engine.peft import merged_model

            module, state = merged_model(module, state or {}), None
        config = trainer.config
        export_model(
            module,
            trainer.tokenizer,
            folder,
            pooling=config.model.pooling or "first_token",
            max_seq_length=config.data.max_seq_length_doc or config.retrieval_eval.max_length or 512,
            query_prefix=config.data.query_prefix or "",
            document_prefix=config.data.document_prefix or "",
            state_dict=state,
            normalize=config.model.normalize is not False,
        )


@register_checkpoint("biencoder")
class BiencoderCheckpoint(SentenceTransformersCheckpoint):
    """ArcticTraining's checkpoint type name (encoder + biencoder_config.json); written in the same layout."""
