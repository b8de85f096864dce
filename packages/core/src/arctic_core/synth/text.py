"""Text measures for cleaning: normal form, words, shingles, n-grams, a small language guess.

The language guess counts each language's commonest function words among a text's words and
takes the language with the most (none found: "unknown"). It is small and has no model to
download; the maintained identifiers (fastText's lid.176, lingua) need either a model file
fetched at run time or a large package, and this filter only has to tell the languages of
synthetic answers apart, which are long enough for function words to decide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)

FUNCTION_WORDS = {
    "en": "the and of to a in is that it for you are with on this be as not have was",
    "de": "der die und das ist nicht ein eine zu den mit sich von auf für ich sie es des",
    "fr": "le la les et des est un une du en que pas pour dans qui sur au avec ce",
    "es": "el la de que y los las en un una por es con para del se al lo como",
    "it": "il di che la e per un una non sono del della con le si gli ho è da",
    "pt": "o de que a e do da em um para com não uma os no se na por mais",
    "nl": "de het een en van is dat niet op te zijn met voor die er maar ook als",
}
_SETS = {lang: set(words.split()) for lang, words in FUNCTION_WORDS.items()}


def words(text: str) -> list[str]:
    """The lower-cased words of `text`."""
    return _WORD.findall(text.lower())


def normal_form(text: str) -> str:
    """`text` lower-cased with its whitespace collapsed (exact duplicates compare this)."""
    return " ".join(text.lower().split())


def shingles(text: str, size: int) -> set[str]:
    """The `size`-word shingles of `text` (the whole text when shorter)."""
    ws = words(text)
    if len(ws) <= size:
        return {" ".join(ws)}
    return {" ".join(ws[i : i + size]) for i in range(len(ws) - size + 1)}


def ngrams(ws: list[str], size: int) -> Iterable[tuple[str, ...]]:
    """The `size`-word n-grams of a word list."""
    return (tuple(ws[i : i + size]) for i in range(len(ws) - size + 1))


def language(text: str) -> str:
    """The language whose function words `text` uses most; "unknown" when it uses none."""
    ws = words(text)
    counts = {lang: sum(w in found for w in ws) for lang, found in _SETS.items()}
    best = max(counts, key=lambda lang: counts[lang])
    return best if counts[best] else "unknown"
