"""Unicode normalization and whitespace cleanup that keeps indentation (code is text too)."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline; zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str = "NFC") -> str:
    """NFC/NFKC (or none), CRLF -> LF, control and zero-width characters removed, trailing
    spaces cut, runs of blank lines shortened to one, leading/trailing blank space stripped."""
    if form:
        text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n").rstrip() + "\n" if text.strip() else ""
