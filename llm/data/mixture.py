"""Which sources feed a split: one source, a corpus manifest (its file for data.format and the
split), or a weighted mixture written "KIND:PATH@WEIGHT".

Weights are proportions of documents drawn (Grain `MapDataset.mix`), fixed for the whole run.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from llm.data.builtin import manifest_file, manifest_format, manifest_path_for
from llm.data.sources import SOURCE_KINDS, open_source
from llm.errors import ConfigError


# data.format -> the manifest kind it reads (a path to `llm data builtin`'s manifest.json).
_MANIFEST_KIND = {"pretrain": "pretrain", "sft": "sft", "preference": "preference"}


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    kind: str
    path: str
    weight: float


def parse_mixture(specs: Sequence[str]) -> list[MixtureEntry]:
    """Parse ("jsonl:a/*.jsonl@0.7", "text:b@0.3"); a missing weight means 1."""
    entries = []
    for spec in specs:
        if ":" not in spec:
            raise ConfigError(f"data.mixture entry {spec!r} has no kind; write KIND:PATH@WEIGHT with KIND in {', '.join(SOURCE_KINDS)}")
        kind, rest = spec.split(":", 1)
        path, weight = rest, 1.0
        if "@" in rest:
            path, text = rest.rsplit("@", 1)
            try:
                weight = float(text)
            except ValueError:
                raise ConfigError(f"data.mixture entry {spec!r}: weight {text!r} is not a number") from None
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"data.mixture entry {spec!r}: kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if weight <= 0:
            raise ConfigError(f"data.mixture entry {spec!r}: weight must be positive")
        entries.append(MixtureEntry(kind, path, weight))
    if not entries:
        raise ConfigError("data.mixture is empty")
    return entries


def mixture_sources(config: ml_collections.ConfigDict, split: str, entries: list[MixtureEntry] | None):
    """(source, weight, name, explicit) per source of `split`; `explicit` means the source already
    is that split (eval_path / eval_split), otherwise the caller holds out a hashed fraction."""
    d = config.data
    opts = dict(data_dir=d.data_dir, record_format=d.record_format)
    explicit = bool(d.eval_path or d.eval_split)
    if entries is not None:
        if d.path:
            raise ConfigError("set either data.mixture or data.path, not both (data.path would be ignored)")
        if split == "validation" and d.eval_path:
            return [(open_source(d.source, d.eval_path, split=d.split, **opts), 1.0, d.eval_path, True)]
        split_name = d.eval_split if (split == "validation" and d.eval_split) else d.split
        return [
            (open_source(e.kind, e.path, split=split_name, **opts), e.weight, f"{e.kind}:{e.path}", explicit)
            for e in entries
        ]
    manifest = manifest_path_for(d.path) if d.path else None
    if manifest is not None:
        kind = _MANIFEST_KIND.get(d.format)
        if kind is None:
            raise ConfigError(f"data.format={d.format!r} has no files in a corpus manifest; use one of {', '.join(_MANIFEST_KIND)}")
        fmt = manifest_format(manifest)
        if split == "validation" and d.eval_path:
            return [(open_source(fmt, d.eval_path), 1.0, d.eval_path, True)]
        return [(open_source(fmt, manifest_file(manifest, kind, split)), 1.0, f"{manifest}:{kind}/{split}", True)]
    if split == "validation" and d.eval_path:
        return [(open_source(d.source, d.eval_path, split=d.split, **opts), 1.0, d.eval_path, True)]
    if split == "validation" and d.eval_split:
        return [(open_source(d.source, d.path, split=d.eval_split, **opts), 1.0, f"{d.path}[{d.eval_split}]", True)]
    name = d.path or "builtin"
    return [(open_source(d.source, d.path, split=d.split, **opts), 1.0, name, explicit)]
