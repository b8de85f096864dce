"""Token-level loss masking: which tokens of a sample carry labels, exactly as the model is served.

For the i-th assistant message, the *served context* is `render(messages[:i],
add_generation_prompt=True)` tokenized alone (what a server sends the model) and the *served
turn* is what the model then generates: the tokens of `render(messages[:i + 1])` after that
context, through the end-of-turn marker (the marker is the last special token of the turn when
only whitespace follows it; ChatML's newline after `<|im_end|>` is not generated). A sample
trains turn i only where its tokens are the served context followed by the served turn, so
training and serving see the same tokens.

The whole conversation is one sample when every turn is found in its rendering that way. A
template that rewrites earlier turns (Qwen3 drops the reasoning of turns before the last user
query; some templates render a tool result differently when it is last) gives the turns it
rewrote samples of their own: the served context plus the turn. Within a turn, assistant text
and tool calls train; the reasoning block trains unless `train_on_reasoning` is off, an empty
thinking block is masked with `ignore_empty_think`, and a message with `train: false` is not
trained. The reasoning block is located on tokens too: it is the common token prefix of the turn
and of the same turn rendered with its reasoning but no answer.

No step ever searches the text for the answer, so an answer that also appears earlier in the
conversation is still labelled where the assistant said it. Labels are unshifted (HF
convention) and the first position of every sample is -100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from arctic_core.data.errors import DataError

IGNORE = -100
FIXED_DATE = "26 Jul 2024"
"""Passed as `date_string` to every template, so templates that print today's date render stably."""

_INLINE_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)

Message = dict[str, Any]
Tokens = tuple[list[int], list[int]]


@attrs.frozen
class Turn:
    """One assistant turn as served: its context, its tokens, and the parts of them not trained."""

    index: int
    """The message's position in the conversation."""
    context: list[int]
    """The served context: the conversation so far with the generation prompt, tokenized alone."""
    tokens: list[int]
    """What the model generates for this turn, through its end-of-turn marker."""
    masked: tuple[tuple[int, int], ...] = ()
    """`[start, end)` ranges of `tokens` that are not trained (reasoning, an empty think block)."""
    trained: bool = True
    """False for a message marked `train: false` (or `weight: 0`)."""

    def labels(self) -> list[int]:
        """The turn's labels: its tokens, with the masked ranges (or all, if not trained) ignored."""
        if not self.trained:
            return [IGNORE] * len(self.tokens)
        labels = list(self.tokens)
        for start, end in self.masked:
            labels[start:end] = [IGNORE] * (end - start)
        return labels

    def found_in(self, ids: Sequence[int]) -> bool:
        """Whether `ids` holds this turn as served: the context, then the turn's tokens."""
        n = len(self.context)
        return list(ids[:n]) == self.context and list(ids[n : n + len(self.tokens)]) == self.tokens


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatMasker:
    """Tokenizes conversations and labels the assistant's tokens (all tokens when `mask_inputs` is off)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        mask_inputs: bool = True,
        template_name: str = "chat template",
        train_on_reasoning: bool = True,
        ignore_empty_think: bool = False,
    ):
        self.tokenizer = tokenizer
        self.mask_inputs = mask_inputs
        self.template_name = template_name
        self.train_on_reasoning = train_on_reasoning
        self.ignore_empty_think = ignore_empty_think
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, t in added.items() if getattr(t, "special", False)
        }

    def render(
        self,
        messages: Sequence[Message],
        *,
        generation_prompt: bool,
        where: str = "",
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The template's text for `messages` (with `tools`), as a server would render it."""
        try:
            return self.tokenizer.apply_chat_template(
                [_for_template(m) for m in messages],
                tools=tools or None,
                tokenize=False,
                add_generation_prompt=generation_prompt,
                date_string=FIXED_DATE,
            )
        except Exception as exc:  # jinja2 errors, including the template's own raise_exception(...)
            raise DataError(f"{where}: the {self.template_name} failed on this conversation: {exc}") from None

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(
        self,
        messages: Sequence[Message],
        where: str,
        train_from: int = 0,
        tools: list[dict[str, Any]] | None = None,
    ) -> Tokens:
        """`(input_ids, labels)` of a conversation that must be one sample (a preference pair's side).

        Only assistant messages at index `train_from` or later are trained (a preference pair's
        prompt may hold earlier assistant turns).
        """
        samples = self.samples(messages, where, train_from=train_from, tools=tools)
        if len(samples) > 1:
            raise DataError(
                f"{where}: the {self.template_name} renders earlier turns of this conversation differently "
                f"once later turns follow, so it needs {len(samples)} samples; a preference pair's side must "
                "be one sequence"
            )
        return samples[0]

    def samples(
        self,
        messages: Sequence[Message],
        where: str,
        *,
        train_from: int = 0,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[Tokens]:
        """The samples of one conversation: the whole of it, plus one per turn its rendering rewrote."""
        whole = self.encode([self.render(messages, generation_prompt=False, where=where, tools=tools)])[0]
        if not self.mask_inputs:
            return [_first_ignored(whole, list(whole))]
        left = [t for t in self.turns(messages, where, train_from=train_from, tools=tools) if t.trained]
        if not left:  # nothing to train: one sample, dropped later as having no trainable token
            return [_first_ignored(whole, [IGNORE] * len(whole))]
        out, ids = [], whole
        while True:
            labels = [IGNORE] * len(ids)
            covered = [t for t in left if t.found_in(ids)]
            for turn in covered:
                start = len(turn.context)
                labels[start : start + len(turn.tokens)] = turn.labels()
            if covered:
                out.append(_first_ignored(ids, labels))
            left = [t for t in left if t not in covered]
            if not left:
                return out
            ids = left[-1].context + left[-1].tokens

    def turns(
        self,
        messages: Sequence[Message],
        where: str,
        *,
        train_from: int = 0,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[Turn]:
        """Every assistant turn at `train_from` or later, as served (see the module docstring)."""
        out = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or i < train_from:
                continue
            context_text = self.render(messages[:i], generation_prompt=True, where=where, tools=tools)
            context = self.encode([context_text])[0]
            tokens = self._generated(messages[: i + 1], context_text, context, where, tools)
            masked = self._reasoning(messages, i, context_text, context, tokens, where, tools)
            out.append(Turn(i, context, tokens, masked, m.get("train", True) is not False))
        return out

    def _generated(
        self,
        messages: Sequence[Message],
        context_text: str,
        context: list[int],
        where: str,
        tools: list[dict[str, Any]] | None,
    ) -> list[int]:
        """The tokens the model generates after `context` for the last of `messages`, through end of turn."""
        text = self.render(messages, generation_prompt=False, where=where, tools=tools)
        ids = self.encode([text])[0]
        if ids[: len(context)] != context:
            if not text.startswith(context_text):
                raise DataError(
                    f"{where}: the {self.template_name} renders the conversation before assistant message "
                    f"{len(messages) - 1} differently once that message follows, so what it generates cannot "
                    "be told apart from its context. Fix the template (its generation prompt must begin "
                    "the assistant's turn as it is rendered)."
                )
            ids = context + self.encode([text[len(context_text) :]])[0]
        return ids[len(context) : self.end_of_turn(ids, len(context), len(ids))]

    def _reasoning(
        self,
        messages: Sequence[Message],
        i: int,
        context_text: str,
        context: list[int],
        tokens: list[int],
        where: str,
        tools: list[dict[str, Any]] | None,
    ) -> tuple[tuple[int, int], ...]:
        """The token range of turn i's reasoning block, when it is not trained (else none)."""
        m = messages[i]
        inline = _INLINE_THINK.match(m.get("content") or "") if "reasoning_content" not in m else None
        reasoning = m.get("reasoning_content", inline.group(1) if inline else None)
        if reasoning is None:
            return ()
        empty = not reasoning.strip()
        if (empty and not self.ignore_empty_think) or (not empty and self.train_on_reasoning):
            return ()
        if inline:
            bare = {"role": "assistant", "content": inline.group(0)}
        else:
            bare = {"role": "assistant", "content": "", "reasoning_content": reasoning}
        variant = self._generated([*messages[:i], bare], context_text, context, where, tools)
        end = min(common_prefix(tokens, variant), len(tokens) - 1)  # the end-of-turn marker still trains
        return ((0, end),) if end > 0 else ()

    def end_of_turn(self, ids: list[int], start: int, end: int) -> int:
        """Where the assistant's span ends: just after its end-of-turn marker, if whitespace follows it."""
        for j in range(end - 1, start - 1, -1):
            if ids[j] in self.special_ids:
                tail = self.tokenizer.decode(ids[j + 1 : end])
                return j + 1 if not tail.strip() else end
        return end


def _for_template(message: Message) -> Message:
    """A message without Arctic's own fields (`train`), as a server would pass it to the template."""
    return {k: v for k, v in message.items() if k != "train"}


def _first_ignored(ids: list[int], labels: list[int]) -> Tokens:
    if labels:
        labels[0] = IGNORE
    return ids, labels


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
