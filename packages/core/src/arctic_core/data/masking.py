"""Token-level loss masking: which tokens of a sample carry labels.

A conversation is rendered with the tokenizer's chat template turn by turn. For the i-th
assistant message, `render(messages[:i], add_generation_prompt=True)` is the prompt the
model sees before it speaks and `render(messages[:i + 1])` the conversation once it has
spoken; both are tokenized, and the tokens between the two lengths are the assistant's.
Of those, the tokens the template emits after the end-of-turn marker (the newline after
ChatML's `<|im_end|>`) are left out: the marker is the last special token of the span
when only whitespace follows it. Every rendering must be a token prefix of the next and
of the whole conversation; a template that rewrites earlier turns (one that drops old
reasoning, say) is refused with an error naming the template and the row. Templates with
`{% generation %}` markers use transformers' assistant mask instead.

No step ever searches the text for the answer, so an answer that also appears earlier in
the conversation is still labelled where the assistant said it. Labels are unshifted
(HF convention) and the first position of every sample is -100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from arctic_core.data.errors import DataError

IGNORE = -100
FIXED_DATE = "26 Jul 2024"
"""Passed as `date_string` to every template, so templates that print today's date render stably."""

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")

Message = dict[str, Any]
Tokens = tuple[list[int], list[int]]


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION.search(template or ""))


class ChatMasker:
    """Tokenizes conversations and labels the assistant's tokens (all tokens when `mask_inputs` is off)."""

    def __init__(self, tokenizer: Any, *, mask_inputs: bool = True, template_name: str = "chat template"):
        self.tokenizer = tokenizer
        self.mask_inputs = mask_inputs
        self.template_name = template_name
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, t in added.items() if getattr(t, "special", False)
        }
        self.use_markers = has_generation_markers(tokenizer.chat_template)

    def render(self, messages: Sequence[Message], *, generation_prompt: bool, where: str = "") -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(messages),
                tokenize=False,
                add_generation_prompt=generation_prompt,
                date_string=FIXED_DATE,
            )
        except Exception as exc:  # jinja2 errors, including the template's own raise_exception(...)
            raise DataError(f"{where}: the {self.template_name} failed on this conversation: {exc}") from None

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, messages: Sequence[Message], where: str, train_from: int = 0) -> Tokens:
        """`(input_ids, labels)` for one conversation; `where` names the source and row in errors.

        Only assistant messages at index `train_from` or later are trained (a preference pair's
        prompt may hold earlier assistant turns).
        """
        if not self.mask_inputs:
            ids = self.encode([self.render(messages, generation_prompt=False, where=where)])[0]
            labels = list(ids)
        elif self.use_markers:
            ids, labels = self._with_markers(messages, where, train_from)
        else:
            ids, labels = self._by_prefixes(messages, where, train_from)
        if labels:
            labels[0] = IGNORE
        return ids, labels

    def _with_markers(self, messages: Sequence[Message], where: str, train_from: int) -> Tokens:
        try:
            out = self.tokenizer.apply_chat_template(
                list(messages),
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                date_string=FIXED_DATE,
            )
        except Exception as exc:
            raise DataError(f"{where}: the {self.template_name} failed on this conversation: {exc}") from None
        ids = list(out["input_ids"])
        labels = [t if m else IGNORE for t, m in zip(ids, out["assistant_masks"])]
        if train_from > 0:
            prompt = self.encode([self.render(messages[:train_from], generation_prompt=True, where=where)])[0]
            if ids[: len(prompt)] != prompt:
                raise self._not_prefix(where, "the prompt")
            labels[: len(prompt)] = [IGNORE] * len(prompt)
        return ids, labels

    def _by_prefixes(self, messages: Sequence[Message], where: str, train_from: int) -> Tokens:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= train_from]
        texts = [self.render(messages, generation_prompt=False, where=where)]
        for i in turns:
            texts += [
                self.render(messages[:i], generation_prompt=True, where=where),
                self.render(messages[: i + 1], generation_prompt=False, where=where),
            ]
        encoded = self.encode(texts)
        ids = encoded[0]
        labels = [IGNORE] * len(ids)
        for k, turn in enumerate(turns):
            before, after = encoded[1 + 2 * k], encoded[2 + 2 * k]
            for part, what in ((before, "the prompt before"), (after, "the conversation up to")):
                if ids[: len(part)] != part:
                    raise self._not_prefix(where, f"{what} assistant message {turn}")
            start, end = len(before), self._end_of_turn(ids, len(before), len(after))
            labels[start:end] = ids[start:end]
        return ids, labels

    def _end_of_turn(self, ids: list[int], start: int, end: int) -> int:
        """Where the assistant's span ends: just after its end-of-turn marker, if whitespace follows it."""
        for j in range(end - 1, start - 1, -1):
            if ids[j] in self.special_ids:
                tail = self.tokenizer.decode(ids[j + 1 : end])
                return j + 1 if not tail.strip() else end
        return end

    def _not_prefix(self, where: str, what: str) -> DataError:
        return DataError(
            f"{where}: the {self.template_name} does not render conversations turn by turn: {what} is not a "
            "token prefix of the whole conversation, so assistant tokens cannot be located. Use a template "
            "that renders earlier turns unchanged, or add {% generation %} markers to it."
        )


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """`[bos] + tokens + [eos]` (BOS only where the tokenizer has one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return bos + ids + eos


def text_pieces(tokenizer: Any, text: str, max_length: int) -> list[Tokens]:
    """A plain-text document cut into `max_length` pieces; every token is trained."""
    ids = encode_text(tokenizer, text)
    pieces = []
    for start in range(0, len(ids), max_length):
        piece = ids[start : start + max_length]
        pieces.append((piece, [IGNORE, *piece[1:]]))
    return pieces


def prompt_completion(tokenizer: Any, prompt: str, completion: str, mask_inputs: bool) -> Tokens:
    """`[bos] + prompt + completion + [eos]`, prompt and completion tokenized apart; completion trained."""
    prompt_ids, completion_ids = (
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt, completion)
    )
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = bos + prompt_ids + completion_ids + eos
    n_prompt = len(bos) + len(prompt_ids)
    labels = list(ids) if not mask_inputs else [IGNORE] * n_prompt + ids[n_prompt:]
    labels[0] = IGNORE
    return ids, labels
