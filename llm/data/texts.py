"""Sequential plain text of a configured source, for tokenizer training and inspection.

Reads the training split in file order (no shuffle), renders SFT / preference records through
the chat template so role markers are seen, and stops after `max_bytes`.
"""

from __future__ import annotations

from typing import Iterator

import ml_collections

from llm.data.encode import text_of
from llm.data.formats import chat_template, sft_messages
from llm.data.mixture import mixture_sources, parse_mixture
from llm.data.pipeline import split_indices
from llm.data.sources import BadRecord
from llm.errors import ConfigError, UserError


def _record_text(record, config: ml_collections.ConfigDict, where: str, template) -> str | BadRecord:
    d = config.data
    if d.format == "pretrain":
        return text_of(record, d.text_field, where)
    if d.format == "sft":
        messages = sft_messages(record, d.prompt_field, d.response_field, where)
        return messages if isinstance(messages, BadRecord) else template.text(messages)
    if isinstance(record, dict) and all(k in record for k in (d.prompt_field, "chosen", "rejected")):
        parts = []
        for key, role in ((d.prompt_field, "user"), ("chosen", "assistant"), ("rejected", "assistant")):
            value = record[key]
            messages = [{"role": role, "content": value}] if isinstance(value, str) else value
            parts.append(template.text(messages))
        return "".join(parts)
    return BadRecord("not a preference record", where)


def iter_texts(config: ml_collections.ConfigDict, split: str = "train", max_bytes: int | None = None) -> Iterator[str]:
    """Document texts of `split`; bad records are skipped (tokenizer training tolerates them)."""
    d = config.data
    if d.source == "synthetic" and not d.mixture:
        raise ConfigError("data.source=synthetic has no text; set data.source/data.path to a corpus")
    template = chat_template(d.chat_template)
    entries = parse_mixture(d.mixture) if d.mixture else None
    total, produced = 0, 0
    for source, _weight, _name, explicit in mixture_sources(config, split, entries):
        indices = range(len(source)) if explicit else split_indices(source, split, d.eval_fraction)
        for i in indices:
            text = _record_text(source[int(i)], config, source.where(int(i)), template)
            if isinstance(text, BadRecord):
                continue
            produced += 1
            yield text
            total += len(text.encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                return
    if produced == 0:
        raise UserError(f"data source {d.path or 'builtin'!r} yielded no usable text for split {split!r}")
