"""Tests for `arctic_core.testing`: the shipped tokenizer, tiny models, dataset writers and fixtures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import datasets as hf_datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import arctic_core
from arctic_core import testing as kit

pytest_plugins = ["arctic_core.testing.fixtures"]

SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5"},
]
NESTED_KINDS = {"chat", "sharegpt", "ultrafeedback"}
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# --- tokenizer -------------------------------------------------------------------------------------


def test_special_tokens_are_single_distinct_ids(tiny_tokenizer):
    ids = [tiny_tokenizer.encode(token) for token in SPECIALS]
    assert all(len(i) == 1 for i in ids), ids
    assert len({i[0] for i in ids}) == 4
    assert tiny_tokenizer.eos_token == "<|endoftext|>" and tiny_tokenizer.bos_token == "<|begin_of_text|>"
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.bos_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.pad_token is None and tiny_tokenizer.pad_token_id is None
    assert tiny_tokenizer.is_fast and len(tiny_tokenizer) == 1024
    assert tiny_tokenizer.model_max_length == 2048


def test_bos_is_added_only_when_asked(tiny_tokenizer):
    assert tiny_tokenizer("hello")["input_ids"][0] != tiny_tokenizer.bos_token_id
    with_bos = AutoTokenizer.from_pretrained(kit.TOKENIZER_DIR, add_bos_token=True)
    ids = with_bos("hello")["input_ids"]
    assert ids[0] == with_bos.bos_token_id and ids[1:] == tiny_tokenizer("hello")["input_ids"]


def test_chat_template_renders_chatml(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5<|im_end|>\n"
    )
    assert text == expected
    prompt = tiny_tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"
    assert not re.search(r"{%-?\s*generation", tiny_tokenizer.chat_template)
    ids = tiny_tokenizer(text)["input_ids"]
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")) == 3
    assert tiny_tokenizer.decode(ids) == text


def test_digits_are_one_token_each(tiny_tokenizer):
    for digit in "0123456789":
        assert len(tiny_tokenizer.encode(digit)) == 1
    tokens = tiny_tokenizer.tokenize("12 + 7 = 190")
    assert [t for t in tokens if re.fullmatch(r"\d", t)] == ["1", "2", "7", "1", "9", "0"]
    assert all(not re.search(r"\d\d", t) for t in tokens)
    assert tiny_tokenizer.decode(tiny_tokenizer.encode("12 + 7 = 19, café!")) == "12 + 7 = 19, café!"


def test_tiny_tokenizer_returns_independent_copies():
    first = kit.tiny_tokenizer()
    first.pad_token = first.eos_token
    assert kit.tiny_tokenizer().pad_token is None


def test_tokenizer_is_package_data():
    package_dir = Path(arctic_core.__file__).parent
    assert (package_dir / "testing" / "tokenizer") == kit.TOKENIZER_DIR
    assert sorted(p.name for p in kit.TOKENIZER_DIR.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_importing_arctic_core_does_not_import_torch():
    code = "import sys, arctic_core; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_config_matches_tokenizer(arch, tiny_tokenizer):
    config = kit.tiny_config(arch)
    assert config.model_type == arch
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 64, 128)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == len(tiny_tokenizer) and config.max_position_embeddings == 2048
    assert config.eos_token_id == tiny_tokenizer.eos_token_id
    assert config.bos_token_id == tiny_tokenizer.bos_token_id
    assert config.pad_token_id is None and not config.tie_word_embeddings
    assert kit.tiny_config(arch, num_hidden_layers=3).num_hidden_layers == 3


def test_tiny_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        kit.tiny_config("gpt2")


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_seed_same_weights_and_caller_rng_untouched():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = kit.tiny_model(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(5)  # moving the caller's RNG must not change the model
    assert _weights_equal(first, kit.tiny_model(seed=3))
    other = kit.tiny_model(seed=4)
    embed = "model.embed_tokens.weight"
    assert not torch.equal(first.state_dict()[embed], other.state_dict()[embed])
    assert not _weights_equal(first, other)


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_archs_build_and_run(arch):
    model = kit.tiny_model(arch, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and type(model).__name__.lower().startswith(arch)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 1024)


def test_tie_word_embeddings_override():
    model = kit.tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    untied = kit.tiny_model()
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()


def test_saved_model_reloads_with_same_logits(tiny_model_dir):
    assert (tiny_model_dir / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.pad_token is None and tokenizer.chat_template == kit.tiny_tokenizer().chat_template
    ids = tokenizer("What is 12 + 7?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, kit.tiny_model(seed=0)(ids).logits)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert generation.eos_token_id == [tokenizer.eos_token_id, im_end]


# --- datasets --------------------------------------------------------------------------------------


def _load(path: Path, cache: Path) -> list[dict]:
    builder = {"jsonl": "json"}.get(path.suffix[1:], path.suffix[1:])
    extra = {"keep_default_na": False} if builder == "csv" else {}
    return hf_datasets.load_dataset(
        builder, data_files=str(path), split="train", cache_dir=str(cache), **extra
    ).to_list()


@pytest.mark.parametrize("fmt", kit.FORMATS)
@pytest.mark.parametrize("kind", sorted(kit.GENERATORS))
def test_writers_round_trip(kind, fmt, tmp_path):
    rows = kit.GENERATORS[kind](6, seed=1)
    path = tmp_path / f"{kind}.{fmt}"
    if fmt == "csv" and kind in NESTED_KINDS:
        with pytest.raises(ValueError, match="nested"):
            kit.write_rows(path, rows)
        return
    kit.write_rows(path, rows)
    assert _load(path, tmp_path / "cache") == rows


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_message_preferences_round_trip(fmt, tmp_path):
    rows = kit.preference_rows(5, seed=2, as_messages=True)
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    assert _load(kit.write_rows(tmp_path / f"prefs.{fmt}", rows), tmp_path / "cache") == rows


def test_write_rows_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        kit.write_rows(tmp_path / "rows.txt", [{"text": "a"}])


def _assert_correct(equation: str) -> None:
    left, right = equation.split(" = ")
    a, op, b = left.split(" ")
    assert int(right) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0, equation


def test_generators_are_seeded_and_correct():
    for kind, generate in kit.GENERATORS.items():
        assert generate(8, seed=5) == generate(8, seed=5), kind
        assert generate(8, seed=5) != generate(8, seed=6), kind
    for row in kit.arithmetic_conversations(50, seed=0):
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and roles.count("system") <= 1
        for message in row["messages"]:
            if message["role"] == "assistant":
                _assert_correct(message["content"])
    for row in kit.ultrafeedback_rows(50, seed=0):
        _assert_correct(row["chosen"][-1]["content"])
        assert row["chosen"][0] == row["rejected"][0] == {"role": "user", "content": row["prompt"]}
        assert row["rejected"][-1] != row["chosen"][-1] and row["score_chosen"] > row["score_rejected"]
    assert {r["input"] == "" for r in kit.alpaca_rows(20)} == {True, False}
    assert {r["conversations"][0]["from"] for r in kit.sharegpt_conversations(20)} == {"system", "human"}


def test_hub_layout_loads_by_split_name(tmp_path):
    splits = {"train_sft": kit.ultrafeedback_rows(7, seed=0), "test_prefs": kit.ultrafeedback_rows(3, seed=1)}
    folder = kit.write_hub_layout(tmp_path, "arctic/tiny-feedback", splits)
    assert (folder / "data" / "train_sft-00000-of-00001.parquet").is_file()
    cache = str(tmp_path / "cache")
    for split, rows in splits.items():
        assert hf_datasets.load_dataset(str(folder), split=split, cache_dir=cache).to_list() == rows
    assert set(hf_datasets.load_dataset(str(folder), cache_dir=cache)) == set(splits)


def test_hub_layout_rejects_mixed_schemas(tmp_path):
    splits = {"train_sft": kit.arithmetic_conversations(2), "test_prefs": kit.ultrafeedback_rows(2)}
    with pytest.raises(ValueError, match="columns"):
        kit.write_hub_layout(tmp_path, "mixed", splits)


# --- fixtures --------------------------------------------------------------------------------------


def test_offline_env_is_set(offline_env):
    assert offline_env == OFFLINE_ENV
    assert all(os.environ[key] == value for key, value in OFFLINE_ENV.items())


def test_chat_jsonl_fixture(chat_jsonl, tmp_path):
    rows = _load(chat_jsonl, tmp_path / "cache")
    assert rows == kit.arithmetic_conversations(32, seed=0)
