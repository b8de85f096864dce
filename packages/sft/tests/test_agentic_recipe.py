"""The bundled agentic recipe: its files regenerate exactly, and train and eval agree with serving.

Training it to the held-out figures takes minutes on a CPU (`uv run arctic train
packages/sft/recipes/agentic-tiny.toml`; figures in docs/data.md), so the suite checks what the
figures rest on: the committed data is what `write_agentic_tiny` writes, every training row is
trained exactly as it is served, and each held-out reference is the tool call the template
renders for that question.
"""

from __future__ import annotations

import json
from pathlib import Path

from sft_support import REPO

from arctic_core.data import masking, parity
from arctic_core.data.formats import RoleMapping, normalize
from arctic_sft.agentic_tiny import OPERATORS, conversation, write_agentic_tiny

FOLDER = REPO / "packages" / "sft" / "recipes" / "agentic-tiny"


def test_agentic_recipe_files_regenerate_exactly(tmp_path: Path) -> None:
    written = write_agentic_tiny(tmp_path)
    for name in ("train.jsonl", "heldout.jsonl", "chat_template.jinja"):
        assert (written / name).read_text() == (FOLDER / name).read_text(), name
    train = {json.loads(line)["messages"][1]["content"] for line in (FOLDER / "train.jsonl").open()}
    heldout = {json.loads(line)["messages"][1]["content"] for line in (FOLDER / "heldout.jsonl").open()}
    assert len(train) == 4000 and len(heldout) == 200 and not train & heldout


def test_agentic_recipe_trains_tool_calls_as_served_and_scores_what_serving_renders() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FOLDER / "tiny-model")
    tokenizer.chat_template = (FOLDER / "chat_template.jinja").read_text()
    masker = masking.ChatMasker(tokenizer)
    rows = []
    for index, line in enumerate(list((FOLDER / "train.jsonl").open())[:20]):
        row = normalize(json.loads(line), "chat", RoleMapping(), f"row {index}")
        rows.append(
            (row, masker.samples(row["messages"], f"row {index}", tools=row["tools"]), f"row {index}")
        )
    report = parity.check_rows(masker, rows)
    assert (report.rows, report.identical) == (20, 20)
    for line in list((FOLDER / "heldout.jsonl").open())[:20]:
        *prompt, reference = json.loads(line)["messages"]
        a, word, b = prompt[1]["content"].removeprefix("What is ").removesuffix("?").split()
        assert word in OPERATORS
        full = normalize(conversation(int(a), word, int(b)), "chat", RoleMapping(), "heldout")
        _, turn = parity.served(masker, full["messages"], 2, full["tools"], "heldout")
        assert tokenizer.decode(turn, skip_special_tokens=True) == reference["content"]
