"""Chat templates and tokenizers for the data pipeline tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

# Llama-3.1-style: BOS, a system header with a date, <|eot_id|> closes every turn.
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' }}
{{- system_message }}{{- '<|eot_id|>' }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

# Qwen2.5-style: ChatML with a default system prompt injected when the conversation has none.
QWEN25_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message['role'] != 'system' or not loop.first %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

# ChatML with {% generation %} markers around each assistant answer and its end-of-turn token.
GENERATION_TEMPLATE = r"""{%- for message in messages %}
{%- if message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\n' }}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

# Rewrites earlier assistant turns (as reasoning templates do): not renderable turn by turn.
REWRITING_TEMPLATE = r"""{%- for message in messages %}
{%- if message['role'] == 'assistant' and not loop.last %}{{- '<|im_start|>assistant\n(earlier answer)<|im_end|>\n' }}
{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

# name -> (template or None for the shipped ChatML one, assistant header, end-of-turn token)
TEMPLATES: dict[str, tuple[str | None, str, str]] = {
    "chatml": (None, "<|im_start|>assistant\n", "<|im_end|>"),
    "llama3": (LLAMA3_TEMPLATE, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "qwen2.5": (QWEN25_TEMPLATE, "<|im_start|>assistant\n", "<|im_end|>"),
    "generation": (GENERATION_TEMPLATE, "<|im_start|>assistant\n", "<|im_end|>"),
}


def tokenizer_with(template: str | None) -> Any:
    """A copy of the shipped tokenizer, with `template` (and the Llama-3 special tokens) if given."""
    from arctic_core.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    if template is not None:
        tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
        tokenizer.chat_template = template
    return tokenizer
