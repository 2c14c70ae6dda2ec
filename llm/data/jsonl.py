"""Whole small JSONL files (prompts to complete, classification splits) read strictly: a missing
file, non-UTF-8 bytes or a line that is not JSON stops with one line naming the file, the line
and the fix. Training corpora go through llm.data.sources instead, whose bad-input policy can
skip bad records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from llm.errors import UserError


def read_jsonl(path: str | Path, label: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of `path`, in order; `label` names the file
    in errors (e.g. "--input"). The file is decoded whole before the first record comes back, so
    a bad byte anywhere stops the read even when the caller takes only the first records."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{label} {str(path)!r} does not exist; check the path")
    return _records(decode_utf8(file.read_bytes(), path, label), path)


def decode_utf8(data: bytes, path: str | Path, label: str) -> str:
    """The text of a file's bytes; bytes that are not UTF-8 are named by line and offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{label} {str(path)!r} is not UTF-8 (line {line}, byte {err.start}); re-encode it as UTF-8") from None


def _records(text: str, path: str | Path) -> Iterator[tuple[int, Any]]:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters that
    # splitlines() treats as line breaks; a "\r" left by Windows line ends is JSON white space.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"line {n} of {path} is not JSON ({err.msg}); write one object per line") from None
        yield n, record
