"""Output shards of curated documents: ArrayRecord (JSON records) or JSONL, one shard open at a time."""

from __future__ import annotations

import json
from pathlib import Path

from llm.errors import ConfigError

EXTENSIONS = {"arrayrecord": "array_record", "jsonl": "jsonl"}


class ShardWriter:
    """Writes {split}-{index:05d}.{ext} files of at most `shard_docs` records each."""

    def __init__(self, directory: str | Path, split: str, fmt: str, shard_docs: int):
        if fmt not in EXTENSIONS:
            raise ConfigError(f"data.curate.output_format={fmt!r} is not one of {', '.join(EXTENSIONS)}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.fmt = fmt
        self.shard_docs = max(1, int(shard_docs))
        self.files: list[str] = []
        self.count = 0
        self._writer = None
        self._in_shard = 0

    @property
    def pattern(self) -> str:
        return f"{self.split}-*.{EXTENSIONS[self.fmt]}"

    def _open(self) -> None:
        name = f"{self.split}-{len(self.files):05d}.{EXTENSIONS[self.fmt]}"
        path = self.directory / name
        self.files.append(name)
        if self.fmt == "arrayrecord":
            from array_record.python.array_record_module import ArrayRecordWriter

            self._writer = ArrayRecordWriter(str(path), "group_size:1")
        else:
            self._writer = open(path, "w", encoding="utf-8")
        self._in_shard = 0

    def write(self, record: dict) -> None:
        if self._writer is None or self._in_shard >= self.shard_docs:
            self.close()
            self._open()
        line = json.dumps(record, ensure_ascii=False)
        if self.fmt == "arrayrecord":
            self._writer.write(line.encode("utf-8"))
        else:
            self._writer.write(line + "\n")
        self._in_shard += 1
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
