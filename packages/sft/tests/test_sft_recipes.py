"""The shipped recipes and the seed README's quickstart, run as a user runs them.

Real-world recipes keep everything but the model and data locations, which `--set` points
at local fixtures with the real schema and split names (a tiny Llama; an UltraChat-shaped
folder laid out like the hub repository).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from sft_support import REPO, arctic, read_metrics
from transformers import AutoModelForCausalLM, AutoTokenizer

from arctic_core.testing import IM_END_TOKEN
from arctic_core.testing.datasets import arithmetic_conversations, write_hub_layout

RECIPES = REPO / "packages" / "sft" / "recipes"


def ultrachat_rows(n: int, seed: int, turns: int) -> list[dict]:
    """Rows with UltraChat 200k's columns: prompt, prompt_id, messages."""
    rows = []
    for i, row in enumerate(arithmetic_conversations(n, seed=seed, max_turns=turns, system_prob=0.0)):
        messages = row["messages"]
        rows.append({"prompt": messages[0]["content"], "prompt_id": f"{seed}-{i}", "messages": messages})
    return rows


def ultrachat(root: Path, train: int, test: int, turns: int = 3) -> Path:
    splits = {"train_sft": ultrachat_rows(train, 0, turns), "test_sft": ultrachat_rows(test, 1, turns)}
    return write_hub_layout(root, "ultrachat_200k", splits)


@pytest.mark.slow
def test_smollm2_recipe_trains_two_steps_on_local_fixtures(tmp_path, tiny_model_dirs):
    data = ultrachat(tmp_path / "hub", train=420, test=8, turns=6)
    out = arctic(
        "train",
        str(RECIPES / "smollm2-135m-ultrachat.yaml"),
        "--set",
        f"model.name_or_path={tiny_model_dirs['untied']}",
        "--set",
        f"data.sources[0].name_or_path={data}",
        "--set",
        f"data.eval_sources[0].name_or_path={data}",
        cwd=tmp_path,
    )
    metrics = read_metrics(tmp_path / "runs" / "smollm2-135m-ultrachat" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2], out[-2000:]
    assert (tmp_path / "smollm2-135m-ultrachat" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_llama_8b_zero3_recipe_trains_two_steps_on_two_cpu_ranks(tmp_path, tiny_model_dirs):
    data = ultrachat(tmp_path / "hub", train=16, test=4)
    arctic(
        "train",
        str(RECIPES / "llama-3.1-8b-ultrachat-zero3.yaml"),
        "--num_gpus",
        "2",
        "--set",
        f"model.name_or_path={tiny_model_dirs['untied']}",
        "--set",
        f"data.sources[0].name_or_path={data}",
        cwd=tmp_path,
    )
    metrics = read_metrics(tmp_path / "runs" / "llama-3.1-8b-ultrachat-zero3" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama-3.1-8b-ultrachat")
    assert model.config.num_hidden_layers == 2  # the gathered ZeRO-3 export of the tiny model


SEED_QUICKSTART = """
type: sft
micro_batch_size: 2
model:
  name_or_path: {model}
data:
  sources:
    - {data}
checkpoint:
  - type: huggingface
    save_end_of_training: true
    output_dir: ./fine-tuned-model
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train"], ["sft", "train"]])
def test_seed_readme_quickstart_recipe(tmp_path, tiny_model_dirs, command):
    from arctic_core.testing.datasets import write_dataset

    data = write_dataset(tmp_path / "chat.jsonl", "chat", n=16, seed=0)
    recipe = tmp_path / "sft-recipe.yaml"
    recipe.write_text(textwrap.dedent(SEED_QUICKSTART.format(model=tiny_model_dirs["untied"], data=data)))
    arctic("config", "check", str(recipe), cwd=tmp_path)
    arctic(*command, str(recipe), cwd=tmp_path)
    saved = tmp_path / "fine-tuned-model"
    model = AutoModelForCausalLM.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    im_end = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    assert im_end in model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.slow
def test_quickstart_learns_and_stops_at_end_of_turn(tmp_path):
    """Run from outside the repository: the recipe's paths are relative to the recipe file."""
    arctic(
        "train",
        str(RECIPES / "quickstart.toml"),
        "--set",
        f"logger.output_dir={tmp_path / 'run'}",
        "--set",
        f"checkpoint[0].output_dir={tmp_path / 'model'}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "2"},
    )
    scores = [json.loads(x) for x in (tmp_path / "run" / "generation_eval.jsonl").read_text().splitlines()]
    assert [s["when"] for s in scores] == ["before training", "after training"]
    assert scores[0]["accuracy"] <= 0.10
    assert scores[1]["accuracy"] >= 0.80
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    row = json.loads((RECIPES / "quickstart" / "heldout.jsonl").read_text().splitlines()[0])
    prompt = tokenizer.apply_chat_template(
        row["messages"][:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = out[0, prompt["input_ids"].shape[1] :]
    assert answer[-1].item() == tokenizer.convert_tokens_to_ids(IM_END_TOKEN)  # stopped at end of turn
    assert len(answer) < 16
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == row["messages"][1]["content"]
    assert torch.isfinite(torch.tensor(read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["loss"]))


@pytest.mark.parametrize("verb", [("plan", "--hardware", "1xH100"), ("verify",)])
def test_another_methods_command_names_the_recipes_own(tmp_path, verb):
    """`arctic dpo plan` given an sft recipe: exit 2, naming the command that takes it (not `... train`)."""
    import subprocess
    import sys

    recipe = REPO / "packages" / "sft" / "recipes" / "quickstart.toml"
    done = subprocess.run(
        [sys.executable, "-m", "arctic_core", "dpo", *verb, str(recipe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "type is 'sft', not 'dpo'" in done.stderr and "`arctic sft ...`" in done.stderr
    assert "Traceback" not in done.stderr
