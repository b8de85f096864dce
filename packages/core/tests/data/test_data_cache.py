"""The tokenized-data cache: reused when nothing changed, rebuilt when anything that matters did, built once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from data_helpers import TEMPLATES, tokenizer_with

from arctic_core.data import DataFactory, samples
from arctic_core.data.cache import MARKER, build_atomically
from arctic_core.testing import write_dataset


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts tokenize_row calls (datasets.map runs in this process for small sources)."""
    seen: list[int] = []
    real = samples.tokenize_row

    def counting(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(samples, "tokenize_row", counting)
    return seen


def entries(config) -> list[str]:
    return sorted(p.name for p in Path(config.data.cache_dir).iterdir() if not p.name.startswith("."))


def test_same_recipe_reuses_the_cache(tmp_path: Path, make_config, tokenizer, calls) -> None:
    config = make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=6, max_turns=1))
    first = DataFactory(config, tokenizer)
    rows = list(first.train_dataset())
    assert first.built_here and len(calls) == 6
    again = DataFactory(config, tokenizer_with(None))
    assert list(again.train_dataset()) == rows
    assert not again.built_here and len(calls) == 6  # nothing tokenized the second time
    assert (Path(again.summary()["cache_dir"]) / MARKER).is_file()
    assert len(entries(config)) == 1


def test_changes_that_matter_build_a_new_entry(tmp_path: Path, make_config, tokenizer, calls) -> None:
    path = write_dataset(tmp_path / "a.jsonl", "chat", n=4, max_turns=1)
    config = make_config(path)
    keys = {DataFactory(config, tokenizer).cache_key()}
    DataFactory(config, tokenizer).train_dataset()
    keys.add(DataFactory(make_config(path, max_length=100), tokenizer).cache_key())
    keys.add(DataFactory(config, tokenizer_with(TEMPLATES["qwen2.5"][0])).cache_key())
    keys.add(DataFactory(make_config(path, mask_inputs=False), tokenizer).cache_key())
    write_dataset(path, "chat", n=4, seed=9, max_turns=1)  # same file, new contents
    changed = DataFactory(config, tokenizer)
    keys.add(changed.cache_key())
    assert len(keys) == 5
    before = len(calls)
    changed.train_dataset()
    assert changed.built_here and len(calls) == before + 4
    # batching-only settings share the entry
    assert DataFactory(make_config(path, div_length=7), tokenizer).cache_key() == changed.cache_key()


def test_incomplete_folder_is_never_used(tmp_path: Path, make_config, tokenizer) -> None:
    config = make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=3, max_turns=1))
    factory = DataFactory(config, tokenizer)
    folder = factory.cache_folder
    (folder / "train").mkdir(parents=True)  # a killed build left this behind
    assert len(factory.train_dataset()) == 3 and factory.built_here


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(out: Path) -> None:
        out.mkdir()
        (out / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_atomically(tmp_path / "entry", broken)
    assert list(tmp_path.iterdir()) == []


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from arctic_core.config import DataConfig, ModelConfig, SourceConfig, TrainerConfig
    from arctic_core.data import DataFactory, samples
    from arctic_core.testing import tiny_tokenizer

    data_file, cache_dir, log = sys.argv[1:4]
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
    real = samples.tokenize_row
    def counting(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        return real(*args, **kwargs)
    samples.tokenize_row = counting
    data = DataConfig(sources=[SourceConfig(name_or_path=data_file)], cache_dir=cache_dir, max_length=128,
                      pack_samples=True)
    factory = DataFactory(TrainerConfig(model=ModelConfig(name_or_path="x"), data=data), tiny_tokenizer())
    rows = [list(r["input_ids"]) for r in factory.train_dataset()]
    print(json.dumps({"built": factory.built_here, "rows": rows}))
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_two_ranks_tokenize_once(tmp_path: Path) -> None:
    data_file = write_dataset(tmp_path / "a.jsonl", "chat", n=10, max_turns=1)
    script, log = tmp_path / "rank.py", tmp_path / "calls.log"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(data_file), str(tmp_path / "cache"), str(log)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["built"] for r in results] == [True, False]
    assert results[0]["rows"] == results[1]["rows"]
    pids = log.read_text().split()
    assert len(pids) == 10 and len(set(pids)) == 1  # every row tokenized once, by one process
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1
