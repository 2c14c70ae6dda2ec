"""Streaming safetensors writer and per-tensor reader: files the reference library reads back
exactly, sharding with an index, and clear refusals for missing or non-safetensors weights."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from llm.errors import UserError
from llm.interop.safetensors_io import (
    INDEX_FILE, SafetensorsReader, TensorEntry, plan_shards, write_safetensors,
)


def _entries(arrays: dict) -> list[TensorEntry]:
    return [TensorEntry(name, a.shape, a.dtype, lambda a=a: a) for name, a in arrays.items()]


def _arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((30, 7)).astype(np.float32),
        "b.bias": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "c.half": rng.standard_normal((2, 3, 4)).astype(np.float16),
        "d.scalar_like": np.arange(3, dtype=np.int64),
    }


def test_single_file_reads_back_with_the_reference_library(tmp_path):
    arrays = _arrays()
    files = write_safetensors(tmp_path, _entries(arrays), max_shard_bytes=10**9)
    assert [f.name for f in files] == ["model.safetensors"] and not (tmp_path / INDEX_FILE).exists()
    with safe_open(files[0], framework="np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers checks this
        assert set(f.keys()) == set(arrays)
        for name, a in arrays.items():
            got = f.get_tensor(name)
            assert got.dtype == a.dtype
            np.testing.assert_array_equal(got, a)
    raw = files[0].read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len % 8 == 0  # data starts 8-byte aligned


def test_sharded_files_with_index_and_reader(tmp_path):
    arrays = _arrays()
    files = write_safetensors(tmp_path, _entries(arrays), max_shard_bytes=800)
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    assert index["weight_map"] == {"a.weight": files[0].name, "b.bias": files[1].name, "c.half": files[1].name,
                                   "d.scalar_like": files[1].name}  # a (840 bytes) alone, the rest together
    reader = SafetensorsReader(tmp_path)
    assert set(reader.names()) == set(arrays)
    for name, a in arrays.items():
        assert reader.tensors[name].shape == a.shape and reader.tensors[name].nbytes == a.nbytes
        np.testing.assert_array_equal(reader.read(name), a)


def test_plan_shards_keeps_order_and_isolates_big_tensors():
    sizes = [10, 10, 50, 10, 10, 10]
    entries = [TensorEntry(str(i), (n,), np.dtype(np.uint8), lambda: None) for i, n in enumerate(sizes)]
    shards = plan_shards(entries, max_shard_bytes=25)
    assert [[e.name for e in s] for s in shards] == [["0", "1"], ["2"], ["3", "4"], ["5"]]


def test_writer_checks_produced_shapes_and_leaves_no_partial_file(tmp_path):
    bad = [TensorEntry("x", (2, 2), np.dtype(np.float32), lambda: np.zeros((3,), np.float32))]
    with pytest.raises(ValueError, match="produced shape"):
        write_safetensors(tmp_path, bad, max_shard_bytes=10**9)
    assert not (tmp_path / "model.safetensors").exists()


def test_reader_finds_a_lone_file_without_index(tmp_path):
    save_file({"w": np.ones(3, np.float32)}, tmp_path / "weights.safetensors")
    np.testing.assert_array_equal(SafetensorsReader(tmp_path).read("w"), np.ones(3))


@pytest.mark.parametrize("name,kind", [("pytorch_model.bin", "PyTorch pickle"), ("tf_model.h5", "TensorFlow"),
                                       ("consolidated.00.pth", "PyTorch pickle")])
def test_reader_refuses_other_weight_formats(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UserError, match=f"{name} \\({kind} weights\\), not safetensors"):
        SafetensorsReader(tmp_path)


def test_reader_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SafetensorsReader(tmp_path / "nope")
    with pytest.raises(UserError, match="no model.safetensors"):
        SafetensorsReader(tmp_path)
    save_file({"w": np.ones(3, np.float32)}, tmp_path / "one.safetensors")
    save_file({"v": np.ones(3, np.float32)}, tmp_path / "two.safetensors")
    with pytest.raises(UserError, match="but no model.safetensors.index.json"):
        SafetensorsReader(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"w": "one.safetensors", "v": "three.safetensors"}}))
    with pytest.raises(UserError, match="three.safetensors, which is missing"):
        SafetensorsReader(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"w": "one.safetensors", "v": "two.safetensors"}}))
    (tmp_path / "two.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"garbage!")
    with pytest.raises(UserError, match="two.safetensors is not a readable safetensors file"):
        SafetensorsReader(tmp_path)
