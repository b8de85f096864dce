"""Exported folders match the layout vLLM / ArcticInference load; the base model's identity is enforced."""

from __future__ import annotations

import json

import pytest
import torch

from arctic_speculator.export import SpeculatorMismatch, export_speculator, load_speculator
from arctic_speculator.modeling import build_speculator

# vLLM's MLPSpeculatorConfig (transformers_utils/configs/mlp_speculator.py) and its MLPSpeculator's weights.
VLLM_MLP_FIELDS = {
    "vocab_size",
    "emb_dim",
    "inner_dim",
    "n_predict",
    "top_k_tokens_per_head",
    "n_candidates",
    "tie_weights",
    "scale_input",
}
# ArcticTraining's ArcticLSTMSpeculatorConfig, the config.json ArcticInference's `method: arctic` reads.
ARCTIC_LSTM_FIELDS = {
    "architectures",
    "base_model_name_or_path",
    "input_hidden_dim",
    "inner_dim",
    "proj_dim",
    "emb_dim",
    "model_type",
    "n_candidates",
    "n_predict",
    "scale_input",
    "tie_weights",
    "tie_lstm_embs",
    "top_k_tokens_per_head",
    "torch_dtype",
    "vocab_size",
    "method",
}
LSTM = {
    "method": "sum_lstm",
    "n_predict": 3,
    "inner_dim": 64,
    "proj_dim": 64,
    "emb_dim": 64,
    "tie_weights": True,
    "scale_input": True,
    "tie_lstm_embs": True,
}
MLP = {"method": "mlp", "n_predict": 3, "inner_dim": 48, "tie_weights": False, "scale_input": True}


@pytest.fixture(scope="module")
def base():
    from arctic_core.testing import tiny_model

    return tiny_model("llama", seed=0).eval()


def exported(tmp_path, base, settings):
    torch.manual_seed(0)
    spec = build_speculator(base.config.hidden_size, base.config.vocab_size, settings)
    folder = export_speculator(tmp_path / settings["method"], spec, base, "org/tiny-base")
    return spec, folder, json.loads((folder / "config.json").read_text())


def test_mlp_export_has_vllms_fields_and_parameter_names_and_reloads_exactly(tmp_path, base):
    from safetensors.torch import load_file

    spec, folder, config = exported(tmp_path, base, MLP)
    assert config["model_type"] == "mlp_speculator" and config["architectures"] == [
        "MLPSpeculatorPreTrainedModel"
    ]
    assert set(config) >= VLLM_MLP_FIELDS
    assert (
        config["emb_dim"] == 64 and config["inner_dim"] == 48 and config["top_k_tokens_per_head"] == [1, 1, 1]
    )
    assert (
        config["base_model_name_or_path"] == "org/tiny-base" and len(config["arctic_base_fingerprint"]) == 64
    )
    names = set(load_file(str(folder / "model.safetensors")))
    assert names == {f"{p}.{i}.weight" for p in ("emb", "proj", "head", "ln") for i in range(3)} | {
        f"ln.{i}.bias" for i in range(3)
    }
    again = load_speculator(folder, base=base)
    hidden, ids = torch.randn(2, 5, 64), torch.randint(0, base.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(hidden, ids), spec(hidden, ids), atol=0, rtol=0)


def test_lstm_export_has_arcticinferences_fields_and_parameter_names(tmp_path, base):
    from safetensors.torch import load_file

    _, folder, config = exported(tmp_path, base, LSTM)
    assert set(config) >= ARCTIC_LSTM_FIELDS
    assert (
        config["architectures"] == ["ArcticLSTMSpeculatorPreTrainedModel"]
        and config["model_type"] == "mlp_speculator"
    )
    assert (config["inner_dim"], config["proj_dim"], config["emb_dim"]) == (
        "64",
        "64",
        "64",
    )  # strings, as there
    assert config["input_hidden_dim"] == 64 and config["method"] == "sum_lstm"
    gates = ("forget", "input", "cell", "output")
    assert set(load_file(str(folder / "model.safetensors"))) == (
        {f"{g}_emb.0.weight" for g in gates}
        | {f"{g}_proj.{i}.weight" for g in gates for i in (0, 1)}
        | {f"{n}_ln.0.{w}" for n in ("cell", "state") for w in ("weight", "bias")}
        | {f"head.{i}.weight" for i in range(3)}
    )


def test_loading_against_another_base_model_is_refused_clearly(tmp_path, base):
    from arctic_core.testing import tiny_model

    _, folder, _ = exported(tmp_path, base, MLP)
    other = tiny_model("llama", seed=1)
    with pytest.raises(SpeculatorMismatch, match="trained on base model 'org/tiny-base'"):
        load_speculator(folder, base=other)
    wider = tiny_model("llama", seed=0, hidden_size=32, intermediate_size=64)
    with pytest.raises(SpeculatorMismatch, match="hidden size 64"):
        load_speculator(folder, base=wider)


def test_arctictraining_layout_loads(tmp_path, base):
    """pytorch_model.bin + the config.json ArcticTraining's checkpoint engine writes (no fingerprint)."""
    torch.manual_seed(0)
    settings = {**LSTM, "method": "sum_rnn", "inner_dim": "64.64", "tie_lstm_embs": False}
    spec = build_speculator(64, base.config.vocab_size, settings)
    folder = tmp_path / "at"
    folder.mkdir()
    torch.save(spec.state_dict(), folder / "pytorch_model.bin")
    config = {
        "architectures": ["ArcticLSTMSpeculatorPreTrainedModel"],
        "base_model_name_or_path": "x",
        "input_hidden_dim": 64,
        "inner_dim": "64.64",
        "proj_dim": "64",
        "emb_dim": "64",
        "model_type": "mlp_speculator",
        "n_candidates": 3,
        "n_predict": 3,
        "scale_input": True,
        "tie_weights": True,
        "tie_lstm_embs": False,
        "top_k_tokens_per_head": [1, 1, 1],
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "vocab_size": base.config.vocab_size,
        "method": "sum_rnn",
    }
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_speculator(folder, base=base)
    assert {n for n, _ in loaded.state_dict().items()} == set(spec.state_dict())
    hidden, ids = torch.randn(1, 4, 64), torch.randint(0, base.config.vocab_size, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(hidden, ids), spec(hidden, ids))


@pytest.mark.slow
def test_export_verb_rewrites_an_arctictraining_folder_for_the_recipes_base(tmp_path, trained):
    """`arctic speculator export`: ArcticTraining's pytorch_model.bin in, the Arctic/vLLM layout out, base checked."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from arctic_speculator.cli import commands
    from arctic_speculator.generate import load_base_model

    source = tmp_path / "at"
    source.mkdir()
    config = json.loads((trained.lstm / "config.json").read_text())
    torch.save(load_file(str(trained.lstm / "model.safetensors")), source / "pytorch_model.bin")
    for key in ("arctic_base_fingerprint", "arctic_settings"):
        config.pop(key)
    (source / "config.json").write_text(json.dumps(config))
    from arctic_core.recipe import bundled_recipes

    recipe = str(bundled_recipes("arctic_speculator") / "tiny-pipeline.toml")
    args = ["export", recipe, "--from", str(source), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(commands, args)
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (
        out["arctic_base_fingerprint"]
        == json.loads((trained.lstm / "config.json").read_text())["arctic_base_fingerprint"]
    )
    again = load_speculator(tmp_path / "out", base=load_base_model(trained.config))
    for name, tensor in load_file(str(trained.lstm / "model.safetensors")).items():
        assert torch.equal(again.state_dict()[name], tensor), name
