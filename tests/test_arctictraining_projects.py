"""ArcticTraining's project recipes of the methods Arctic ships (sft, dpo, swiftkv, causal) train 2 steps.

Each recipe is written the way its ArcticTraining project writes it (sequence-parallelism's SFT
runs, excot's DPO, SwiftKV's distillation with `code: ../train.py`, the causal project); only
the model and data paths are pointed at local fixtures with `--set`, and the hardware keys are
the CPU's (fp32, sdpa).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from arctic_core.launch import train
from arctic_core.testing import datasets, models
from arctic_core.testing.runs import read_metrics

SFT = """
type: sft
micro_batch_size: 1
exit_iteration: 2
min_iterations: 2
sequence_parallel_size: 1
tiled_mlp_compute: false
activation_checkpoint_cpu_offload: false
model:
  type: liger
  dtype: float32
  name_or_path: meta-llama/Llama-3.1-8B-Instruct
  attn_implementation: sdpa
data:
  sources:
    - type: huggingface_instruct
      name_or_path: HuggingFaceH4/ultrachat_200k
      role_mapping: {user: messages.role.user, assistant: messages.role.assistant}
  max_length: 256
  cache_dir: data-cache
  dl_num_workers: 0
  cache_processed_data: true
logger:
  level: INFO
  output_dir: logs
  print_output_ranks: [0]
  file_output_ranks: [0]
optimizer:
  type: cpu_adam
  lr: 1e-5
scheduler:
  warmup_ratio: 0.5
"""

DPO = """
type: dpo
micro_batch_size: 2
exit_iteration: 2
beta: 0.1
ignore_label_index: -100
model: {name_or_path: /data/excot-sft-llama-8b/global_step_147, dtype: float32}
ref_model: {name_or_path: /data/excot-sft-llama-8b/global_step_147, dtype: float32}
data:
  sources: [/data-fast/excot_dpo]
  max_length: 256
  max_prompt_length: 128
  dpo_prompt_truncation_mode: keep_start
  dl_num_workers: 0
  use_data_cache: true
logger: {output_dir: logs, file_output_ranks: [0]}
optimizer: {learning_rate: 1e-6, weight_decay: 0.0}
scheduler: {warmup_ratio: 0.1}
wandb: {enable: false, project: arctic-excot}
"""

SWIFTKV = """
type: swiftkv
code: ../train.py
micro_batch_size: 1
exit_iteration: 2
logits_loss_temp: 2.0
hidden_loss_layer: -2
sequence_parallel_size: 1
model:
  name_or_path: meta-llama/Llama-3.1-8B-Instruct
  num_key_value_layers: 1
  key_value_group_size: 1
  dtype: float32
  attn_implementation: sdpa
data:
  sources:
    - type: huggingface_instruct
      name_or_path: Open-Orca/OpenOrca
      role_mapping: {user: messages.role.user, assistant: messages.role.assistant}
    - type: ProjectGutenbergSFT
      name_or_path: manu/project_gutenberg
      split: en
  max_length: 256
  dl_num_workers: 0
logger: {output_dir: logs, file_output_ranks: [0]}
optimizer: {betas: [0.9, 0.999], weight_decay: 0.0, lr: 0.0002}
scheduler: {warmup_ratio: 0.05}
"""

CAUSAL = """
type: causal
micro_batch_size: 1
exit_iteration: 2
min_iterations: 2
model: {name_or_path: meta-llama/Llama-3.1-8B, dtype: float32}
data:
  sources:
    - type: huggingface_causal
      name_or_path: manu/project_gutenberg
      column: body
      split: en[:20]
  max_length: 64
  dl_num_workers: 0
logger: {output_dir: logs}
"""

REPEATED = """
type: sft
micro_batch_size: 2
min_iterations: 5
exit_iteration_this_run: 4
model: {name_or_path: m, dtype: fp32}
data: {sources: [d], max_length: 256, dl_num_workers: 0}
logger: {output_dir: logs}
"""

ARCTICTRAINING_TRAIN_PY = """
from arctic_training import SFTTrainer


class SwiftKVTrainer(SFTTrainer):
    name = "swiftkv"
"""


@pytest.mark.slow
def test_project_recipes_train_two_steps_with_only_model_and_data_paths_changed(tmp_path: Path, monkeypatch):
    """In one process (as `arctic train RECIPE --set ...` runs a one-rank job), to pay start-up once."""
    model = models.save_tiny_model(tmp_path / "tiny", arch="llama", seed=0)
    chat = datasets.write_dataset(tmp_path / "chat.jsonl", "chat", n=16)
    pref = datasets.write_dataset(tmp_path / "pref.jsonl", "preference", n=16)
    books = datasets.write_rows(
        tmp_path / "books.jsonl",
        [{"body": row["text"], "id": i} for i, row in enumerate(datasets.text_rows(16))],
    )
    project = tmp_path / "projects"
    (project / "swiftkv").mkdir(parents=True)
    (project / "swiftkv" / "train.py").write_text(textwrap.dedent(ARCTICTRAINING_TRAIN_PY))
    runs = {
        "sft": (SFT, [f"data.sources[0].name_or_path={chat}"]),
        "dpo": (DPO, [f"ref_model.name_or_path={model}", f"data.sources[0]={pref}"]),
        "swiftkv": (
            SWIFTKV,
            [
                f"data.sources[0].name_or_path={chat}",
                f"data.sources[1].name_or_path={books}",
                "data.sources[1].column=body",
            ],
        ),
        "causal": (CAUSAL, [f"data.sources[0].name_or_path={books}"]),
    }
    for name, (text, data_paths) in runs.items():
        recipe = project / name / "configs" / f"{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(text)
        work = tmp_path / f"run-{name}"
        work.mkdir()
        monkeypatch.chdir(work)
        train(str(recipe), [f"model.name_or_path={model}", *data_paths], [], method=None, local_rank=None)
        log = (work / "logs" / "logs" / "rank_0.log").read_text()
        steps = [r for r in read_metrics(work / "logs" / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in steps] == [1, 2], (name, log[-2000:])
        assert log.count("Arctic differs from ArcticTraining by design") == 1, name
        assert log.count("logger.file_output_ranks") <= 1, name
    # min_iterations repeats the 4 samples (2 steps an epoch) in whole epochs: 3 of them, 6 steps;
    # exit_iteration_this_run stops this run after 4 of them
    few = datasets.write_dataset(tmp_path / "few.jsonl", "chat", n=4)
    recipe = tmp_path / "repeated.yaml"
    recipe.write_text(REPEATED)
    monkeypatch.chdir(tmp_path)
    train(
        str(recipe),
        [f"model.name_or_path={model}", f"data.sources[0]={few}"],
        [],
        method=None,
        local_rank=None,
    )
    log = (tmp_path / "logs" / "logs" / "rank_0.log").read_text()
    assert "training 6 optimizer steps (2 per epoch)" in log
    assert [r["step"] for r in read_metrics(tmp_path / "logs" / "metrics.jsonl") if "loss" in r] == [
        1,
        2,
        3,
        4,
    ]
    sft_log = (tmp_path / "run-sft" / "logs" / "logs" / "rank_0.log").read_text()
    assert "model.type = 'liger'" in sft_log and "data.cache_processed_data" in sft_log
    swiftkv_log = (tmp_path / "run-swiftkv" / "logs" / "logs" / "rank_0.log").read_text()
    assert "written for ArcticTraining" in swiftkv_log
