"""Train the tiny byte-level BPE tokenizer shipped in `arctic_core.testing`.

The corpus is generated here from a fixed seed (English-ish words, digits, arithmetic such as
"12 + 7 = 19", key-value lookups, short chat-like lines), so running the script again rewrites identical files:

    python packages/core/scripts/make_tokenizer.py [--out DIR]

Design of the result (tests in `test_testing_kit.py` pin it down):

- byte-level BPE with 1020 learned tokens, then four special tokens at ids 1020-1023:
  `<|endoftext|>` (EOS), `<|begin_of_text|>` (BOS), `<|im_start|>`, `<|im_end|>` (end of turn);
- digits are split one per token (Qwen2-style pre-tokenizer), so 0-9 are always single tokens;
- no pad token, on purpose, so code that pads has to choose one;
- BOS is never added automatically; load with `add_bos_token=True` to get it;
- a ChatML chat template without `{% generation %}` markers, `model_max_length` 2048.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SEED = 1234
LEARNED_VOCAB = 1020
EOS, BOS, IM_START, IM_END = "<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS, BOS, IM_START, IM_END]
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "arctic_core" / "testing" / "tokenizer"

# Qwen2's split: contractions, letters with one leading non-letter, single digits, punctuation runs,
# newlines, other whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_WORD_TEXT = """
the a an and or but if then else of to in on at by for with from as is are was were be been being
have has had do does did can could will would shall should may might must not no yes all any some
each every one two three four five six seven eight nine ten zero hundred thousand number numbers
what which who whom whose when where why how this that these those it its they them their there
here you your yours we our us he him his she her i me my mine about above after again against
answer question ask asked add added plus minus sum difference total result equals equal value key
list word words letter letters name names first last next before today tomorrow time day week year
good great small large big little long short new old right wrong true false please thanks thank
hello hi help helpful assistant user system model chat message reply respond response correct
compute calculate count find give tell show write read explain simple short example examples
data train training test eval loss token tokens text line lines file files step steps learn
red green blue cat dog bird fish tree house car book city river sun moon star water fire
"""
WORDS = _WORD_TEXT.split()

ONSETS = [*"bcdfghklmnprstvwz", "st", "tr", "ch"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "n", "r", "s", "l", "t"]

PHRASES = [
    "Hello! How can I help you today?",
    "You are a helpful assistant.",
    "Sure, here is the answer.",
    "Thanks, that is correct.",
    "Please answer with a number.",
    "I don't know, can you explain?",
    "Let's think step by step.",
    "The answer is",
    "What is the value of",
]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", "?", "!", ",", ":"])


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return rng.choice([f"{a} {op} {b} = {value}", f"What is {a} {op} {b}?", f"The answer is {value}."])


def _pseudo_word(rng: random.Random) -> str:
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.randint(1, 3))]
    return "".join(syllables) + rng.choice(CODAS)


def _lookup(rng: random.Random) -> str:
    key, value = _pseudo_word(rng), rng.randint(0, 999)
    return rng.choice([f"The key {key} maps to {value}.", f"What is the value of {key}?", f"{key}: {value}"])


def _chat_line(rng: random.Random) -> str:
    role = rng.choice(["system", "user", "assistant"])
    body = rng.choice([_sentence, _arithmetic, _lookup])(rng) if rng.random() < 0.7 else rng.choice(PHRASES)
    return f"{role}\n{body}\n"


def build_corpus(n_lines: int = 30_000, seed: int = SEED) -> list[str]:
    """The deterministic training corpus: a mix of prose, arithmetic, lookups and chat lines."""
    rng = random.Random(seed)
    makers = [_sentence, _arithmetic, _lookup, _chat_line]
    return [rng.choice(makers)(rng) for _ in range(n_lines)]


def train_tokenizer(corpus: list[str]) -> Tokenizer:
    """Train byte-level BPE on `corpus` and append the special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=LEARNED_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if tokenizer.get_vocab_size() != LEARNED_VOCAB:
        raise RuntimeError(f"BPE learned {tokenizer.get_vocab_size()} tokens, expected {LEARNED_VOCAB}")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """The `tokenizer_config.json` that makes transformers load `tokenizer.json` as a fast tokenizer."""
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": None,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],  # transformers 5 reads it as extra_special_tokens
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
    }


def write(out_dir: Path) -> None:
    """Train and write `tokenizer.json` and `tokenizer_config.json` into `out_dir`."""
    tokenizer = train_tokenizer(build_corpus())
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    config = json.dumps(tokenizer_config(tokenizer), indent=2, ensure_ascii=False)
    (out_dir / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
    print(f"wrote {out_dir} (vocab {tokenizer.get_vocab_size()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
