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


# --- the recipe against a local model's config.json (no weights) ---------------------------------

SHAPE_RECIPE = """
type = "{type}"
[model]
name_or_path = "{model}"
{model_keys}
[data]
sources = ["org/data"]
max_length = {max_length}
"""


def shape_recipe(tmp_path: Path, type: str, model_keys: str = "", max_length: int = 64) -> str:
    """A recipe on a model folder holding only a config.json: a Llama of 4 layers, 9 attention heads,
    3 key/value heads, hidden size 72, 128 positions."""
    import json

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    shape = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 4,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": 72,
        "intermediate_size": 144,
        "max_position_embeddings": 128,
        "vocab_size": 300,
    }
    (model / "config.json").write_text(json.dumps(shape))
    path = tmp_path / f"{type}.toml"
    text = SHAPE_RECIPE.format(type=type, model=model, model_keys=model_keys, max_length=max_length)
    path.write_text(text)
    return str(path)


SHAPES = [
    # (type, [model] keys, --set overrides, key path named, words in the message)
    (
        "sft",
        "",
        ["sequence_parallel_size=2"],
        "sequence_parallel_size",
        "does not divide the model's 9 attention heads",
    ),
    (
        "sft",
        "",
        [
            "sequence_parallel_size=3",
            "model.hf_config_kwargs={num_attention_heads=12, num_key_value_heads=2}",
        ],
        "sequence_parallel_size",
        "2 key/value heads must be a multiple or a divisor",
    ),
    (
        "swiftkv",
        "num_key_value_layers = 4",
        [],
        "model.num_key_value_layers",
        "is 4, but the model has 4 layers",
    ),
    (
        "swiftkv",
        "num_key_value_layers = 1\nkey_value_group_size = 2",
        [],
        "model.key_value_group_size",
        "does not divide the 3 layers after",
    ),
    ("speculator", "emb_dim = 64", [], "model.emb_dim", "the base model's hidden size is 72"),
]


@pytest.mark.parametrize(
    ("type", "keys", "overrides", "path", "words"), SHAPES, ids=[s[3] + "-" + s[0] for s in SHAPES]
)
def test_shape_errors_are_found_in_the_local_config_json(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    type: str,
    keys: str,
    overrides: list[str],
    path: str,
    words: str,
) -> None:
    args = ["config", "check", shape_recipe(tmp_path, type, keys)]
    for override in overrides:
        args += ["--set", override]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr()
    assert exit_.value.code == 2, out.out + out.err
    assert f"{path}: " in out.err and words in out.err, out.err
    assert "config.json" in out.err  # says where the model's numbers come from


def test_a_good_shape_passes_and_a_long_max_length_warns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            ["config", "check", shape_recipe(tmp_path, "swiftkv", "num_key_value_layers = 2", max_length=256)]
        )
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err
    assert "data.max_length is 256, more than the model's max_position_embeddings 128" in out.err


def test_problems_found_without_torch_are_answered_without_importing_it(tmp_path: Path) -> None:
    """A missing local model and a heads/sequence-parallel mismatch: exit 2, and torch never imported."""
    import subprocess
    import sys

    good = shape_recipe(tmp_path, "sft")
    code = (
        "import sys\n"
        "from arctic_core.cli import main\n"
        "for args in (sys.argv[1:3] + ['--set', 'sequence_parallel_size=2'], sys.argv[1:3] + "
        "['--set', 'model.name_or_path=./missing-model']):\n"
        "    try:\n        main(['config', 'check', *args[1:]])\n"
        "    except SystemExit as e:\n        assert e.code == 2, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "check", good], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "sequence_parallel_size: is 2" in result.stderr and "missing-model does not exist" in result.stderr
