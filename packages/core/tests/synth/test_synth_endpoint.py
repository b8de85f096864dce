"""`arctic data generate` through a real OpenAI-compatible server on 127.0.0.1 (`chat_server.py`):
retries honouring Retry-After, the concurrency bound, accounting, and a run killed half-way whose
rerun sends no answered request again and writes what the uninterrupted run wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_core.recipe import load_recipe
from arctic_core.testing import arithmetic_conversations, save_tiny_model, write_rows

KEY_ENV = "ARCTIC_TEST_SYNTH_KEY"
SETTINGS = [
    "generate.backend=openai",
    "generate.max_prompts=12",
    "generate.shard_size=4",
    "generate.max_tokens=4",
    "generate.gen_temp=0.8",
    "generate.endpoint.model=tiny",
    f"generate.endpoint.api_key_env={KEY_ENV}",
    "generate.endpoint.concurrency=3",
    "generate.endpoint.backoff=0.01",
    "generate.endpoint.timeout=1.0",
    "generate.endpoint.input_price=2.0",
    "generate.endpoint.output_price=10.0",
]


@pytest.fixture(scope="module")
def server():
    from chat_server import ChatServer

    chat = ChatServer()
    yield chat
    chat.close()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, server) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    save_tiny_model(folder / "model")
    write_rows(folder / "prompts.jsonl", arithmetic_conversations(8, seed=3))
    (folder / "longer.py").write_text("def longer(messages, answer):\n    return len(answer)\n")
    (folder / "recipe.toml").write_text(
        'type = "sft"\ncode = "longer.py"\n[model]\nname_or_path = "model"\n'
        f'[generate]\nsources = ["prompts.jsonl"]\n[generate.endpoint]\nbase_url = "{server.url}"\n'
    )
    return folder / "recipe.toml"


def shards(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("shard-*.jsonl"))}


def generate(recipe: Path, folder: Path, *extra: str, monkeypatch) -> Path:
    from arctic_core.synth.generate import run_generate

    monkeypatch.setenv(KEY_ENV, "sk-test")
    config = load_recipe(recipe, [*SETTINGS, f"generate.output_dir={folder}", *extra]).config
    return run_generate(config, log=lambda _: None, code_folder=recipe.parent)


def test_faults_are_retried_within_the_bound_and_a_killed_run_resumes_without_resending(
    server, recipe, tmp_path, monkeypatch
):
    server.reset()
    server.faults = [(429, 0.6), (500, None), ("stall", 1.0)]
    server.delay = 0.1
    whole = generate(recipe, tmp_path / "whole", monkeypatch=monkeypatch)
    server.delay = 0.0
    sent = len(server.answered)  # 12 prompts, some asked twice: sent once
    assert sent >= 10 and set(server.answered.values()) == {1}
    assert server.max_in_flight == 3  # the bound, and reached
    gaps = {server.faulted[k]: t[1] - t[0] for k, t in server.arrivals.items() if k in server.faulted}
    assert gaps[429] >= 0.6 and gaps[500] < 0.5  # Retry-After honoured; a 500 waits only the backoff
    assert gaps["stall"] >= 1.0  # the client's timeout ended the stalled request, then it retried
    report = json.loads((whole / ".generation-report.json").read_text())
    assert report["sent"] == sent and report["retries"] == 3 and report["cached"] == 12 - sent
    cost = (report["prompt_tokens"] * 2.0 + report["completion_tokens"] * 10.0) / 1e6
    assert report["prompt_tokens"] > 0 and report["cost"] == pytest.approx(cost)
    rows = [json.loads(line) for text in shards(whole).values() for line in text.splitlines()]
    assert len(rows) == 12 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert not any(b"sk-test" in p.read_bytes() for p in whole.rglob("*") if p.is_file())

    # killed half-way: 5 answers on record, the next requests left hanging, then SIGKILL
    server.reset()
    server.hold_after, resumed = 5, tmp_path / "resumed"
    command = [sys.executable, "-m", "arctic_core", "data", "generate", str(recipe)]
    command += [a for s in [*SETTINGS, f"generate.output_dir={resumed}"] for a in ("--set", s)]
    env = {**os.environ, KEY_ENV: "sk-test", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    cache = resumed / ".requests.jsonl"
    while not (server.holding and server.in_flight == server.holding and cache.exists()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    answered_before = sum(server.answered.values())
    assert answered_before >= 5 and len(cache.read_text().splitlines()) == answered_before
    assert len(shards(resumed)) < 3
    server.hold_after = None
    server.release.set()
    generate(recipe, resumed, monkeypatch=monkeypatch)
    server.release.clear()
    assert set(server.answered.values()) == {1} and len(server.answered) == sent  # none sent twice
    assert shards(resumed) == shards(whole)
    report = json.loads((resumed / ".generation-report.json").read_text())
    assert report["sent"] == sent - answered_before


def test_preference_pairs_rank_n_answers_with_a_code_function(server, recipe, tmp_path, monkeypatch):
    folder = generate(
        recipe,
        tmp_path / "pairs",
        "generate.output=preference",
        "generate.n=3",
        "generate.rank_by=longer",
        "generate.max_prompts=4",
        "generate.gen_temp=1.5",
        monkeypatch=monkeypatch,
    )
    rows = [json.loads(line) for text in shards(folder).values() for line in text.splitlines()]
    assert rows, "every prompt's answers tied"
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert len(chosen) > len(rejected) and row["scores"] == [len(chosen), len(rejected)]
        assert row["prompt"][-1]["role"] == "user"


def test_a_missing_api_key_is_a_recipe_error_naming_the_variable(recipe, tmp_path, monkeypatch):
    from arctic_core.errors import RecipeError
    from arctic_core.synth.generate import run_generate

    monkeypatch.delenv(KEY_ENV, raising=False)
    config = load_recipe(recipe, [*SETTINGS, f"generate.output_dir={tmp_path}"]).config
    with pytest.raises(RecipeError, match=KEY_ENV) as refused:
        run_generate(config, log=lambda _: None)
    assert refused.value.path == "generate.endpoint.api_key_env"


def test_the_judge_filter_scores_through_the_endpoint_and_caches_its_requests(
    server, recipe, tmp_path, monkeypatch
):
    from arctic_core.synth.clean import run_clean

    monkeypatch.setenv(KEY_ENV, "sk-test")
    answers = {"a fine answer": "Score: 8/10", "a poor answer": "3", "a strange answer": "no idea"}
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(answers)
    ]
    write_rows(tmp_path / "rows.jsonl", rows)
    server.reset()
    server.script = lambda body: next(
        (v for k, v in answers.items() if k in body["messages"][-1]["content"]), None
    )
    overrides = [
        f"clean.sources=['{tmp_path / 'rows.jsonl'}']",
        f"clean.output_dir={tmp_path / 'out'}",
        "clean.judge.rubric=Rate from 0 to 10. Question: {{ prompt }} Answer: {{ answer }}",
        "clean.judge.threshold=5",
        "clean.judge.backend=openai",
        f"clean.judge.endpoint.base_url={server.url}",
        f"clean.judge.endpoint.api_key_env={KEY_ENV}",
        "clean.judge.endpoint.model=judge",
    ]
    try:
        config = load_recipe(recipe, overrides).config
        report = run_clean(config, log=lambda _: None)
        again = run_clean(config, log=lambda _: None)
    finally:
        server.script = None
    judged = next(s for s in report["steps"] if s["step"] == "judge")
    assert report["kept_rows"] == 1 and judged["removed"] == 2
    assert sorted(e["reason"] for e in judged["examples"]) == [
        "no score in the judge's reply 'no idea'",
        "score 3 < 5",
    ]
    assert len(server.answered) == 3 and set(server.answered.values()) == {1}  # the rerun sent nothing
    assert again["kept_rows"] == 1
