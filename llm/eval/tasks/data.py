"""A task's dataset, read offline with pyarrow (no `datasets` at run time): the packaged builders
lm-eval reaches through `datasets.load_dataset` (json/csv/parquet/arrow + data_files, in any form
`data_files` takes), a DatasetDict directory written by `save_to_disk`, or `custom_dataset`.
Rows come back as the same Python dicts `datasets` yields (arrow -> to_pylist)."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from llm.errors import UserError

BUILDERS = ("json", "csv", "parquet", "arrow")


class DocList(list):
    """A split's rows, with the few `datasets.Dataset` methods that process_docs functions call."""

    @property
    def column_names(self) -> list[str]:
        return list(self[0].keys()) if self else []

    @property
    def features(self) -> dict[str, None]:
        return dict.fromkeys(self.column_names)

    def map(self, function: Callable, with_indices: bool = False, batched: bool = False,
            remove_columns: list[str] | str | None = None, **_: Any) -> "DocList":
        if batched:
            raise UserError("process_docs: Dataset.map(batched=True) is not supported by llm eval; map one doc at a time")
        drop = {remove_columns} if isinstance(remove_columns, str) else set(remove_columns or ())
        out = DocList()
        for i, doc in enumerate(self):
            new = function(doc, i) if with_indices else function(doc)
            row = {k: v for k, v in doc.items() if k not in drop}
            row.update(new or {})
            out.append(row)
        return out

    def filter(self, function: Callable, with_indices: bool = False, **_: Any) -> "DocList":
        return DocList(d for i, d in enumerate(self) if (function(d, i) if with_indices else function(d)))

    def select(self, indices) -> "DocList":
        return DocList(self[i] for i in indices)

    def remove_columns(self, columns) -> "DocList":
        drop = {columns} if isinstance(columns, str) else set(columns)
        return DocList({k: v for k, v in d.items() if k not in drop} for d in self)

    def rename_column(self, old: str, new: str) -> "DocList":
        return DocList({(new if k == old else k): v for k, v in d.items()} for d in self)

    def __getitem__(self, key):  # ds["column"] -> the column, as datasets does
        if isinstance(key, str):
            return [d[key] for d in self]
        out = super().__getitem__(key)
        return DocList(out) if isinstance(key, slice) else out


def _read_json(file: Path) -> list[dict]:
    """JSON lines (or a JSON list of objects); bad bytes and bad lines are named with their line."""
    import pyarrow.json as pj

    try:
        return pj.read_json(file).to_pylist()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass  # not clean JSON lines for Arrow: find out what is wrong, or read a JSON list
    from llm.data.jsonl import decode_utf8, read_jsonl

    text = decode_utf8(file.read_bytes(), file, "data file")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"data file {file} is not valid JSON (line {err.lineno}: {err.msg}); fix it or write JSON lines") from None
        records = data
    else:
        records = [record for _, record in read_jsonl(file, "data file")]
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"data file {file}: record {bad} is {type(records[bad]).__name__}, not an object; write one JSON object per line")
    return pa.Table.from_pylist(records).to_pylist()


def _read_file(builder: str, file: Path) -> list[dict]:
    if builder == "json":
        return _read_json(file)
    try:
        if builder == "csv":
            import pyarrow.csv as pc

            return pc.read_csv(file, convert_options=pc.ConvertOptions(strings_can_be_null=True)).to_pylist()
        if builder == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(file).to_pylist()
        return _read_arrow(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"data file {file} could not be read as {builder} ({str(err).splitlines()[0]}); check the file and dataset_path") from None


def _read_arrow(file: Path) -> list[dict]:
    with pa.memory_map(str(file)) as src:
        try:
            return pa.ipc.open_stream(src).read_all().to_pylist()
        except pa.ArrowInvalid:
            src.seek(0)
            return pa.ipc.open_file(src).read_all().to_pylist()


def _resolve_files(spec: Any, yaml_dir: Path, where: str) -> list[Path]:
    files: list[Path] = []
    for item in spec if isinstance(spec, (list, tuple)) else [spec]:
        item = str(item)
        found: list[str] = []
        for base in (Path.cwd(), yaml_dir):  # datasets resolves from the cwd; the YAML's dir is a fallback
            pattern = item if Path(item).is_absolute() else str(base / item)
            found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])
            if found:
                break
        if not found:
            raise UserError(f"{where}: data file {item!r} does not exist (looked in {Path.cwd()} and {yaml_dir}); fix data_files")
        files.extend(Path(f) for f in found)
    return files


def _data_files(data_files: Any, yaml_dir: Path, where: str) -> dict[str, list[Path]]:
    """`data_files` as datasets takes it: a path or list (-> the train split) or {split: path(s)}."""
    if data_files is None:
        raise UserError(f"{where}: a packaged dataset_path needs dataset_kwargs.data_files, e.g. {{test: data.jsonl}}")
    if isinstance(data_files, dict):
        return {str(split): _resolve_files(spec, yaml_dir, where) for split, spec in data_files.items()}
    return {"train": _resolve_files(data_files, yaml_dir, where)}


def _from_disk(directory: Path, where: str) -> dict[str, list[dict]]:
    """A `DatasetDict.save_to_disk` directory (dataset_dict.json + one dir per split)."""
    meta = directory / "dataset_dict.json"
    if not meta.is_file():
        if (directory / "state.json").is_file():
            raise UserError(f"{where}: {directory} holds a single Dataset; save a DatasetDict ({{'test': ds}}) so splits have names")
        raise UserError(f"{where}: {directory} is not a `save_to_disk` DatasetDict (no dataset_dict.json); use dataset_path: json/csv/parquet with data_files")
    out = {}
    for split in json.loads(meta.read_text())["splits"]:
        state = json.loads((directory / split / "state.json").read_text())
        rows: list[dict] = []
        for f in state["_data_files"]:
            rows.extend(_read_arrow(directory / split / f["filename"]))
        out[split] = rows
    return out


def load_splits(cfg: dict, yaml_path: Path) -> dict[str, Any]:
    """split name -> rows (list of dicts)."""
    where = f"task {cfg['task']!r} ({yaml_path})"
    kwargs = dict(cfg["dataset_kwargs"] or {})
    if callable(cfg["custom_dataset"]):
        extra = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
        ds = cfg["custom_dataset"](**(cfg["metadata"] or {}), **extra)
        return {str(k): [dict(r) for r in v] for k, v in dict(ds).items()}
    path = str(cfg["dataset_path"])
    if path in BUILDERS:
        files = _data_files(kwargs.get("data_files"), yaml_path.parent, where)
        return {split: [row for f in fs for row in _read_file(path, f)] for split, fs in files.items()}
    local = Path(path).expanduser()
    if not local.is_absolute() and not local.exists():
        local = yaml_path.parent / path
    if local.is_dir():
        if cfg["dataset_name"] and (local / str(cfg["dataset_name"])).is_dir():
            local = local / str(cfg["dataset_name"])
        return _from_disk(local, where)
    raise UserError(
        f"{where}: dataset_path {path!r} does not exist locally (llm eval reads data offline); "
        "use dataset_path: json|csv|parquet|arrow with dataset_kwargs.data_files, or a save_to_disk directory"
    )
