"""Generation accuracy on held-out prompts: does the model now *answer* correctly?

The training and eval losses say how well a model predicts the reference tokens; this hook
asks the question a user asks: given a held-out prompt, does greedy decoding produce the
reference answer? Each row of `[generation_eval] path` is a chat conversation whose last
message is the assistant's reference answer; the model sees the earlier messages (with the
generation prompt), decodes greedily until an end-of-turn or EOS token, and scores an exact
match after stripping whitespace. Rows are split over ranks (every rank runs the same
number of batches through `arctic_core.gather.sharded_map`, so ZeRO-3's collective gathers
stay in step) and counts are summed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from arctic_core.config import GenerationEvalConfig
from arctic_core.errors import RecipeError


def read_references(config: GenerationEvalConfig) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages, reference answer) pairs from the eval file."""
    if config.path is None:
        raise RecipeError("no file set", path="generation_eval.path")
    path = Path(config.path)
    if not path.is_file():
        raise RecipeError(f"file {config.path!r} does not exist", path="generation_eval.path")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            *prompt, answer = json.loads(line)["messages"]
            valid = bool(prompt) and answer["role"] == "assistant" and isinstance(answer["content"], str)
        except (ValueError, KeyError, TypeError):  # not JSON, no `messages`, not a list of messages
            valid = False
        if not valid:
            raise RecipeError(
                f"{config.path}:{number}: expected a JSON object whose `messages` end with an assistant answer",
                path="generation_eval.path",
            ) from None
        pairs.append((prompt, answer["content"]))
    if config.max_samples:
        pairs = pairs[: config.max_samples]
    return pairs


def left_padded(tokenizer: Any, prompts: list[list[dict[str, str]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chat prompts (each with the generation prompt) as one left-padded batch: input_ids, attention_mask."""
    encoded = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True) for p in prompts]
    encoded = [e["input_ids"] if isinstance(e, dict) or hasattr(e, "keys") else e for e in encoded]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def generation_accuracy(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[list[dict[str, str]], str]],
    *,
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    zero3: bool = False,
) -> tuple[int, int]:
    """(correct, total) over this rank's share of `pairs` (`rank`, `world_size`: the default group's); callers sum.

    Every rank decodes as many batches (`arctic_core.gather.sharded_map`; filler batches are
    decoded and dropped) and, under ZeRO-3, as many steps per batch (`synced_gpus`).
    """
    from arctic_core.gather import sharded_map

    mine = pairs[rank::world_size]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def score(chunk: list[tuple[list[dict[str, str]], str]]) -> int:
        inputs = {
            k: v.to(device) for k, v in left_padded(tokenizer, [p for p, _ in chunk], stop_ids[0]).items()
        }
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[0],
            synced_gpus=zero3 and world_size > 1,
        )
        width = inputs["input_ids"].shape[1]
        answers = [tokenizer.decode(row[width:], skip_special_tokens=True) for row in output]
        return sum(int(text.strip() == answer.strip()) for text, (_, answer) in zip(answers, chunk))

    chunks = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    correct = sum(sharded_map(score, chunks, filler=lambda: pairs[:1]))
    model.train(was_training)
    return correct, len(mine)
