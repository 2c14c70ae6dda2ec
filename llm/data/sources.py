"""Random-access document sources: text files, JSONL, Parquet, ArrayRecord, TFDS, Hugging Face
datasets saved to disk, and the built-in text (the running interpreter's standard library).

A source is a picklable sequence of raw records (`str` for text files, `dict` otherwise) that
Grain indexes (`MapDataset.source`). A record that cannot be read comes back as a `BadRecord`
naming the reason and `file:line`, so the pipeline applies the bad-input policy in one place.
Every record also has a stable `key` (path relative to the source root + record index) that
the train/validation split hashes without reading the record.
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import json
import os
import sysconfig
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from llm.errors import UserError

SOURCE_KINDS = ("text", "jsonl", "parquet", "arrayrecord", "tfds", "hf")

_EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages")


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record the reader could not use; the policy decides whether it is skipped or fatal."""

    reason: str
    where: str


def _is_remote(path: str) -> bool:
    return "://" in path


def expand_paths(pattern: str, what: str = "data.path") -> tuple[list[str], str]:
    """Files matching a glob, a directory (all files below it) or one file; also returns the root
    the record keys are relative to. A pattern that matches nothing is an error."""
    if not pattern:
        raise UserError(f"{what} is empty; set it to a file, directory or glob")
    if _is_remote(pattern):
        from etils import epath

        parts = pattern.split("/")
        cut = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
        base = epath.Path("/".join(parts[:cut]))
        if cut == len(parts):
            files = sorted(str(p) for p in base.rglob("*") if p.is_file()) if base.is_dir() else ([str(base)] if base.exists() else [])
            root = str(base) if base.is_dir() else str(base.parent)
        else:
            files = sorted(str(p) for p in base.glob("/".join(parts[cut:])) if p.is_file())
            root = str(base)
    else:
        p = Path(pattern).expanduser()
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            root = str(p)
        elif p.is_file():
            files, root = [str(p)], str(p.parent)
        else:
            files = sorted(f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
            # Keys are relative to the pattern's fixed prefix, so adding files never moves them.
            parts = Path(str(p)).parts
            cut = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts) - 1)
            root = str(Path(*parts[:cut])) if cut else ""
    if not files:
        raise UserError(f"{what}={pattern!r} matches no files; check the path or glob")
    return files, root


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if root and path.startswith(root) else os.path.basename(path)


def open_file(path: str, mode: str = "rb"):
    if _is_remote(path):
        from etils import epath

        return epath.Path(path).open(mode)
    return open(path, mode)


def decode_utf8(data: bytes, where: str) -> str | BadRecord:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return BadRecord("non-UTF-8 bytes", f"{where}:{line}")


def json_object(text: str, where: str, hint: str = "") -> dict | BadRecord:
    """One JSON object from a line or record; anything else is a BadRecord naming the cause."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return BadRecord(f"malformed JSON ({err.msg}){hint}", where)
    if not isinstance(record, dict):
        return BadRecord(f"JSON record is a {type(record).__name__}, expected an object", where)
    return record


class TextFiles:
    """One document per file."""

    kind = "text"

    def __init__(self, files: Sequence[str], root: str, name: str = "text"):
        self.files = list(files)
        self.root = root
        self.name = name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str | BadRecord:
        path = self.files[i]
        with open_file(path) as f:
            data = f.read()
        return decode_utf8(data, path)

    def key(self, i: int) -> str:
        return _relative(self.files[i], self.root)

    def where(self, i: int) -> str:
        return f"{self.files[i]}:1"


class JsonlFiles:
    """One JSON object per line; line offsets are indexed once so records are random-access.
    Local files are read with os.pread (thread-safe, no shared file position)."""

    kind = "jsonl"

    def __init__(self, files: Sequence[str], root: str, name: str = "jsonl"):
        self.files = list(files)
        self.root = root
        self.name = name
        file_ids, starts, lengths, lines = [], [], [], []
        for fid, path in enumerate(self.files):
            offsets, sizes, numbers = _line_index(path)
            file_ids.append(np.full(len(offsets), fid, np.int32))
            starts.append(offsets)
            lengths.append(sizes)
            lines.append(numbers)
        self._file = np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32)
        self._start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._line = np.concatenate(lines) if lines else np.zeros(0, np.int64)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._start)

    def _read(self, fid: int, start: int, length: int) -> bytes:
        path = self.files[fid]
        if _is_remote(path):
            with self._lock, open_file(path) as f:
                f.seek(start)
                return f.read(length)
        fd = self._fds.get(fid)
        if fd is None:
            with self._lock:
                fd = self._fds.get(fid)
                if fd is None:
                    fd = self._fds[fid] = os.open(path, os.O_RDONLY)
        return os.pread(fd, length, start)

    def __getitem__(self, i: int) -> dict | BadRecord:
        raw = self._read(int(self._file[i]), int(self._start[i]), int(self._length[i]))
        where = self.where(i)
        text = decode_utf8(raw, where)
        if isinstance(text, BadRecord):
            return BadRecord(text.reason, where)
        return json_object(text, where)

    def key(self, i: int) -> str:
        return f"{_relative(self.files[int(self._file[i])], self.root)}:{int(self._line[i])}"

    def where(self, i: int) -> str:
        return f"{self.files[int(self._file[i])]}:{int(self._line[i])}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _line_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte offsets, byte lengths and 1-based line numbers of the non-blank lines of a file."""
    offsets, sizes, numbers = [], [], []
    pos = 0
    with open_file(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                offsets.append(pos)
                sizes.append(len(line))
                numbers.append(number)
            pos += len(line)
    return np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), np.asarray(numbers, np.int64)


class _TableRows(abc.ABC):
    """Rows of columnar files (Parquet, Arrow) addressed as (file, chunk, row) with a one-chunk cache."""

    files: list[str]
    root: str

    def _build_index(self, counts: list[list[int]]) -> None:
        file_ids, chunk_ids, rows = [], [], []
        for fid, chunk_counts in enumerate(counts):
            for cid, n in enumerate(chunk_counts):
                file_ids.append(np.full(n, fid, np.int32))
                chunk_ids.append(np.full(n, cid, np.int32))
                rows.append(np.arange(n, dtype=np.int64))
        self._file = np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32)
        self._chunk = np.concatenate(chunk_ids) if chunk_ids else np.zeros(0, np.int32)
        self._row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self._cache: tuple[tuple[int, int], list[dict]] | None = None

    def __len__(self) -> int:
        return len(self._row)

    @abc.abstractmethod
    def _chunk_rows(self, fid: int, cid: int) -> list[dict]:
        """All rows of chunk `cid` (row group / record batch) of file `fid`."""

    def __getitem__(self, i: int) -> dict:
        fid, cid = int(self._file[i]), int(self._chunk[i])
        if self._cache is None or self._cache[0] != (fid, cid):
            self._cache = ((fid, cid), self._chunk_rows(fid, cid))
        return self._cache[1][int(self._row[i])]

    def _global_row(self, i: int) -> int:
        fid = int(self._file[i])
        first = int(np.searchsorted(self._file, fid, side="left"))
        return i - first

    def key(self, i: int) -> str:
        return f"{_relative(self.files[int(self._file[i])], self.root)}:{self._global_row(i)}"

    def where(self, i: int) -> str:
        return f"{self.files[int(self._file[i])]}:row {self._global_row(i)}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


class ParquetFiles(_TableRows):
    kind = "parquet"

    def __init__(self, files: Sequence[str], root: str, name: str = "parquet", columns: Sequence[str] | None = None):
        import pyarrow.parquet as pq

        self.files = [f for f in files if f.endswith(".parquet") or len(files) == 1]
        if not self.files:
            raise UserError(f"no .parquet files among {len(files)} files under {root!r}; point data.path at *.parquet")
        self.root = root
        self.name = name
        self.columns = list(columns) if columns else None
        counts = []
        for path in self.files:
            with open_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                counts.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._build_index(counts)

    def _chunk_rows(self, fid: int, cid: int) -> list[dict]:
        import pyarrow.parquet as pq

        with open_file(self.files[fid]) as f:
            table = pq.ParquetFile(f).read_row_group(cid, columns=self.columns)
        return table.to_pylist()


class HfDiskDataset(_TableRows):
    """A Hugging Face `Dataset.save_to_disk` directory (Arrow stream files listed in state.json),
    read with pyarrow so the `datasets` package is not needed."""

    kind = "hf"

    def __init__(self, directory: str, split: str = "train", name: str = "hf"):
        import pyarrow as pa

        root = Path(directory)
        if (root / "dataset_dict.json").exists():
            splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
            if split not in splits:
                raise UserError(f"{directory!r} has splits {splits}, not {split!r}; set data.split")
            root = root / split
        state_file = root / "state.json"
        if not state_file.exists():
            raise UserError(f"{directory!r} is not a Hugging Face save_to_disk directory (no state.json); use source=parquet for Parquet exports")
        state = json.loads(state_file.read_text())
        self.files = [str(root / entry["filename"]) for entry in state["_data_files"]]
        self.root = str(root)
        self.name = name
        counts = []
        for path in self.files:
            with pa.memory_map(path) as source:
                reader = pa.ipc.open_stream(source)
                counts.append([batch.num_rows for batch in reader])
        self._build_index(counts)

    def _chunk_rows(self, fid: int, cid: int) -> list[dict]:
        import pyarrow as pa

        with pa.memory_map(self.files[fid]) as source:
            reader = pa.ipc.open_stream(source)
            for index, batch in enumerate(reader):
                if index == cid:
                    return batch.to_pylist()
        raise IndexError(f"record batch {cid} missing from {self.files[fid]}")


class ArrayRecordFiles:
    """ArrayRecord shards; each record is a JSON object (what `llm data curate` writes) or raw
    UTF-8 text (record_format="text")."""

    kind = "arrayrecord"

    def __init__(self, files: Sequence[str], root: str, name: str = "arrayrecord", record_format: str = "json"):
        from grain.sources import ArrayRecordDataSource

        self.files = list(files)
        self.root = root
        self.name = name
        self.record_format = record_format
        self._source = ArrayRecordDataSource(self.files)
        lengths = []
        for path in self.files:
            lengths.append(len(ArrayRecordDataSource([path])))
        self._ends = np.cumsum(lengths)

    def __len__(self) -> int:
        return len(self._source)

    def _locate(self, i: int) -> tuple[int, int]:
        fid = int(np.searchsorted(self._ends, i, side="right"))
        start = 0 if fid == 0 else int(self._ends[fid - 1])
        return fid, i - start

    def __getitem__(self, i: int) -> dict | str | BadRecord:
        raw = self._source[int(i)]
        where = self.where(i)
        text = decode_utf8(raw, where)
        if isinstance(text, BadRecord) or self.record_format == "text":
            return text if not isinstance(text, BadRecord) else BadRecord(text.reason, where)
        return json_object(text, where, "; set data.record_format=text for raw text")

    def key(self, i: int) -> str:
        fid, j = self._locate(i)
        return f"{_relative(self.files[fid], self.root)}:{j}"

    def where(self, i: int) -> str:
        fid, j = self._locate(i)
        return f"{self.files[fid]}#record {j}"


class TfdsSource:
    """A TFDS dataset by name through `tfds.data_source` (ArrayRecord files in data_dir)."""

    kind = "tfds"

    def __init__(self, name: str, split: str, data_dir: str = ""):
        self.name = name
        self.split = split
        self.data_dir = data_dir or None
        self._source = self._open_dataset()

    def _open_dataset(self):
        import tensorflow_datasets as tfds

        try:
            return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
        except Exception as err:  # tfds raises many types for a missing dataset
            raise UserError(
                f"TFDS dataset {self.name!r} split {self.split!r} not found in data_dir={self.data_dir!r} ({type(err).__name__}); "
                "build it with `tfds build` (file_format=array_record) and set data.data_dir"
            ) from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        record = self._source[int(i)]
        return {k: (v.decode("utf-8", errors="strict") if isinstance(v, bytes) else v) for k, v in record.items()}

    def key(self, i: int) -> str:
        return f"{self.name}/{self.split}:{i}"

    def where(self, i: int) -> str:
        return f"tfds:{self.name}/{self.split}:{i}"

    def __getstate__(self):
        return {"name": self.name, "split": self.split, "data_dir": self.data_dir}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._source = self._open_dataset()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[str]:
    """The standard library's .py files, sorted, without tests, site-packages and private
    directories: the built-in text every machine has."""
    root = stdlib_root()
    found = []
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if any(p in _EXCLUDED_DIRS or p.startswith(("_", ".")) for p in parts):
            dirs[:] = []
            continue
        for f in files:
            if f.endswith(".py") and not f.startswith("test_"):
                found.append(os.path.join(directory, f))
    if not found:
        raise UserError(f"no standard library sources under {root}; set data.path to a text corpus")
    return sorted(found)


def builtin_text() -> TextFiles:
    return TextFiles(stdlib_files(), str(stdlib_root()), name="builtin")


def open_source(kind: str, path: str, *, split: str = "train", data_dir: str = "", record_format: str = "json"):
    """The source named by (kind, path); `split` applies to TFDS and HF dataset dictionaries."""
    if kind == "text":
        if not path:
            return builtin_text()
        return TextFiles(*expand_paths(path))
    if kind == "jsonl":
        return JsonlFiles(*expand_paths(path))
    if kind == "parquet":
        return ParquetFiles(*expand_paths(path))
    if kind == "arrayrecord":
        return ArrayRecordFiles(*expand_paths(path), record_format=record_format)
    if kind == "tfds":
        if not path:
            raise UserError("source=tfds needs data.path=<dataset name>, e.g. data.path=my_dataset")
        return TfdsSource(path, split, data_dir)
    if kind == "hf":
        if not path or not Path(path).is_dir():
            raise UserError(f"source=hf needs data.path=<a save_to_disk directory>, got {path!r}")
        return HfDiskDataset(path, split)
    raise UserError(f"unknown data source {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
