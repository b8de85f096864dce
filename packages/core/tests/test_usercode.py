"""The recipe's `code:` file: imported once, same module name on every rank, no sys.path left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arctic_core.errors import RecipeError
from arctic_core.recipe import load_recipe
from arctic_core.usercode import load_user_code, module_name_for

TRAINER = """
    import helper_module  # a sibling import must work
    from arctic_demo.trainer import DemoTrainer

    LOADS = helper_module.bump()

    class {cls}(DemoTrainer):
        name = "{name}"
"""


def write_code(folder: Path, name: str, cls: str = "MyTrainer", file: str = "custom.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper_module.py").write_text(
        "COUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1\n    return COUNT\n"
    )
    path = folder / file
    path.write_text(textwrap.dedent(TRAINER.format(cls=cls, name=name)))
    return path


def test_code_registers_trainer_once_without_sys_path_edits(tmp_path):
    code = write_code(tmp_path / "code", "my_custom_trainer")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'type = "my_custom_trainer"\ncode = "{code}"\n[model]\nname_or_path = "m"\n')
    path_before = list(sys.path)
    loaded = load_recipe(recipe)
    assert sys.path == path_before
    assert type(loaded.config).__name__ == "DemoConfig"
    assert loaded.trainer_class().__name__ == "MyTrainer"
    module = load_user_code(str(code))
    load_recipe(recipe)
    assert module.LOADS == 1  # imported once per process
    assert module.__name__ == module_name_for(code.resolve())


def test_train_py_in_working_directory_is_the_default(tmp_path, monkeypatch):
    write_code(tmp_path, "cwd_trainer", cls="CwdTrainer", file="train.py")
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("type: cwd_trainer\nmodel:\n  name_or_path: m\n")
    loaded = load_recipe(recipe)
    assert loaded.trainer_class().__name__ == "CwdTrainer"
    assert any("imported" in note and "train.py" in note for note in loaded.notes)  # and says so


def test_an_unasked_for_train_py_is_not_run_for_an_installed_method(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text("raise SystemExit('train.py must not run')\n")
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("type: demo\nmodel:\n  name_or_path: m\n")
    loaded = load_recipe(recipe)  # type demo is an installed method: train.py is not needed, not run
    assert loaded.config.type == "demo" and not loaded.notes


def test_missing_code_file_is_a_recipe_error(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('type = "demo"\ncode = "nope.py"\n[model]\nname_or_path = "m"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert info.value.path == "code"


def test_two_classes_claiming_one_name_are_refused(tmp_path):
    first = write_code(tmp_path / "a", "clash", cls="First")
    second = write_code(tmp_path / "b", "clash", cls="Second")
    load_user_code(str(first))
    with pytest.raises(ValueError, match=r"First.*Second"):
        load_user_code(str(second))


def test_module_name_is_the_same_in_every_process(tmp_path):
    code = write_code(tmp_path / "code", "proc_trainer")
    script = f"from arctic_core.usercode import load_user_code; print(load_user_code({str(code)!r}).__name__)"
    names = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "RANK": str(rank)},
        ).stdout.strip()
        for rank in range(2)
    }
    assert len(names) == 1
