"""Preference data for DPO: pair batches, prompt truncation, layouts, and the recipe checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from arctic_core.errors import RecipeError
from arctic_core.recipe import load_recipe
from arctic_core.testing import preference_rows, ultrafeedback_rows, write_hub_layout, write_rows
from arctic_sft.dpo_data import DPODataFactory, prompt_length

pytest_plugins = ["arctic_core.testing.fixtures"]


def _config(tmp_path: Path, sources: list[Any], **data: Any) -> Any:
    recipe = {
        "type": "dpo",
        "model": {"name_or_path": "unused"},
        "data": {"sources": sources, "cache_dir": str(tmp_path / "cache"), "div_length": 8, **data},
    }
    return load_recipe(None, data=recipe).config


def _factory(tmp_path: Path, tokenizer: Any, sources: list[Any], **data: Any) -> DPODataFactory:
    return DPODataFactory(_config(tmp_path, sources, **data), tokenizer, run_dir=tmp_path / "run")


@pytest.mark.parametrize("as_messages", [False, True])
def test_pairs_collate_as_chosen_rows_then_rejected_rows(tmp_path, tiny_tokenizer, as_messages):
    rows = preference_rows(6, seed=0, as_messages=as_messages)
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    factory = _factory(tmp_path, tiny_tokenizer, [str(path)])
    data = factory.train_dataset()
    batch = factory.collate([data[i] for i in range(3)])
    assert set(batch) == {
        "input_ids",
        "labels",
        "position_ids",
        "attention_mask",
        "num_pairs",
        "num_tokens",
        "num_trainable_tokens",
    }
    assert batch["input_ids"].shape[0] == 6 and int(batch["num_pairs"]) == 3
    for i in range(3):
        for side, row in (("chosen", i), ("rejected", 3 + i)):
            n = len(data[i][f"{side}_input_ids"])
            assert batch["input_ids"][row, :n].tolist() == data[i][f"{side}_input_ids"]
            assert batch["attention_mask"][row].sum() == n
            answer = tiny_tokenizer.decode([t for t in batch["labels"][row].tolist() if t != -100])
            original = rows[i][side] if not as_messages else rows[i][side][0]["content"]
            assert answer.startswith(original)
        chosen = data[i]["chosen_input_ids"][: prompt_length(data[i]["chosen_labels"])]
        assert "What is" in tiny_tokenizer.decode(chosen)  # the prompt, masked, in front of the answer


def test_ultrafeedback_layout_is_read_from_a_hub_folder(tmp_path, tiny_tokenizer):
    folder = write_hub_layout(
        tmp_path,
        "HuggingFaceH4/ultrafeedback_binarized",
        {"train_prefs": ultrafeedback_rows(8, seed=0), "test_prefs": ultrafeedback_rows(4, seed=1)},
    )
    factory = _factory(tmp_path, tiny_tokenizer, [f"{folder}:train"], **{"eval_sources": [f"{folder}:test"]})
    assert len(factory.train_dataset()) == 8 and len(factory.eval_dataset()) == 4
    row = factory.train_dataset()[0]
    user_turns = tiny_tokenizer.decode(row["chosen_input_ids"]).count("<|im_start|>user")
    assert user_turns == 1  # the shared user turn is the prompt, not repeated in the answer


def _long_prompt_pair() -> dict[str, Any]:
    prompt = " ".join(f"w{i}" for i in range(40)) + " END"
    return {"prompt": "START " + prompt, "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize("keep", ["keep_end", "keep_start"])
def test_long_prompts_are_cut_the_same_way_on_both_sides(tmp_path, tiny_tokenizer, keep):
    path = write_rows(tmp_path / "long.jsonl", [_long_prompt_pair()] * 2)
    factory = _factory(
        tmp_path, tiny_tokenizer, [str(path)], max_length=64, max_prompt_length=24, prompt_truncation=keep
    )
    row = factory.train_dataset()[0]
    for side, answer in (("chosen", "yes"), ("rejected", "no")):
        labels = row[f"{side}_labels"]
        assert prompt_length(labels) == 24 and labels[0] == -100
        prompt = tiny_tokenizer.decode(row[f"{side}_input_ids"][:24])
        assert ("END" in prompt) == (keep == "keep_end") and ("START" in prompt) == (keep == "keep_start")
        assert tiny_tokenizer.decode([t for t in labels if t != -100]).startswith(answer)
    assert factory.summary()["train"]["sources"][0]["truncated"] == 2


def test_too_long_pairs_are_dropped_or_cut(tmp_path, tiny_tokenizer):
    rows = [_long_prompt_pair(), {"prompt": "Hi", "chosen": "yes", "rejected": "no"}]
    path = write_rows(tmp_path / "mixed.jsonl", rows)
    assert len(_factory(tmp_path, tiny_tokenizer, [str(path)], max_length=32).train_dataset()) == 1
    kept = _factory(tmp_path, tiny_tokenizer, [str(path)], max_length=40, max_prompt_length=30)
    assert len(kept.train_dataset()) == 2
    assert max(len(r["chosen_input_ids"]) for r in kept.train_dataset()) <= 40


def test_non_preference_sources_are_refused(tmp_path, tiny_tokenizer, chat_jsonl):
    from arctic_core.data.errors import DataError

    with pytest.raises(DataError, match="preference pairs"):
        _factory(tmp_path, tiny_tokenizer, [str(chat_jsonl)]).train_dataset()


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"data": {"pack_samples": True}}, "data.pack_samples"),
        ({"data": {"max_length": 64, "max_prompt_length": 64}}, "data.max_prompt_length"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"beta": 0}, "beta"),
        ({"loss_type": "hinge"}, "loss_type"),
        ({"data": {"prompt_truncation": "middle"}}, "data.prompt_truncation"),
    ],
)
def test_bad_settings_name_their_key(changes, path):
    recipe: dict[str, Any] = {"type": "dpo", "model": {"name_or_path": "unused"}}
    for key, value in changes.items():
        recipe[key] = value
    with pytest.raises(RecipeError) as info:
        load_recipe(None, data=recipe)
    assert path in str(info.value)


def test_collate_carries_precomputed_reference_log_probs(tmp_path, tiny_tokenizer):
    path = write_rows(tmp_path / "pairs.jsonl", preference_rows(4, seed=0))
    factory = _factory(tmp_path, tiny_tokenizer, [str(path)])
    rows = [
        {**factory.train_dataset()[i], "ref_chosen_logps": -1.5 * i, "ref_rejected_logps": -2.0}
        for i in range(2)
    ]
    batch = factory.collate(rows)
    torch.testing.assert_close(batch["ref_chosen_logps"], torch.tensor([0.0, -1.5]))
    torch.testing.assert_close(batch["ref_rejected_logps"], torch.tensor([-2.0, -2.0]))


def test_agentic_pairs_train_tool_calls_and_answers_not_tool_results(tmp_path, tiny_tokenizer):
    import json

    from arctic_sft.agentic_tiny import CALCULATOR, CHAT_TEMPLATE

    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "calculator", "arguments": {"expression": "2 + 2"}},
    }
    row = {
        "prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
        "chosen": [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "4"},
            {"role": "assistant", "content": "4"},
        ],
        "rejected": [{"role": "assistant", "content": "5"}],
        "tools": json.dumps([CALCULATOR]),
    }
    factory = _factory(tmp_path, tiny_tokenizer, [str(write_rows(tmp_path / "pairs.jsonl", [row, row]))])
    pair = factory.train_dataset()[0]

    def trained(side: str) -> str:
        return tiny_tokenizer.decode([t for t in pair[f"{side}_labels"] if t != -100])

    call_text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call><|im_end|>'
    )
    assert trained("chosen") == call_text + "4<|im_end|>"  # the tool's "4" is context, not trained
    assert trained("rejected") == "5<|im_end|>"
    assert "<|im_start|>tool\n4<|im_end|>" in tiny_tokenizer.decode(pair["chosen_input_ids"])
