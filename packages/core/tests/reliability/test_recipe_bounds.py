"""Issue 24, item 4: a YAML alias bomb in a recipe is refused fast, naming the key, exit 2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from arctic_core.cli import main


def alias_bomb(levels: int, width: int = 9) -> str:
    """A billion-laughs recipe: `levels` anchors under `deepspeed:`, each `width` aliases of the last."""
    lines = ["type: sft", "deepspeed:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 6])
def test_an_alias_bomb_is_refused_in_well_under_a_second_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int
) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(alias_bomb(levels))
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "check", str(recipe)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert elapsed < 1.0, elapsed
    assert f"{recipe}: deepspeed.l5: expands to" in err and "alias" in err, err
    assert "Traceback" not in err


def test_ordinary_anchors_and_merges_still_load(tmp_path: Path) -> None:
    from arctic_core.recipe.loader import read_recipe

    recipe = tmp_path / "ok.yaml"
    recipe.write_text("base: &b {lr: 1.0e-3, betas: [0.9, 0.99]}\noptimizer:\n  <<: *b\n  lr: 2.0e-3\n")
    assert read_recipe(recipe)["optimizer"] == {"lr": 2.0e-3, "betas": [0.9, 0.99]}


def test_an_oversized_recipe_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "big.yaml"
    recipe.write_text("type: sft\nnote: " + "x" * (2 << 20) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "check", str(recipe)])
    assert exit_info.value.code == 2
    assert "a recipe may be at most" in capsys.readouterr().err


def test_the_stop_line_names_setup_steps_by_their_file_and_hooks_by_name():
    """Setup steps are plain words (`model`, `data`): only those of engine/setup.py name a phase."""
    import os

    from arctic_core.stops import _phase

    setup_file = os.path.join("site-packages", "arctic_core", "engine", "setup.py")
    assert _phase([("cli.py", "main"), (setup_file, "model"), ("x.py", "helper")]) == "loading the model"
    assert _phase([("cli.py", "main"), ("other.py", "model")]) == "start-up"
    assert _phase([(setup_file, "data"), ("t.py", "setup_data"), ("f.py", "process_source")]) == (
        "data preparation (tokenizing)"
    )
    assert _phase([(setup_file, "restore"), ("c.py", "save_to")]) == "checkpointing"
