"""`arctic data clean`: planted exact and near-duplicates, a planted eval question, other languages,
lengths and a `code:` filter are removed, with exact counts and examples in the report."""

from __future__ import annotations

import json
import random

from arctic_core.recipe import load_recipe
from arctic_core.testing import write_rows

VOCAB = [f"word{i}" for i in range(400)]


def answer(rng: random.Random, words: int = 60) -> str:
    return "the " + " ".join(rng.choice(VOCAB) for _ in range(words)) + " and that is it"


def chat(question: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}


def planted_rows() -> tuple[list[dict], list[dict], dict[str, int]]:
    rng = random.Random(0)
    rows = [chat(f"Question {i}: tell me a story.", answer(rng)) for i in range(30)]
    planted = []
    for i in range(3):  # exact copies: other case and spacing
        q, a = rows[i]["messages"][0]["content"], rows[i]["messages"][1]["content"]
        planted.append(chat(q.upper(), a.replace(" ", "  ")))
    for i in range(3, 7):  # near copies: one word of 60 changed
        words = rows[i]["messages"][1]["content"].split()
        words[30] = "changed"
        planted.append(chat(rows[i]["messages"][0]["content"], " ".join(words)))
    planted.append(chat("Question 99: tell me a story.", "the and short"))  # too short
    planted.append(chat("Frage: erzähl mir etwas.", "der die und das ist nicht ein " + answer(rng)[4:]))
    planted.append(chat("What is the capital city of Atlantis today?", answer(rng)))  # an eval question
    planted.append(chat("Question 100: FORBIDDEN story.", answer(rng)))  # the code filter's
    # the German row's own words are English-like filler: tell it apart by function words
    planted[-3]["messages"][1]["content"] = "der die und das ist nicht ein eine zu den mit sich von " * 3
    mixed = rows[:10] + planted[:3] + rows[10:20] + planted[3:] + rows[20:]
    return mixed, rows, {"exact": 3, "near": 4, "length": 1, "language": 1, "decontaminate": 1, "filters": 1}


def test_clean_removes_what_was_planted_and_reports_it(tmp_path):
    from arctic_core.synth.clean import run_clean

    rows, originals, expected = planted_rows()
    write_rows(tmp_path / "data.jsonl", rows)
    write_rows(tmp_path / "eval.jsonl", [chat("What is the capital city of Atlantis today?", "Poseidonia.")])
    (tmp_path / "filters.py").write_text(
        "def no_forbidden(row):\n    return 'FORBIDDEN' not in row['messages'][0]['content']\n"
    )
    (tmp_path / "recipe.toml").write_text(
        'type = "sft"\ncode = "filters.py"\n[model]\nname_or_path = "unused/no-model"\n'
        '[clean]\nsources = ["data.jsonl"]\neval_sources = ["eval.jsonl"]\nmin_words = 5\nlanguages = ["en"]\n'
        f'filters = ["no_forbidden"]\noutput_dir = "{tmp_path / "out"}"\nnear_dedup = 0.8\n'
    )
    config = load_recipe(tmp_path / "recipe.toml").config
    report = run_clean(config, log=lambda _: None, code_folder=tmp_path)
    assert {s["step"]: s["removed"] for s in report["steps"]} == expected
    assert report["input_rows"] == 41 and report["kept_rows"] == 30
    kept = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").open()]
    assert kept == originals  # in order
    near = next(s for s in report["steps"] if s["step"] == "near")
    assert "Jaccard with kept row" in near["examples"][0]["reason"] and len(near["examples"]) == 3
    contaminated = next(s for s in report["steps"] if s["step"] == "decontaminate")["examples"][0]
    assert "Atlantis" in contaminated["row"]["messages"][0]["content"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kept_rows"] == 30
