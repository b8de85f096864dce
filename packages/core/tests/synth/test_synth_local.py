"""`arctic data generate` with the local HF backend: Jinja prompts from columns, n answers per
prompt as chat rows, and the same seed giving the same rows."""

from __future__ import annotations

import json

import pytest

from arctic_core.recipe import load_recipe
from arctic_core.testing import save_tiny_model, write_rows


def test_templated_prompts_get_n_seeded_answers_each(tmp_path):
    from arctic_core.synth.generate import run_generate

    save_tiny_model(tmp_path / "model")
    write_rows(
        tmp_path / "cities.jsonl", [{"city": c, "id": i} for i, c in enumerate(["Oslo", "Lima", "Pune"])]
    )
    (tmp_path / "recipe.toml").write_text(
        'type = "sft"\n[model]\nname_or_path = "model"\ndtype = "fp32"\n'
        '[generate]\nsources = ["cities.jsonl"]\nprompts = "template"\n'
        'prompt_template = "Tell me about {{ city }}."\nsystem_prompt = "Be brief."\n'
        'n = 2\nmax_tokens = 5\ngen_temp = 1.0\nbatch_size = 2\nshard_size = 2\nbackend = "hf"\n'
    )

    def generate(name: str) -> list[dict]:
        config = load_recipe(tmp_path / "recipe.toml", [f"generate.output_dir={tmp_path / name}"]).config
        folder = run_generate(config, log=lambda _: None)
        return [json.loads(line) for p in sorted(folder.glob("shard-*.jsonl")) for line in p.open()]

    rows = generate("a")
    assert len(rows) == 6  # 3 prompts x n = 2, in prompt order
    for i, city in enumerate(["Oslo", "Oslo", "Lima", "Lima", "Pune", "Pune"]):
        system, user, assistant = rows[i]["messages"]
        assert system == {"role": "system", "content": "Be brief."}
        assert (
            user == {"role": "user", "content": f"Tell me about {city}."} and assistant["role"] == "assistant"
        )
    assert any(rows[i]["messages"][2] != rows[i + 1]["messages"][2] for i in (0, 2, 4))  # sampled apart
    assert generate("b") == rows  # seeded
    report = json.loads((tmp_path / "a" / ".generation-report.json").read_text())
    assert report["sent"] == 6 and 0 < report["completion_tokens"] <= 6 * 5 and report["cost"] == 0

    from arctic_core.errors import RecipeError

    overrides = ["generate.prompt_template={{ town }}", f"generate.output_dir={tmp_path / 'c'}"]
    config = load_recipe(tmp_path / "recipe.toml", overrides).config
    with pytest.raises(RecipeError, match=r"row 0.*town") as refused:
        run_generate(config, log=lambda _: None)
    assert refused.value.path == "generate.prompt_template"
