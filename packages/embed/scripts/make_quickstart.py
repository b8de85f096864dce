"""Write recipes/quickstart/: a tiny BERT config + the shipped tokenizer, training pairs, a held-out BEIR folder.

Run from the repository root: `uv run python packages/embed/scripts/make_quickstart.py`.
The task: a document is 6 random words, its query 3 of them shuffled (tests/embed_support.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from embed_support import task, tiny_encoder_config, write_beir, write_jsonl  # noqa: E402

from arctic_core.testing import save_tokenizer_files  # noqa: E402


def main() -> None:
    out = HERE / "recipes" / "quickstart"
    model = out / "tiny-encoder"
    model.mkdir(parents=True, exist_ok=True)
    tiny_encoder_config("bert").save_pretrained(model)
    save_tokenizer_files(model)
    write_jsonl(out / "train.jsonl", task(1024, seed=1))
    write_beir(out / "heldout", task(200, seed=2))


if __name__ == "__main__":
    main()
