"""The bundled agentic recipe's task: a tiny model learns to call a calculator tool.

Each conversation asks for a sum, difference or product of two numbers ("What is 12 times
30?"). The assistant calls the `calculator` tool with the expression ("12 * 30"), the tool
answers, and the assistant repeats the result. Tool calls are trained (as OpenAI-layout
`tool_calls` with null content), tool results are not. Held-out questions use number pairs
never seen in training; the held-out score is exact match on the generated tool call, so it
measures whether the model learned to copy the operands into the call with the right
operator. An untrained model scores 0%.

`write_agentic_tiny(folder)` writes the training data, the held-out set, the chat template
and the model folder that `packages/sft/recipes/agentic-tiny.toml` uses;
`packages/sft/scripts/make_agentic_tiny.py` regenerates the committed copy.
"""

from __future__ import annotations

import json
import operator
import random
from pathlib import Path
from typing import Any

OPERATORS = {"plus": "+", "minus": "-", "times": "*"}
CALCULATE = {"+": operator.add, "-": operator.sub, "*": operator.mul}
"""The bundled calculator: two integers and one operator."""
SYSTEM = "You can call calculator(expression) to evaluate arithmetic."
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 12 * 30"}},
            "required": ["expression"],
        },
    },
}

# ChatML with tool calls and tool results. Tools are listed in the system message, not rendered
# from `tools`, so that the held-out prompts (which the generation eval renders without tools)
# read exactly like the training prompts.
CHAT_TEMPLATE = """{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant\\n' }}
{%- for call in message.tool_calls %}
{{- '<tool_call>{"name": "' + call.function.name + '", "arguments": ' + call.function.arguments | tojson + '}</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

MODEL_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def rendered_call(expression: str) -> str:
    """The assistant's tool call as the template renders it (the held-out reference)."""
    return f'<tool_call>{{"name": "calculator", "arguments": {json.dumps({"expression": expression})}}}</tool_call>'


def problems(
    n: int, seed: int, exclude: frozenset[tuple] | set[tuple] = frozenset()
) -> list[tuple[int, str, int]]:
    """`n` distinct (a, operator word, b) triples not in `exclude`."""
    rng = random.Random(seed)
    out: dict[tuple[int, str, int], None] = {}
    while len(out) < n:
        triple = (rng.randrange(100), rng.choice(list(OPERATORS)), rng.randrange(100))
        if triple not in exclude:
            out[triple] = None
    return list(out)


def conversation(a: int, word: str, b: int, *, heldout: bool = False) -> dict[str, Any]:
    """One row: question, tool call, tool result, answer (held-out: question and the reference call)."""
    expression = f"{a} {OPERATORS[word]} {b}"
    question = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is {a} {word} {b}?"},
    ]
    if heldout:
        return {"messages": [*question, {"role": "assistant", "content": rendered_call(expression)}]}
    result = str(CALCULATE[OPERATORS[word]](a, b))
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "calculator", "arguments": json.dumps({"expression": expression})},
    }
    return {
        "messages": [
            *question,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": result},
            {"role": "assistant", "content": result},
        ],
        "tools": json.dumps([CALCULATOR]),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_agentic_tiny(folder: str | Path, n_train: int = 4000, n_heldout: int = 200) -> Path:
    """Write `train.jsonl`, `heldout.jsonl`, `chat_template.jinja` and `tiny-model/` into `folder`."""
    from arctic_core.testing import save_tokenizer_files, tiny_config, tiny_generation_config

    folder = Path(folder)
    heldout = problems(n_heldout, seed=1)
    write_jsonl(folder / "heldout.jsonl", [conversation(*p, heldout=True) for p in heldout])
    write_jsonl(
        folder / "train.jsonl", [conversation(*p) for p in problems(n_train, seed=0, exclude=set(heldout))]
    )
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    model_dir = folder / "tiny-model"
    tiny_config("llama", **MODEL_CONFIG).save_pretrained(model_dir)
    tiny_generation_config().save_pretrained(model_dir)
    save_tokenizer_files(model_dir)
    return folder
