"""Token-level masking: labels land exactly on the assistant's tokens and end-of-turn marker."""

from __future__ import annotations

import pytest
from data_helpers import REWRITING_TEMPLATE, TEMPLATES, tokenizer_with

from arctic_core.data import masking
from arctic_core.data.errors import DataError

IGNORE = -100

# "Yes" also appears in the system and user turns, before each place the assistant says it.
YES_CONVERSATION = [
    {"role": "system", "content": "Answer Yes or No."},
    {"role": "user", "content": "Is 2 + 2 = 4? Yes or no. Yes"},
    {"role": "assistant", "content": "Yes"},
    {"role": "user", "content": "Yes or no: is 3 > 5?"},
    {"role": "assistant", "content": "No"},
    {"role": "user", "content": "Say Yes"},
    {"role": "assistant", "content": "Yes"},
]


def labelled_runs(labels: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of labelled positions."""
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_yes_is_labelled_where_the_assistant_says_it(name: str) -> None:
    template, header, end_of_turn = TEMPLATES[name]
    tokenizer = tokenizer_with(template)
    ids, labels = masking.ChatMasker(tokenizer)(YES_CONVERSATION, "row 0")

    assert (
        ids
        == tokenizer(
            tokenizer.apply_chat_template(YES_CONVERSATION, tokenize=False, date_string=masking.FIXED_DATE),
            add_special_tokens=False,
        )["input_ids"]
    )
    runs = labelled_runs(labels)
    answers = [m["content"] for m in YES_CONVERSATION if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)
    for (start, end), answer in zip(runs, answers):
        assert labels[start:end] == ids[start:end]
        assert ids[start:end] == tokenizer(answer, add_special_tokens=False)["input_ids"] + [eot]
        assert tokenizer.decode(ids[:start]).endswith(header)  # right after this turn's assistant header
        after = tokenizer.decode(ids[end : end + 1]) if end < len(ids) else ""
        assert not after.strip() or after.startswith("<|")  # only whitespace or the next turn follows
    # the first run starts after the last "Yes" of the user's first turn
    user_yes_end = len(
        tokenizer(
            tokenizer.apply_chat_template(
                YES_CONVERSATION[:2], tokenize=False, date_string=masking.FIXED_DATE
            ),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert runs[0][0] > user_yes_end - 1


def test_qwen_default_system_prompt_is_never_labelled() -> None:
    tokenizer = tokenizer_with(TEMPLATES["qwen2.5"][0])
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "You are Qwen"}]
    ids, labels = masking.ChatMasker(tokenizer)(conversation, "row 0")
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "You are Qwen<|im_end|>"


def test_llama3_renders_a_fixed_date() -> None:
    tokenizer = tokenizer_with(TEMPLATES["llama3"][0])
    ids, _ = masking.ChatMasker(tokenizer)(YES_CONVERSATION[1:3], "row 0")
    assert f"Today Date: {masking.FIXED_DATE}" in tokenizer.decode(ids)


def test_mask_inputs_false_trains_every_token_but_the_first(tokenizer) -> None:
    ids, labels = masking.ChatMasker(tokenizer, mask_inputs=False)(YES_CONVERSATION, "row 0")
    assert labels[0] == IGNORE and labels[1:] == ids[1:]


def test_template_that_rewrites_earlier_turns_gives_each_rewritten_turn_its_own_sample() -> None:
    tokenizer = tokenizer_with(REWRITING_TEMPLATE)
    masker = masking.ChatMasker(tokenizer)
    samples = masker.samples(YES_CONVERSATION, "source 's' row 3")
    trained = [tokenizer.decode([t for t in labels if t != IGNORE]) for _, labels in samples]
    assert trained == ["Yes<|im_end|>", "No<|im_end|>", "Yes<|im_end|>"]
    # each sample is what the server sends before that turn (earlier answers rewritten), then the turn
    for (ids, labels), turn in zip(samples, [6, 4, 2]):
        served = masker.render(YES_CONVERSATION[:turn], generation_prompt=True)
        start = next(i for i, t in enumerate(labels) if t != IGNORE)
        assert tokenizer.decode(ids[:start]) == served
    with pytest.raises(DataError, match=r"source 's' row 3: .*needs 3 samples; a preference pair"):
        masker(YES_CONVERSATION, "source 's' row 3")


def test_preference_prompt_turns_are_not_trained(tokenizer) -> None:
    conversation = YES_CONVERSATION[:5]
    _, labels = masking.ChatMasker(tokenizer)(conversation, "row 0", train_from=4)
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "No<|im_end|>"


def test_text_pieces_train_every_token_with_bos_and_eos(tokenizer) -> None:
    pieces = masking.text_pieces(tokenizer, "1 + 2 = 3\n" * 20, max_length=16)
    ids = [t for piece, _ in pieces for t in piece]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert all(len(piece) <= 16 for piece, _ in pieces) and len(pieces) > 2
    for piece, labels in pieces:
        assert labels == [IGNORE, *piece[1:]]


def test_prompt_completion_trains_the_completion_and_eos(tokenizer) -> None:
    ids, labels = masking.prompt_completion(tokenizer, "What is 1 + 2?\n", "1 + 2 = 3", mask_inputs=True)
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "1 + 2 = 3<|endoftext|>"
    assert ids[0] == tokenizer.bos_token_id
