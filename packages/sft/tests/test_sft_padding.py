"""Padding is masked: the default (longest sample rounded up to 8) and ArcticTraining's
`div_length = 256` must give the same run, while padding far fewer positions."""

from __future__ import annotations

import pytest
from sft_support import read_metrics, train_in_process

RECIPE = """
type = "sft"
micro_batch_size = 4
gradient_accumulation_steps = 2
train_iters = 3
seed = 5

[model]
name_or_path = "{model}"
dtype = "fp32"
attn_implementation = "sdpa"

[data]
sources = ["{data}"]
max_length = 512
dl_num_workers = 0

[optimizer]
lr = 1e-3

[logger]
progress_bar = false
"""


def test_default_padding_gives_the_losses_of_div_length_256(tmp_path, tiny_model_dirs, chat_data):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(model=tiny_model_dirs["untied"], data=chat_data))
    runs, widths = {}, {}
    for name, extra in (("default", []), ("div256", ["data.div_length=256"])):
        out = tmp_path / name
        trainer = train_in_process(recipe, [f"logger.output_dir={out}", *extra])
        runs[name] = read_metrics(out / "metrics.jsonl")
        rows = [trainer.train_dataset[i] for i in range(4)]
        widths[name] = trainer.collate(rows)["input_ids"].shape[1]
    longest = max(len(trainer.train_dataset[i]["input_ids"]) for i in range(4))
    assert widths["div256"] == 256 and widths["default"] == -(-longest // 8) * 8 < 256
    old, new = runs["div256"], runs["default"]
    assert len(old) == len(new) == 3
    assert [r["tokens"] for r in new] == [r["tokens"] for r in old]  # real tokens, not padding
    for a, b in zip(new, old):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-7, abs=0)  # a few fp32 ulps: other kernel shapes
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert [r["loss"] for r in new] != [new[0]["loss"]] * 3  # it trained: the losses moved
