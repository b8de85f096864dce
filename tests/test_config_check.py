"""`arctic config check` refuses, in about a second, every recipe that could not train.

Each bad recipe below is the bundled SFT quickstart with one change; `check` must exit 2 and
name the key path, without reading weights or data rows, as a run would before building
anything (`arctic_core.recipe.checks`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from arctic_core.cli import main
from arctic_core.recipe.bundled import bundled_recipes

QUICKSTART = str(bundled_recipes("arctic_sft") / "quickstart.toml")

BAD = [
    # (--set overrides, key path named, words in the message)
    (["model.dtype=fp16"], "model.dtype", "CUDA"),
    (["model.peft_config={peft_type='nope'}"], "model.peft_config.peft_type", "unknown PEFT type"),
    (["deepspeed.train_batch_size=7"], "deepspeed.train_batch_size", "multiple"),
    (
        ["deepspeed.train_micro_batch_size_per_gpu=3"],
        "deepspeed.train_micro_batch_size_per_gpu",
        "micro_batch_size",
    ),
    (["deepspeed.gradient_accumulation_steps=4"], "deepspeed.gradient_accumulation_steps", "set only"),
    (["deepspeed.bf16={enabled=true}"], "deepspeed.bf16.enabled", "model.dtype"),
    (["deepspeed.zero_optimization={stage=5}"], "deepspeed.zero_optimization.stage", "0, 1, 2 or 3"),
    (["deepspeed.optimizer={type='adam'}"], "deepspeed.optimizer", "[optimizer]"),
    (
        ["deepspeed.zero_optimization={stage=2, offload_optimizer={device='cpu'}}"],
        "optimizer.type",
        "cpu_adam",
    ),
    (["checkpoint[0].type=hugginface"], "checkpoint[0].type", "huggingface"),
    (["checkpoint[0].merge_adapters=true"], "checkpoint[0].merge_adapters", "peft_config"),
    (["model.name_or_path=/nonexistent/model"], "model.name_or_path", "does not exist"),
    (["tokenizer.name_or_path=./no-tokenizer"], "tokenizer.name_or_path", "does not exist"),
    (["data.sources[0]=/no/such/train.jsonl"], "data.sources[0]", "does not exist"),
    (["data.sources[0]={name_or_path='org/data', type='jsnol'}"], "data.sources[0]", "unknown source type"),
    (["generation_eval.path=missing.jsonl"], "generation_eval.path", "does not exist"),
    (["micro_bach_size=4"], "micro_bach_size", "did you mean 'micro_batch_size'"),
    (["learning_rate=1e-3"], "learning_rate", "optimizer.learning_rate"),
    (["zero_stage=3"], "zero_stage", "deepspeed.zero_optimization.stage"),
    (["scheduler.name=cosinus"], "scheduler.name", "cosine"),
    (["code=no_such_trainer.py"], "code", "no_such_trainer.py"),
    (["tokenizer.tokenize_kwargs={add_special_tokens=true}"], "tokenizer.tokenize_kwargs", "remove this key"),
    (["data.type=nope"], "data.type", "not a method"),
]


def check(capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str, float]:
    args = ["config", "check", QUICKSTART]
    for override in overrides:
        args += ["--set", override]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    seconds = time.perf_counter() - start
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out + out.err, seconds


@pytest.fixture(scope="module", autouse=True)
def imports_done() -> None:
    """The first check imports torch, peft and the plugins; the timings below are of the checks."""
    from arctic_core.recipe.checks import preflight  # noqa: F401

    pytest.importorskip("peft")


def test_the_quickstart_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, output, _ = check(capsys)
    assert code == 0, output
    assert "ok (type 'sft')" in output


@pytest.mark.parametrize(("overrides", "path", "words"), BAD, ids=[case[1] for case in BAD])
def test_a_bad_recipe_is_refused_naming_the_key(
    capsys: pytest.CaptureFixture[str], overrides: list[str], path: str, words: str
) -> None:
    check(capsys, "model.peft_config={peft_type='lora', r=4}")  # warm: peft and the plugins imported
    code, output, seconds = check(capsys, *overrides)
    assert code == 2, output
    assert f"{path}: " in output, output
    assert words in output, output
    assert "Traceback" not in output
    assert seconds < 2.0, f"check took {seconds:.2f} s"


def test_every_problem_is_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, output, _ = check(
        capsys,
        "micro_bach_size=4",
        "model.dtype=fp16",
        "checkpoint[0].type=hugginface",
        "data.sources[0]=/no/such/train.jsonl",
    )
    assert code == 2
    # key errors first (the recipe does not parse), then, once fixed, the setup checks together;
    # a key that came from --set is blamed on --set, not on the recipe file
    assert "--set micro_bach_size: unknown key; did you mean 'micro_batch_size'?" in output
    code, output, _ = check(
        capsys, "model.dtype=fp16", "checkpoint[0].type=hugginface", "data.sources[0]=/no/such/train.jsonl"
    )
    assert code == 2
    assert "3 problems" in output, output
    for path in ("model.dtype", "checkpoint[0].type", "data.sources[0]"):
        assert f"{path}: " in output


def test_check_creates_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output, _ = check(capsys)
    assert code == 0, output
    assert list(tmp_path.iterdir()) == []


def test_show_docs_lists_every_key_of_the_recipe_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["config", "show", QUICKSTART, "--docs"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("`micro_batch_size`", "`optimizer.lr`", "`data.sources[].name_or_path`", "`loss_chunk_size`"):
        assert key in out


def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_measured_cost(capsys, monkeypatch) -> None:
    from arctic_core.recipe import checks

    monkeypatch.setattr(checks, "has_cuda", lambda: False)
    monkeypatch.setattr(checks, "cpu_has_native_bf16", lambda: False)
    code, output, _ = check(capsys, "model.dtype=bf16")
    assert code == 0, output
    (line,) = [line for line in output.splitlines() if line.startswith("warning:")]
    assert "x slower than in fp32 here" in line and 'model.dtype = "fp32"' in line
    monkeypatch.setattr(checks, "cpu_has_native_bf16", lambda: True)
    code, output, _ = check(capsys, "model.dtype=bf16")
    assert code == 0 and "warning" not in output
