"""`arctic data clean RECIPE`: the `[clean]` steps, in order, and a report of what each removed.

1. `exact`: a row whose text (all its messages, lower-cased, whitespace collapsed) repeats an
   earlier row's.
2. `near`: MinHash over `shingle_words`-word shingles with LSH (datasketch): a row whose estimated
   Jaccard similarity to an earlier kept row is at least `near_dedup`.
3. `length`: answers with fewer than `min_words` or more than `max_words` words.
4. `language`: answers not guessed as one of `languages` (`arctic_core.synth.text.language`).
5. `decontaminate`: a row sharing an `ngram`-word n-gram with a message of `eval_sources` (a
   message shorter than `ngram` words counts whole; messages under 4 words are ignored).
6. `filters`: each function of the recipe's `code:` file, `row -> bool` (false drops the row).
7. `judge`: the LLM judge's score under `[clean.judge] threshold` (or no score).

The rows kept go, unchanged, to `<output_dir>/data.jsonl`; `report.json` gives per step the count
removed, why, and `examples` removed rows (with the input row number of the kept row a near-duplicate matched).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from arctic_core.config import CleanConfig, SourceConfig, TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.synth import text as tx

Log = Callable[[str], None]
MIN_EVAL_WORDS = 4


@attrs.define
class Item:
    """One row being cleaned: its number in the input, the row as read, its prompt and answer texts."""

    index: int
    row: dict[str, Any]
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        """The prompt and the answer."""
        return f"{self.prompt}\n{self.answer}"


Removed = list[tuple[Item, str]]


def _texts(canonical: dict[str, Any]) -> tuple[str, str]:
    kind = canonical.get("kind")
    if kind == "chat":
        messages = canonical["messages"]
        prompt = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
        return prompt, "\n".join(m["content"] for m in messages if m["role"] == "assistant")
    if kind == "preference":
        prompt = "\n".join(m["content"] for m in canonical["prompt"])
        return prompt, "\n".join(m["content"] for m in canonical["chosen"])
    if kind == "prompt_completion":
        return canonical["prompt"], canonical["completion"]
    return "", canonical["text"]


def read_items(clean: CleanConfig, config: TrainerConfig, scratch: Path) -> list[Item]:
    """The rows to clean: `[clean] sources`, else the shards of `[generate] output_dir`."""
    from arctic_core.synth.prompts import read_rows

    sources = list(clean.sources)
    if not sources:
        shards = sorted(Path(config.generate.output_dir).glob("shard-*.jsonl"))
        if not shards:
            raise RecipeError(
                f"is empty and {config.generate.output_dir} has no shards", path="clean.sources"
            )
        sources = [SourceConfig(type="jsonl", name_or_path=str(s)) for s in shards]
    rows = read_rows(sources, scratch, "clean.sources")
    return [Item(i, row, *_texts(canonical)) for i, (row, canonical) in enumerate(rows)]


def exact(items: list[Item], clean: CleanConfig) -> tuple[list[Item], Removed]:
    """Step 1 (module docstring): (kept, removed with reasons)."""
    seen: set[str] = set()
    kept, removed = [], []
    for item in items:
        key = tx.normal_form(item.text)
        if key in seen:
            removed.append((item, "same text as an earlier row"))
        else:
            seen.add(key)
            kept.append(item)
    return kept, removed


def near(items: list[Item], clean: CleanConfig) -> tuple[list[Item], Removed]:
    """Step 2: MinHash + LSH near-duplicates of earlier kept rows."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=clean.near_dedup, num_perm=clean.num_perm)
    first = MinHash(num_perm=clean.num_perm, seed=1)  # its permutations are drawn once, then shared
    sketches: dict[str, Any] = {}
    kept, removed = [], []
    for item in items:
        sketch = MinHash(
            num_perm=clean.num_perm, seed=1, permutations=first.permutations, scheme=first.scheme
        )
        sketch.update_batch([s.encode() for s in sorted(tx.shingles(item.text, clean.shingle_words))])
        similar = [(sketch.jaccard(sketches[k]), k) for k in lsh.query(sketch)]
        similar = [s for s in similar if s[0] >= clean.near_dedup]
        if similar:
            score, match = max(similar)
            removed.append((item, f"~{score:.2f} Jaccard with kept row {match}"))
            continue
        key = str(item.index)
        lsh.insert(key, sketch)
        sketches[key] = sketch
        kept.append(item)
    return kept, removed


def length(items: list[Item], clean: CleanConfig) -> tuple[list[Item], Removed]:
    """Step 3: answers outside min_words .. max_words."""
    kept, removed = [], []
    for item in items:
        count = len(tx.words(item.answer))
        if clean.min_words and count < clean.min_words:
            removed.append((item, f"{count} words < min_words {clean.min_words}"))
        elif clean.max_words and count > clean.max_words:
            removed.append((item, f"{count} words > max_words {clean.max_words}"))
        else:
            kept.append(item)
    return kept, removed


def language(items: list[Item], clean: CleanConfig) -> tuple[list[Item], Removed]:
    """Step 4: answers guessed as none of `languages`."""
    kept, removed = [], []
    for item in items:
        found = tx.language(item.answer)
        if found in clean.languages:
            kept.append(item)
        else:
            removed.append((item, f"language {found}, not one of {', '.join(clean.languages)}"))
    return kept, removed


def eval_grams(clean: CleanConfig, scratch: Path) -> dict[int, set[tuple[str, ...]]]:
    """The n-grams of the eval sets' messages, by length (module docstring, step 5)."""
    from arctic_core.synth.prompts import read_rows

    grams: dict[int, set[tuple[str, ...]]] = {}
    for _, canonical in read_rows(clean.eval_sources, scratch, "clean.eval_sources"):
        for part in _texts(canonical)[0].split("\n") + _texts(canonical)[1].split("\n"):
            ws = tx.words(part)
            if len(ws) < MIN_EVAL_WORDS:
                continue
            size = min(clean.ngram, len(ws))
            grams.setdefault(size, set()).update(tx.ngrams(ws, size))
    return grams


def decontaminate(
    items: list[Item], clean: CleanConfig, grams: dict[int, set[tuple[str, ...]]]
) -> tuple[list[Item], Removed]:
    """Step 5: rows sharing an n-gram with an eval set."""
    kept, removed = [], []
    for item in items:
        ws = tx.words(item.text)
        hit = next((g for size, found in grams.items() for g in tx.ngrams(ws, size) if g in found), None)
        if hit is None:
            kept.append(item)
        else:
            removed.append((item, f"shares {' '.join(hit)!r} with an eval set"))
    return kept, removed


def user_filters(items: list[Item], functions: list[tuple[str, Any]]) -> tuple[list[Item], Removed]:
    """Step 6: rows a `code:` function returns false for."""
    kept, removed = [], []
    for item in items:
        failed = next((name for name, function in functions if not function(item.row)), None)
        if failed is None:
            kept.append(item)
        else:
            removed.append((item, f"{failed}(row) is false"))
    return kept, removed


def judged(items: list[Item], config: TrainerConfig, cache: Path, log: Log) -> tuple[list[Item], Removed]:
    """Step 7: rows the judge scores under the threshold, or not at all."""
    from arctic_core.synth.judge import Judge

    judge = Judge(config, cache, log)
    try:
        verdicts = judge.verdicts([(item.prompt, item.answer) for item in items])
    finally:
        judge.close()
    threshold = config.clean.judge.threshold
    kept, removed = [], []
    for item, (score, reply) in zip(items, verdicts, strict=True):
        if score is not None and score >= threshold:
            kept.append(item)
        elif score is None:
            removed.append((item, f"no score in the judge's reply {reply[:80]!r}"))
        else:
            removed.append((item, f"score {score:g} < {threshold:g}"))
    return kept, removed


def _steps(
    config: TrainerConfig, folder: Path, code_folder: Path | None, log: Log
) -> list[tuple[str, str, Any]]:
    """The (name, what it removes, items -> (kept, removed)) steps `[clean]` turns on, in order."""
    clean = config.clean
    steps: list[tuple[str, str, Any]] = []
    if clean.exact_dedup:
        steps.append(("exact", "exact duplicates", lambda items: exact(items, clean)))
    if clean.near_dedup:
        steps.append(
            ("near", f"near-duplicates (Jaccard >= {clean.near_dedup})", lambda items: near(items, clean))
        )
    if clean.min_words or clean.max_words:
        steps.append(("length", "answers out of the word bounds", lambda items: length(items, clean)))
    if clean.languages:
        steps.append(("language", "answers in other languages", lambda items: language(items, clean)))
    if clean.eval_sources:
        grams = eval_grams(clean, folder / ".scratch")
        why = f"rows sharing a {clean.ngram}-word n-gram with an eval set"
        steps.append(("decontaminate", why, lambda items: decontaminate(items, clean, grams)))
    if clean.filters:
        from arctic_core.synth.userfilters import user_function

        functions = [
            (name, user_function(config, name, f"clean.filters[{i}]", code_folder))
            for i, name in enumerate(clean.filters)
        ]
        steps.append(("filters", "rows a code: filter rejects", lambda items: user_filters(items, functions)))
    if clean.judge.rubric:
        why = f"rows the judge scores under {clean.judge.threshold:g}"
        steps.append(
            ("judge", why, lambda items: judged(items, config, folder / ".judge-requests.jsonl", log))
        )
    return steps


def run_clean(config: TrainerConfig, log: Log = print, code_folder: Path | None = None) -> dict[str, Any]:
    """Clean the rows and write `data.jsonl` and `report.json` into `[clean] output_dir`."""
    clean = config.clean
    folder = Path(clean.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    items = read_items(clean, config, folder / ".scratch")
    report: dict[str, Any] = {"input_rows": len(items), "steps": []}
    for name, why, step in _steps(config, folder, code_folder, log):
        items, removed = step(items)
        examples = [{"row": item.row, "reason": reason} for item, reason in removed[: clean.examples]]
        report["steps"].append({"step": name, "why": why, "removed": len(removed), "examples": examples})
        log(f"{name}: removed {len(removed)} ({why}); {len(items)} left")
    report["kept_rows"] = len(items)
    tmp = folder / "data.jsonl.partial"
    with tmp.open("w") as out:
        for item in items:
            out.write(json.dumps(item.row) + "\n")
    tmp.replace(folder / "data.jsonl")
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report
