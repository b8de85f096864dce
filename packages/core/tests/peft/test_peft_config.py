"""`model.peft_config` checks: done at setup time, before any model loads, each error naming its key.

Also the missing-extra path for real: a subprocess in which `import peft` fails (a shim folder on
PYTHONPATH whose sitecustomize blocks `peft` in sys.modules, so that import fails and find_spec
finds nothing, as for a missing package) must exit 2, name the
`arctic-core[peft]` extra and `model.peft_config`, and stop before the model is looked at.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from peft import LoHaConfig, LoraConfig
from peft_support import LORA

from arctic_core.engine.peft import adapter_config, check_recipe
from arctic_core.errors import RecipeError
from arctic_core.recipe import load_recipe

SUPPORT = Path(__file__).with_name("peft_support.py")


def config(peft_config: dict[str, Any] | None, **checkpoint: Any) -> Any:
    data: dict[str, Any] = {"model": {"name_or_path": "/no/such/model", "peft_config": peft_config}}
    if checkpoint:
        data["checkpoint"] = [{"type": "huggingface", **checkpoint}]
    return load_recipe(None, data=data).config


@pytest.mark.parametrize("kind", ["lora", "LORA", "Lora"])
def test_peft_type_in_any_case_builds_peft_own_config(kind: str) -> None:
    built = adapter_config(config({**LORA, "peft_type": kind}).model)
    assert isinstance(built, LoraConfig)
    assert (built.r, built.lora_alpha, set(built.target_modules)) == (4, 8, {"q_proj", "v_proj"})


def test_other_tuner_types_build_their_config() -> None:
    built = adapter_config(config({"peft_type": "loha", "r": 2, "target_modules": ["q_proj"]}).model)
    assert isinstance(built, LoHaConfig)


def test_parsing_a_recipe_does_not_check_or_import_peft() -> None:
    code = (
        "import sys; from arctic_core.recipe import load_recipe; "
        "load_recipe(None, data={'model': {'name_or_path': 'x', 'peft_config': {'peft_type': 'nope'}}}); "
        "assert 'peft' not in sys.modules, 'recipe parsing imported peft'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("peft_config", "path", "words"),
    [
        ({**LORA, "peft_type": "lorra"}, "model.peft_config.peft_type", "did you mean 'lora'"),
        ({"r": 4}, "model.peft_config.peft_type", "needs peft_type"),
        ({**LORA, "rr": 8}, "model.peft_config.rr", "did you mean 'r'"),
        ({**LORA, "lora_alhpa": 8}, "model.peft_config.lora_alhpa", "lora_alpha"),
        ({**LORA, "layers_pattern": "layers"}, "model.peft_config", "layers_to_transform"),
        ({"peft_type": "prompt_tuning", "num_virtual_tokens": 4}, "model.peft_config.peft_type", "prompt"),
    ],
)
def test_bad_peft_config_is_a_recipe_error_naming_the_key(
    peft_config: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(RecipeError) as caught:
        check_recipe(config(peft_config))
    assert caught.value.path == path
    assert words in caught.value.message


def test_merge_adapters_without_peft_config_is_refused() -> None:
    with pytest.raises(RecipeError) as caught:
        check_recipe(config(None, merge_adapters=True))
    assert caught.value.path == "checkpoint[0].merge_adapters"
    check_recipe(config(LORA, merge_adapters=True))  # with an adapter it is fine


def test_missing_peft_exits_2_naming_the_extra_before_the_model_loads(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    # Python runs sitecustomize at start-up; a None entry in sys.modules is the standard import blocker:
    # `import peft` raises ModuleNotFoundError and importlib.util.find_spec("peft") says it is absent.
    (shim / "sitecustomize.py").write_text("import sys\n\nsys.modules['peft'] = None\n")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'type = "peft_test"\ncode = "{SUPPORT}"\n\n[model]\nname_or_path = "{tmp_path / "no-such-model"}"\n'
        'dtype = "fp32"\npeft_config = { peft_type = "LORA", r = 4 }\n\n'
        f'[logger]\noutput_dir = "{tmp_path / "run"}"\n'
    )
    python_path = os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": python_path}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; assert importlib.util.find_spec('peft') is None; import peft",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, probe.stderr  # peft is hidden
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "pip install 'arctic-core[peft]'" in output
    assert "model.peft_config" in output
    assert "Traceback" not in output
    # stopped before the model was looked for: its missing folder is reported by the same checks
    assert "model.name_or_path" in output and "does not exist" in output
    assert "OSError" not in output and "HFValidationError" not in output


def test_weight_reading_lora_init_is_refused_under_zero3_only() -> None:
    data = {
        "model": {"name_or_path": "x", "peft_config": {**LORA, "init_lora_weights": "pissa"}},
        "deepspeed": {"zero_optimization": {"stage": 3}},
    }
    with pytest.raises(RecipeError) as caught:
        check_recipe(load_recipe(None, data=data).config)
    assert caught.value.path == "model.peft_config.init_lora_weights"
    data["deepspeed"] = {"zero_optimization": {"stage": 2}}
    check_recipe(load_recipe(None, data=data).config)
