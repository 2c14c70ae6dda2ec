"""Read and write (sharded) safetensors one tensor at a time.

Reading reopens the file for every tensor: `safe_open` memory-maps the file, and mapped pages a
reader has touched count in its resident memory until the map is closed, so keeping one file
open while converting it would hold a second copy of the weights. Writing streams each tensor
straight to disk after a header computed from shapes alone, so an export never holds more than
one tensor on the host.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np
from safetensors import safe_open

from llm.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Weight formats we refuse (glob -> what they are): pickles can run code, and none of them
# can be read one tensor at a time.
_OTHER_WEIGHTS = {
    "*.bin": "PyTorch pickle",
    "*.pt": "PyTorch pickle",
    "*.pth": "PyTorch pickle",
    "*.h5": "TensorFlow",
    "*.msgpack": "Flax msgpack",
    "*.gguf": "GGUF",
}

_TO_NUMPY = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


def safetensors_dtype(dtype) -> str:
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise UserError(f"dtype {np.dtype(dtype).name} cannot be written to safetensors") from None


def numpy_dtype(name: str) -> np.dtype:
    try:
        return _TO_NUMPY[name]
    except KeyError:
        raise UserError(f"safetensors dtype {name} is not supported") from None


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * numpy_dtype(self.dtype).itemsize


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a model directory, or the one UserError every command gives for
    missing or refused (pickle, TensorFlow, GGUF...) weights."""
    index = src / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise UserError(f"{index} is not a safetensors index ({type(err).__name__}); re-download the model") from None
        files = sorted({src / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index} lists {missing[0]}, which is missing from {src}; the download is incomplete")
        return files
    if (src / SINGLE_FILE).is_file():
        return [src / SINGLE_FILE]
    found = sorted(src.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if found:
        raise UserError(f"{src} has {len(found)} .safetensors files but no {INDEX_FILE}; add the index file")
    for pattern, kind in _OTHER_WEIGHTS.items():
        other = sorted(src.glob(pattern))
        if other:
            raise UserError(
                f"{src} holds {other[0].name} ({kind} weights), not safetensors; re-save it with transformers: "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out)"
            )
    raise UserError(f"{src} has no model.safetensors or {INDEX_FILE}; pass a Hugging Face model directory")


class SafetensorsReader:
    """Tensor names, shapes and dtypes of a model directory, and one tensor at a time."""

    def __init__(self, src: str | Path):
        self.src = Path(src)
        if not self.src.is_dir():
            raise UserError(f"model directory {str(src)!r} does not exist")
        self.tensors: dict[str, TensorInfo] = {}
        for file in weight_files(self.src):
            try:
                with safe_open(file, framework="np") as f:
                    for name in f.keys():
                        sl = f.get_slice(name)
                        self.tensors[name] = TensorInfo(file, tuple(sl.get_shape()), sl.get_dtype())
            except Exception as err:  # noqa: BLE001 - safetensors raises SafetensorError / OSError
                raise UserError(f"{file} is not a readable safetensors file ({str(err).splitlines()[0]}); re-download it") from None

    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> np.ndarray:
        """A fresh host copy of one tensor; the file's map is closed before returning."""
        info = self.tensors[name]
        with safe_open(info.file, framework="np") as f:
            return f.get_tensor(name)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor to write: its shape and dtype are known before its data is produced."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(entries: Sequence[TensorEntry], max_shard_bytes: int) -> list[list[TensorEntry]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _header(entries: Sequence[TensorEntry], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": safetensors_dtype(e.dtype), "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_shard(path: Path, entries: Sequence[TensorEntry], metadata: dict[str, str]) -> None:
    """Header first, then each tensor's bytes as it is produced; checks every produced shape."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_header(entries, metadata))
        for e in entries:
            array = np.ascontiguousarray(np.asarray(e.produce(), dtype=e.dtype))
            if array.shape != tuple(e.shape):
                raise ValueError(f"{e.name}: produced shape {array.shape}, planned {tuple(e.shape)}")
            f.write(array.reshape(-1).view(np.uint8).data)
            del array
    tmp.replace(path)


def write_safetensors(
    out_dir: str | Path,
    entries: Iterable[TensorEntry],
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
    write: bool = True,
) -> list[Path]:
    """model.safetensors, or model-0000k-of-0000n.safetensors plus the index transformers reads.

    With write=False every tensor is still produced (collective gathers on other processes
    must run) but nothing touches the disk.
    """
    out_dir = Path(out_dir)
    entries = list(entries)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in a safetensors export")
    metadata = {"format": "pt", **(metadata or {})}
    shards = plan_shards(entries, max_shard_bytes)
    if len(shards) == 1:
        files = [out_dir / SINGLE_FILE]
    else:
        files = [out_dir / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if not write:
        for shard in shards:
            for e in shard:
                e.produce()
        return files
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, shard in zip(files, shards):
        write_shard(file, shard, metadata)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in entries)},
            "weight_map": {e.name: file.name for file, shard in zip(files, shards) for e in shard},
        }
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files
