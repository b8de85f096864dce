"""SwiftKV models: off = the base model exactly; on = a prefill that skips layers and is still exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from swiftkv_support import greedy_without_cache, left_padded_prompts, positions, swiftkv_pair
from transformers import AutoConfig, AutoModelForCausalLM

from arctic_core.testing import save_tokenizer_files, tiny_config
from arctic_swiftkv.configuration import LlamaSwiftKVConfig, to_swiftkv_config


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_swiftkv_off_is_the_base_model_exactly(arch):
    teacher, model = swiftkv_pair(arch, group=2)
    ids, mask = left_padded_prompts([12, 7, 10])
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask), "use_cache": False}
    with torch.no_grad():
        base = teacher(**inputs).logits
        off = model.swiftkv(False)(**inputs).logits
        on = model.swiftkv(True)(**inputs).logits
    assert torch.equal(base, off)
    assert (on - base).abs().max() > 1e-3  # SwiftKV on really is another network


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("group", [1, 2])
def test_cached_prefill_skip_gives_the_no_cache_greedy_tokens(arch, attn, group):
    _, model = swiftkv_pair(arch, layers=6, n_kv=2, group=group, attn=attn)
    with torch.no_grad():  # perturb the new parameters: the student must not be the teacher
        for name, param in model.named_parameters():
            if "_swiftkv" in name:
                param.add_(0.05 * torch.randn_like(param))
    model.swiftkv(True)
    ids, mask = left_padded_prompts([11, 6, 9], seed=3)
    reference = greedy_without_cache(model, ids, mask, steps=6)
    generated = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(generated, reference)


def test_prefill_runs_only_the_last_position_through_the_skipped_layers():
    _, model = swiftkv_pair("llama", layers=4, n_kv=2)
    seen: dict[int, list[int]] = {i: [] for i in range(4)}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_hook(lambda m, a, out, i=i: seen[i].append(a[0].shape[1]))
    ids, mask = left_padded_prompts([16, 9])
    model.swiftkv(True).generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0
    )
    assert seen[0] == seen[1] == [16, 1, 1]  # prefix layers: the whole prompt, then one token per step
    assert seen[2] == seen[3] == [1, 1, 1]  # SwiftKV layers: only the last prompt position


def test_prefill_logits_and_cache_match_the_full_forward():
    _, model = swiftkv_pair("qwen2", layers=6, n_kv=2, group=2)
    model.swiftkv(True)
    ids, mask = left_padded_prompts([14, 8])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1
        )
    torch.testing.assert_close(out.logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    filled = [layer.is_initialized and layer.keys.shape[-2] for layer in out.cache.layers]
    assert filled == [14, 14, 14, False, 14, False]  # AcrossKV: one cache entry per group of 2


def test_sampling_with_the_skip_is_reproducible():
    _, model = swiftkv_pair("llama")
    ids, mask = left_padded_prompts([10, 5])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(
            model.swiftkv(True).generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=True, pad_token_id=0
            )
        )
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 15)


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(6 - 3\) must be a multiple of key_value_group_size \(2\)"):
        to_swiftkv_config(tiny_config("llama", num_hidden_layers=6), 3, 2)
    with pytest.raises(ValueError, match="num_key_value_layers must be between 1 and"):
        to_swiftkv_config(tiny_config("llama", num_hidden_layers=4), 5, 1)


def arctictraining_names(layers: int, n_kv: int, group: int, bias: bool) -> set[str]:
    """The SwiftKV parameter names ArcticTraining's models use, written from its documentation."""
    suffix = (".weight", ".bias") if bias else (".weight",)
    names = {"model.norm_swiftkv.weight"}
    for i in range(n_kv, layers):
        names |= {f"model.layers.{i}.self_attn.q_proj_swiftkv{s}" for s in suffix}
        if (i - n_kv) % group == 0:
            for proj in ("k", "v"):
                names |= {f"model.layers.{i}.self_attn.{proj}_proj_swiftkv{s}" for s in suffix}
    return names


@pytest.mark.parametrize(("arch", "bias"), [("llama", False), ("qwen2", True)])
def test_arctictraining_checkpoint_loads_and_arctic_saves_the_same_names(tmp_path, arch, bias):
    teacher, model = swiftkv_pair(arch, layers=6, n_kv=2, group=2)
    expected = arctictraining_names(6, 2, 2, bias)
    # An ArcticTraining-layout folder: the teacher's tensors plus the documented SwiftKV names.
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    shapes = dict(model.state_dict())
    for name in expected:
        state[name] = torch.randn(shapes[name].shape, generator=generator)
    folder = tmp_path / "theirs"
    config = to_swiftkv_config(teacher.config, 2, 2).to_dict() | {"swiftkv": True}
    config["architectures"] = [f"{'Llama' if arch == 'llama' else 'Qwen2'}SwiftKVForCausalLM"]
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    save_tokenizer_files(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    for name, tensor in state.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config.swiftkv and loaded.config.model_type == f"{arch}_swiftkv"
    # Arctic's save has exactly those names, and reloads bit-identical logits.
    loaded.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert {n for n in saved if "swiftkv" in n} == expected and set(saved) == set(state)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    ids, mask = left_padded_prompts([9, 5])
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, attention_mask=mask).logits,
            reloaded(input_ids=ids, attention_mask=mask).logits,
        )
    saved_config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved_config["num_key_value_layers"] == 2 and saved_config["key_value_group_size"] == 2
    assert saved_config["architectures"] == config["architectures"]


def test_config_registered_with_auto_config(tmp_path):
    LlamaSwiftKVConfig(
        num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_layers=2
    ).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert (
        type(config) is LlamaSwiftKVConfig
        and config.num_key_value_layers == 2
        and config.key_value_group_size == 1
    )


def test_import_arctic_swiftkv_is_enough_to_load_an_export_and_arctic_reads_it_without_torch(tmp_path):
    """A fresh interpreter: core reads the plugin and the recipe config without the package root (no
    torch); then `import arctic_swiftkv`, as a user does, and `AutoModelForCausalLM` loads the export."""
    import subprocess
    import sys

    _, model = swiftkv_pair("llama", group=2)
    model.save_pretrained(tmp_path / "export")
    ids, _ = left_padded_prompts([6])
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    code = f"""
import sys
from arctic_core import plugins
found = plugins.get("swiftkv")
config_class = found.method.config_class()
assert "torch" not in sys.modules and "arctic_swiftkv" not in sys.modules, "core ran the package root"

import arctic_swiftkv
import torch
from transformers import AutoModelForCausalLM
from arctic_swiftkv.config import SwiftKVConfig
assert SwiftKVConfig is config_class  # one class, whichever way it was imported
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "export")!r})
assert type(model) is arctic_swiftkv.LlamaSwiftKVForCausalLM, type(model)
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    assert torch.equal(model(expected["ids"]).logits, expected["logits"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
