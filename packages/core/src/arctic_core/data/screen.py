"""Screening local text data files before `datasets` reads them: encoding and row length.

`datasets` reads a whole JSON line into memory and parses it before Arctic sees the row, and
a file that is not UTF-8 fails inside it with a bare `UnicodeDecodeError`. So local `.jsonl`,
`.json` and `.csv` files are first streamed here, one line at a time and never more than
`max_row_bytes` of a line in memory:

- a line that is not UTF-8 text (or holds NUL bytes: a binary file) refuses the file, naming
  the file and line (`DataError`, exit 1);
- in a `.jsonl` file, a line longer than `max_row_bytes` (`ROW_BYTES_PER_TOKEN` x
  `data.max_length`: far more than any sample that fits `max_length` tokens) is dropped
  with a warning naming the file and line, or is an error under `data.strict`. Plain-text
  sources (`format = "text"`, or rows with only a `text` column) are exempt: their long
  documents are cut into `max_length` pieces, not dropped.

A file with nothing to drop is read as it is; otherwise the kept lines are copied (streamed)
into the source's scratch folder and that copy is read.
"""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path
from typing import BinaryIO

from arctic_core.data.errors import DataError

ROW_BYTES_PER_TOKEN = 64
"""Bytes a JSON line may take per token of `data.max_length` (English text is about 4 bytes/token)."""
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
_CHUNK = 1 << 20
_SHOWN = 5

log = logging.getLogger("arctic")


def max_row_bytes(max_length: int) -> int:
    """The longest `.jsonl` line kept for a `data.max_length` of `max_length` tokens."""
    return ROW_BYTES_PER_TOKEN * max_length


def _lines(
    handle: BinaryIO, bound: int, check: Path | None = None, number: int = 0
) -> tuple[int, bytes, bool]:
    """Read one line: its length in bytes (0 at end of file), its first `bound` + 1 bytes, and
    whether that is the whole line (False: the line is longer than `bound`).

    With `check` (the file's path), every byte read is checked to be UTF-8 text, chunk by chunk.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    head = handle.readline(bound + 1)
    size = len(head)
    if check is not None:
        _check_text(decoder, head, check, number)
    if size <= bound or head.endswith(b"\n"):
        return size, head, True
    piece = head
    while not piece.endswith(b"\n"):  # skip the rest of an over-long line, a chunk at a time
        piece = handle.readline(_CHUNK)
        if not piece:
            break
        size += len(piece)
        if check is not None:
            _check_text(decoder, piece, check, number)
    return size, head, False


def _check_text(decoder: codecs.IncrementalDecoder, data: bytes, file: Path, number: int) -> None:
    problem = "holds NUL bytes" if b"\x00" in data else None
    if problem is None:
        try:
            decoder.decode(data)
        except UnicodeDecodeError as exc:
            problem = f"is not UTF-8 (byte 0x{data[exc.start]:02x})"
    if problem is not None:
        raise DataError(f"{file}:{number}: {problem}: not a text data file in UTF-8")


_TEXT_ROW = re.compile(rb'^\s*\{\s*"text"\s*:')


def _plain_text_rows(head: bytes) -> bool:
    """Whether a JSON line (maybe cut short) is a plain-text row: its first key is `text`."""
    return _TEXT_ROW.match(head) is not None


def screen_file(
    file: Path, *, bound: int, scratch: Path, strict: bool = False, plain_text: bool = False
) -> Path:
    """The file to load for `file`: itself, or a copy in `scratch` without its over-long lines.

    Raises `DataError` (file and line) for non-UTF-8 or binary content, and under `strict` for
    an over-long line. `plain_text` exempts long lines (documents cut into pieces later).
    """
    if file.suffix.lower() not in TEXT_SUFFIXES:
        return file
    limit = bound if file.suffix.lower() == ".jsonl" else None
    dropped: list[tuple[int, int]] = []
    with file.open("rb") as handle:
        number = 0
        while True:
            size, head, whole = _lines(handle, limit if limit is not None else _CHUNK, file, number + 1)
            if not size:
                break
            number += 1
            if number == 1 and _plain_text_rows(head):
                plain_text = True
            if not whole and limit is not None and not plain_text:
                dropped.append((number, size))
    if not dropped:
        return file
    _report(dropped, file, bound, strict)
    return _copy_without(file, {number for number, _ in dropped}, scratch, bound)


def _report(dropped: list[tuple[int, int]], file: Path, bound: int, strict: bool) -> None:
    why = f"longer than {bound:,} bytes ({ROW_BYTES_PER_TOKEN} x data.max_length)"
    if strict:
        number, size = dropped[0]
        raise DataError(f"{file}:{number}: a row of {size:,} bytes, {why} (data.strict is set)")
    for number, size in dropped[:_SHOWN]:
        log.warning("%s:%d: row of %s bytes dropped before tokenization: %s", file, number, f"{size:,}", why)
    if len(dropped) > _SHOWN:
        log.warning("%s: %d more rows dropped as too long", file, len(dropped) - _SHOWN)


def _copy_without(file: Path, skip: set[int], scratch: Path, bound: int) -> Path:
    """Stream `file` into `scratch` without the lines numbered in `skip`."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / f"screened-{file.stem}{file.suffix}"
    with file.open("rb") as source, copy.open("wb") as target:
        number = 0
        while True:
            size, line, whole = _lines(source, bound)
            if not size:
                break
            number += 1
            if number not in skip and whole:
                target.write(line if line.endswith(b"\n") else line + b"\n")
    return copy
