"""`arctic embed eval|export|mine` (train comes from core). Heavy imports stay inside the verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from arctic_core.cli import launcher_arguments, recipe_arguments, train_command

POOLINGS = click.Choice(["first_token", "cls", "mean", "last_token"])


@click.group()
def commands() -> None:
    """The embed method's verbs."""


def _load(model: str, pooling: str | None) -> tuple[Any, Any, str, dict[str, str]]:
    """An encoder folder (Arctic's, ArcticTraining's or sentence-transformers'), its tokenizer, pooling, prompts."""
    from transformers import AutoModel, AutoTokenizer

    from arctic_embed.config import POOLING_ALIASES
    from arctic_embed.folder import read_folder

    module = AutoModel.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    found = read_folder(model, fetch=True)  # a hub id's folder files too, cached or not
    declared = found.pooling.value if found.pooling is not None else "first_token"
    chosen = POOLING_ALIASES[pooling] if pooling else str(declared)
    pairs = (("query", found.query_prompt), ("document", found.document_prompt))
    return module, tokenizer, chosen, {name: str(v.value) for name, v in pairs if v is not None}


def _prefixes(prompts: dict[str, str], query: str | None, document: str | None) -> tuple[str, str]:
    return (
        query if query is not None else prompts.get("query", ""),
        document if document is not None else prompts.get("document", ""),
    )


prefix_options = [
    click.option("--pooling", type=POOLINGS, default=None, help="Override the folder's pooling."),
    click.option("--query-prefix", default=None, help="Default: the folder's 'query' prompt, else none."),
    click.option(
        "--document-prefix", default=None, help="Default: the folder's 'document' prompt, else none."
    ),
    click.option("--max-length", type=int, default=512, show_default=True),
    click.option("--batch-size", type=int, default=64, show_default=True),
]


def with_prefix_options(func: Any) -> Any:
    for option in reversed(prefix_options):
        func = option(func)
    return func


@commands.command(
    "train",
    context_settings={"ignore_unknown_options": True},
    help="Train with RECIPE (as `arctic train`). --eval BEIR_FOLDER scores held-out nDCG@10 before and "
    "after training and warns when training made it worse. DeepSpeed launcher options launch several ranks.",
)
@click.option(
    "--eval",
    "eval_folder",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A BEIR folder: the same as --set retrieval_eval.path=FOLDER.",
)
@recipe_arguments
@launcher_arguments
@click.pass_context
def train(ctx: click.Context, eval_folder: str | None, **kwargs: Any) -> None:
    found = getattr(ctx.parent.command, "found", None) if ctx.parent is not None else None
    core = train_command(found.name if found is not None else "embed")
    if eval_folder:
        path = Path(eval_folder).resolve()
        kwargs["overrides"] = (*kwargs["overrides"], f'retrieval_eval.path="{path}"')
    assert core.callback is not None
    ctx.invoke(core.callback, **kwargs)


@commands.command("eval")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv")
@click.option("--k", "ks", type=int, multiple=True, default=(1, 5, 10, 100), show_default=True)
@click.option("--mrl-dim", type=int, default=None, help="Evaluate the first N dimensions only.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the metrics here."
)
@with_prefix_options
def evaluate(
    model: str,
    folder: str,
    split: str,
    ks: tuple[int, ...],
    mrl_dim: int | None,
    json_path: str | None,
    **opts: Any,
) -> None:
    """nDCG@10, recall@k and MRR@10 of MODEL on a BEIR-style FOLDER."""
    from arctic_embed.config import RetrievalEvalConfig
    from arctic_embed.retrieval import evaluate_folder

    module, tokenizer, pooling, prompts = _load(model, opts["pooling"])
    query_prefix, document_prefix = _prefixes(prompts, opts["query_prefix"], opts["document_prefix"])
    settings = RetrievalEvalConfig(
        path=folder, split=split, ks=list(ks), batch_size=opts["batch_size"], max_length=opts["max_length"]
    )
    results = evaluate_folder(
        module,
        tokenizer,
        settings,
        pooling=pooling,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        dim=mrl_dim,
    )
    width = max(len(k) for k in results)
    click.echo(f"{'metric':<{width}}  value")
    for name, value in results.items():
        click.echo(f"{name:<{width}}  {value:.4f}")
    if json_path:
        Path(json_path).write_text(
            json.dumps({"model": model, "folder": folder, "split": split, **results}, indent=2) + "\n"
        )


@commands.command("export")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@with_prefix_options
def export(model: str, out: str, **opts: Any) -> None:
    """Write MODEL (an encoder folder or a run's checkpoint) as a sentence-transformers folder OUT."""
    from arctic_embed.export import export_model

    module, tokenizer, pooling, prompts = _load(model, opts["pooling"])
    query_prefix, document_prefix = _prefixes(prompts, opts["query_prefix"], opts["document_prefix"])
    export_model(
        module,
        tokenizer,
        out,
        pooling=pooling,
        max_seq_length=opts["max_length"],
        query_prefix=query_prefix,
        document_prefix=document_prefix,
    )
    click.echo(
        f"wrote {out} (pooling {pooling}, prompts query={query_prefix!r} document={document_prefix!r})"
    )


@commands.command("mine")
@click.argument("teacher", type=click.Path(exists=True, file_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--split", default="train", show_default=True, help="qrels/<split>.tsv")
@click.option("--num-negatives", type=int, default=10, show_default=True)
@click.option(
    "--margin",
    type=float,
    default=0.95,
    show_default=True,
    help="Keep negatives scoring below margin x the lowest positive.",
)
@click.option("--depth", type=int, default=100, show_default=True, help="Documents retrieved per query.")
@click.option(
    "--queries-per-batch",
    type=int,
    default=0,
    help="Also write the pre-batched layout with this many queries per batch.",
)
@with_prefix_options
def mine(
    teacher: str,
    folder: str,
    out: str,
    split: str,
    num_negatives: int,
    margin: float,
    depth: int,
    queries_per_batch: int,
    **opts: Any,
) -> None:
    """Mine hard negatives for FOLDER's queries with TEACHER; write OUT/triplets.jsonl (and OUT/batches/)."""
    from arctic_embed.data import write_jsonl
    from arctic_embed.mine import mine_folder, write_prebatched

    module, tokenizer, pooling, prompts = _load(teacher, opts["pooling"])
    query_prefix, document_prefix = _prefixes(prompts, opts["query_prefix"], opts["document_prefix"])
    rows = mine_folder(
        module,
        tokenizer,
        folder,
        pooling=pooling,
        split=split,
        num_negatives=num_negatives,
        margin=margin,
        depth=depth,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        batch_size=opts["batch_size"],
        max_length=opts["max_length"],
    )
    write_jsonl(Path(out) / "triplets.jsonl", rows)
    message = f"wrote {len(rows)} triplets to {Path(out) / 'triplets.jsonl'}"
    if queries_per_batch:
        batches = write_prebatched(
            rows,
            Path(out) / "batches",
            tokenizer,
            queries_per_batch=queries_per_batch,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
        )
        message += f" and {len(batches)} stored batches to {Path(out) / 'batches'}"
    click.echo(message)
