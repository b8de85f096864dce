"""ArcticTraining's recipe keys (docs/arctictraining.md): accepted with their meaning, warned about, or refused.

The recipes here are written from ArcticTraining's documented key list (its config classes), one
family per test; `arctic config check` and `config show` run in-process (no training).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from arctic_core.cli import cli
from arctic_core.compat import liger
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.recipe import load_recipe
from arctic_core.testing import datasets


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def check(recipe: Path) -> tuple[int, str]:
    """`arctic config check RECIPE` in-process: (exit code as `arctic` gives it, output)."""
    result = CliRunner().invoke(cli, ["config", "check", str(recipe)])
    error = result.exception
    code = error.exit_code if isinstance(error, ArcticError) else result.exit_code
    return code, result.output + (str(error) if error else "")


def show(recipe: Path) -> dict:
    result = CliRunner().invoke(cli, ["config", "show", str(recipe)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from arctic_core.testing import models

    return str(models.save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0))


def test_trainer_model_tokenizer_optimizer_scheduler_logger_keys(tmp_path, model_dir):
    recipe = write(
        tmp_path,
        f"""
        type: sft
        skip_validation: false
        epochs: 1
        loss_log_interval: 1
        train_log_iter_interval: 1
        eval_log_iter_interval: 1
        train_log_metrics_path: metrics.jsonl
        gradient_accumulation_steps: 2
        micro_batch_size: 1
        sequence_parallel_size: 1
        expert_parallel_size: 1
        arctic_moe: false
        activation_checkpoint_cpu_offload: false
        tiled_mlp_compute: false
        seed: 7
        train_iters: 2K
        exit_iteration: 10
        exit_iteration_this_run: 6
        min_iterations: 30
        overfit_first_batch: false
        mem_profiler: null
        mem_profiler_max_entries: 100_000
        kill_switch_path: /tmp/at_kill_switch
        model:
          type: liger
          name_or_path: {model_dir}
          dtype: bfloat
          save_name: my-model
          attn_implementation: sdpa
          disable_activation_checkpoint: true
          peft_config: null
          hf_config_kwargs: {{}}
        tokenizer:
          type: huggingface
          name_or_path: ""
          tokenize_kwargs: {{}}
        optimizer:
          type: cpu_adam
          weight_decay: 0.0
          betas: [0.9, 0.95]
          learning_rate: 1e-5
        scheduler:
          type: huggingface
          name: cosine_with_min_lr
          warmup_ratio: 5%
          scheduler_specific_kwargs: {{min_lr_rate: 0.1}}
        logger:
          output_dir: logs
          level: WARNING
          print_output_ranks: "*"
          file_output_ranks: [0]
        wandb:
          enable: false
          project: null
        checkpoint:
          - type: deepspeed
            output_dir: ckpt
            auto_resume: true
            save_every_n_steps: 10
        data:
          sources: [{datasets.write_dataset(tmp_path / "chat.jsonl", "chat", n=8)}]
          max_length: 4Ki
        """,
    )
    code, output = check(recipe)
    assert code == 0, output
    warned = [line for line in output.splitlines() if line.startswith("warning:")]
    for key in ("kill_switch_path", "model.save_name", "logger.file_output_ranks"):
        assert sum(key in line for line in warned) == 1, (key, warned)  # once each
    assert not any("loss_log_interval" in line or "skip_validation" in line for line in warned)
    config = show(recipe)
    assert config["seed"] == 7 and config["train_iters"] == 2000 and config["min_iterations"] == 30
    assert config["exit_iteration_this_run"] == 6 and config["gradient_accumulation_steps"] == 2
    assert config["model"]["type"] == "liger" and config["model"]["dtype"] == "bf16"
    assert config["tokenizer"]["name_or_path"] is None  # ArcticTraining's "" = the model's
    assert config["optimizer"] == {
        **config["optimizer"],
        "type": "cpu_adam",
        "lr": 1e-5,
        "betas": [0.9, 0.95],
    }
    assert config["scheduler"]["name"] == "cosine" and config["scheduler"]["min_lr_ratio"] == 0.1
    assert config["scheduler"]["warmup_ratio"] == 0.05
    assert config["logger"]["print_output_ranks"] == "*" and config["wandb"]["project"] is None
    assert config["checkpoint"][0]["auto_resume"] is True and config["data"]["max_length"] == 4096
    again = write(tmp_path, yaml.safe_dump(config), "shown.yaml")
    assert show(again) == config  # `config show` is a fixed point


def test_data_and_source_keys(tmp_path, model_dir):
    chat = datasets.write_dataset(tmp_path / "chat.jsonl", "chat", n=8)
    recipe = write(
        tmp_path,
        f"""
        type: sft
        model: {{name_or_path: {model_dir}}}
        data:
          type: sft
          max_length: 512
          div_length: 64
          mask_inputs: true
          always_max_length: true
          pad_to: div_length
          filter_samples: false
          drop_last: true
          fuse_positions_prob: 0.1
          repeat_to_pack_max_length: false
          ignore_empty_think: false
          num_proc: 4
          dl_num_workers: 1
          seed: 3
          use_data_cache: true
          cache_processed_data: true
          cache_dir: data-cache
          cache_fs_type: auto
          fail_on_missing_cache: false
          train_eval_split: [1.0, 0.0]
          sources:
            - type: huggingface_instruct
              name_or_path: {chat}
              split: ""
              role_mapping: {{user: messages.role.user, assistant: messages.role.assistant}}
              content_key: content
              sample_count: 4
              sample_seed: 1
              process: true
              kwargs: {{verification_mode: no_checks}}
            - type: huggingface_causal
              name_or_path: org/books:train[:10]
              column: body
            - type: ProjectGutenbergSFT
              name_or_path: manu/project_gutenberg
              split: en
            - type: huggingface
              name_or_path: my/ultrachat-copy
              split_mapping: {{train: train_sft, eval: test_sft}}
        """,
    )
    code, output = check(recipe)
    assert code == 0, output
    for key in (
        "data.use_data_cache",
        "data.cache_processed_data",
        "data.drop_last",
        "data.fuse_positions_prob",
    ):
        assert key in output, key
    assert "data.always_max_length" in output and "ProjectGutenbergSFT" in output
    data = show(recipe)["data"]
    assert data["pack_samples"] is True and data["filter_samples"] is False and data["seed"] == 3
    instruct, causal, gutenberg, plain = data["sources"]
    assert instruct["type"] is None and instruct["role_mapping"]["content"] == "content"
    assert instruct["role_mapping"]["user"] == "messages.role.user" and instruct["sample_count"] == 4
    assert causal == {**causal, "name_or_path": "org/books", "split": "train[:10]", "format": "text"}
    assert causal["role_mapping"] == {"text": "body"}
    assert gutenberg["format"] == "text" and gutenberg["split"] == "en"
    assert plain["type"] == "huggingface" and plain["split_mapping"] == {
        "train": "train_sft",
        "eval": "test_sft",
    }


def test_source_types_load_from_local_files(tmp_path):
    """huggingface_instruct (conversation paths, content_key), huggingface_causal (column), Gutenberg."""
    from arctic_core.config import SourceConfig
    from arctic_core.data.formats import RoleMapping, normalize
    from arctic_core.data.sources import load_source, split_of

    turns = [{"from": "human", "said": "2+2?"}, {"from": "bot", "said": "4"}]
    instruct = datasets.write_rows(tmp_path / "dialogs.jsonl", [{"dialog": turns}])
    books = datasets.write_rows(tmp_path / "books.jsonl", [{"body": "Call me Ishmael.", "id": 1}])
    recipe = write(
        tmp_path,
        f"""
        type: sft
        model: {{name_or_path: m}}
        data:
          sources:
            - type: huggingface_instruct
              name_or_path: {instruct}
              role_mapping: {{user: dialog.from.human, assistant: dialog.from.bot}}
              content_key: said
            - type: huggingface_causal
              name_or_path: {books}
              column: body
            - type: ProjectGutenbergSFT
              name_or_path: {books}
              column: body
        """,
    )
    sources = load_recipe(recipe).config.data.sources
    rows = []
    for i, source in enumerate(sources):
        table = load_source(source, "train", tmp_path / "scratch")
        mapping = RoleMapping.parse(source.role_mapping, f"data.sources[{i}].role_mapping")
        rows.append(normalize(table[0], source.format, mapping, f"source {i}"))
    assert rows[0]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert rows[1]["text"] == rows[2]["text"] == "Call me Ishmael."
    mapped = SourceConfig(name_or_path="x", split="train[:5]", split_mapping={"train": "train_sft"})
    assert split_of(mapped, "train") == "train_sft[:5]"
    assert (
        split_of(
            SourceConfig(name_or_path="x", split="train_sft", split_mapping={"train": "train_sft"}), "train"
        )
        == "train_sft"
    )


def test_dpo_keys(tmp_path, model_dir):
    recipe = write(
        tmp_path,
        f"""
        type: dpo
        beta: 0.2
        label_smoothing: 0.1
        ignore_label_index: -100
        reference_model_deepspeed: {{}}
        model: {{name_or_path: {model_dir}, type: liger}}
        ref_model: {{name_or_path: {model_dir}, type: liger}}
        tokenizer: {{type: ""}}
        optimizer: {{type: ""}}
        scheduler: {{type: wds, num_warmup_steps: 2, num_decay_steps: 3, min_lr_ratio: 0.1}}
        data:
          max_length: 1024
          max_prompt_length: 512
          dpo_prompt_truncation_mode: keep_start
          sources: [{datasets.write_dataset(tmp_path / "pref.jsonl", "preference", n=4)}]
        """,
    )
    code, output = check(recipe)
    assert code == 0, output
    config = show(recipe)
    assert config["data"]["prompt_truncation"] == "keep_start" and config["data"]["max_prompt_length"] == 512
    assert config["beta"] == 0.2 and config["ref_model"]["type"] == "liger"
    assert config["optimizer"]["type"] == "adamw" and config["scheduler"]["name"] == "wsd"
    assert config["scheduler"]["num_decay_steps"] == 3 and "tokenizer" not in output


def test_keys_arctic_does_not_have_are_refused_together_with_reasons(tmp_path, model_dir):
    recipe = write(
        tmp_path,
        f"""
        type: dpo
        expert_parallel_size: 8
        arctic_moe: true
        enable_routing_replay: true
        overfit_first_batch: true
        mem_profiler: step
        ignore_label_index: -1
        reference_model_deepspeed: {{zero_optimization: {{stage: 3}}}}
        model: {{name_or_path: {model_dir}}}
        tokenizer: {{type: sentencepiece}}
        scheduler: {{name: polynomial, scheduler_specific_kwargs: {{power: 2.0}}}}
        data:
          fail_on_missing_cache: true
          sources:
            - type: snowflake
              sql: SELECT TEXT FROM T
              column_mapping: {{TEXT: text}}
        """,
    )
    code, output = check(recipe)
    assert code == 2, output
    for key in (
        "expert_parallel_size",
        "arctic_moe",
        "enable_routing_replay",
        "overfit_first_batch",
        "mem_profiler",
        "ignore_label_index",
        "reference_model_deepspeed",
        "tokenizer.type",
        "scheduler.name",
        "scheduler.scheduler_specific_kwargs.power",
        "data.fail_on_missing_cache",
        "data.sources[0].type",
    ):
        assert f"{key}: Arctic does not have this ArcticTraining key" in output, key
    assert "Snowflake" in output and "ZeRO" in output and "Traceback" not in output


def test_code_resolves_beside_the_recipe_and_arctictraining_files_are_recognised(
    tmp_path, model_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "projects" / "swiftkv"
    write(
        project,
        "from arctic_training import SFTTrainer\n\nclass SwiftKVTrainer(SFTTrainer):\n    name = 'swiftkv'\n",
        "train.py",
    )
    body = f"model: {{name_or_path: {model_dir}, num_key_value_layers: 1}}\ndata: {{max_length: 64}}\n"
    ours = write(project / "configs", f"type: swiftkv\ncode: ../train.py\n{body}")
    loaded = load_recipe(ours)  # found beside the recipe although the working directory is elsewhere
    assert type(loaded.config).__name__ == "SwiftKVConfig"
    assert any("written for ArcticTraining" in note and "'swiftkv'" in note for note in loaded.notes)
    theirs = write(project / "configs", f"type: moba\ncode: ../train.py\n{body}", "moba.yaml")
    code, output = check(theirs)
    assert code == 2 and "need porting" in output and "docs/arctictraining.md" in output
    default = write(project, f"type: moba\n{body}", "default.yaml")  # train.py beside it is the default
    code, output = check(default)
    assert code == 2 and str(project / "train.py") in output


def test_liger_without_a_gpu_warns_and_on_a_gpu_without_the_package_stops(caplog):
    from arctic_core.testing import models

    model = models.tiny_model(arch="llama", seed=0)
    with caplog.at_level(logging.WARNING, logger="test.liger"):
        assert liger.apply_liger(model, cuda=False, log=logging.getLogger("test.liger")) is False
    assert "model.type = 'liger'" in caplog.text and "CUDA" in caplog.text
    if liger.installed():
        pytest.skip("liger-kernel is installed here: the missing-package path cannot be shown")
    assert "arctic-core[liger]" in caplog.text
    with pytest.raises(ArcticError, match=r"arctic-core\[liger\]"):
        liger.apply_liger(model, cuda=True, log=logging.getLogger("test.liger"))


def test_recipe_error_names_the_file(tmp_path):
    recipe = write(tmp_path, "type: sft\nmodel: {name_or_path: m}\nkill_switch_path: 3\nmem_profiler: e2e\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    assert str(recipe) in str(caught.value) and "mem_profiler" in str(caught.value)


def test_moe_keys_with_a_meaning_are_accepted(tmp_path, model_dir):
    recipe = write(
        tmp_path,
        f"""
        type: sft
        arctic_moe: auto
        expert_parallel_size: 1
        enable_arctic_moe_custom_optimization: false
        model: {{name_or_path: {model_dir}}}
        optimizer: {{type: cpu_adam_moe}}
        data:
          sources: [{datasets.write_dataset(tmp_path / "chat.jsonl", "chat", n=8)}]
        """,
    )
    code, output = check(recipe)
    assert code == 0, output
    warned = [line for line in output.splitlines() if line.startswith("warning:")]
    assert any("arctic_moe = 'auto'" in line and "transformers' MoE blocks" in line for line in warned)
    assert any("'cpu_adam_moe' read as 'cpu_adam'" in line for line in warned)
    assert show(recipe)["optimizer"]["type"] == "cpu_adam"
