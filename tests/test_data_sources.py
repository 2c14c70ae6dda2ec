"""Every source type is read (offline): text globs, JSONL, Parquet, ArrayRecord, TFDS built
locally, Hugging Face save_to_disk directories, the built-in text; bad records name file:line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm.config.loading import load_config
from llm.data.pipeline import make_batches
from llm.data.sources import BadRecord, builtin_text, expand_paths, open_source, stdlib_files
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"record number {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(30)]


def config_for(source: str, path: str, **data):
    config = load_config(ROOT / "configs/tiny.py")
    with config.unlocked():
        config.data.source = source
        config.data.path = path
        config.data.eval_fraction = 0.0
        config.data.seq_len = 128
        config.data.batch_size = 4
        for k, v in data.items():
            config.data[k] = v
    return config


def packed_documents(config, batches: int = 6) -> set[str]:
    out = set()
    it = make_batches(config)
    for _ in range(batches):
        b = next(it)
        for i in range(b["inputs"].shape[0]):
            seg = b["segment_ids"][i]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                out.add(bytes(list(b["inputs"][i][idx]) + [b["targets"][i][idx[-1]]]).decode())
    return out


def test_text_glob_and_directory(tmp_path):
    for i, t in enumerate(TEXTS[:5]):
        (tmp_path / f"{i}.txt").write_text(t)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.md").write_text("nested")
    files, root = expand_paths(str(tmp_path / "*.txt"))
    assert [Path(f).name for f in files] == [f"{i}.txt" for i in range(5)]
    source = open_source("text", str(tmp_path))
    assert len(source) == 6 and source.key(5) == "sub/x.md"
    assert packed_documents(config_for("text", str(tmp_path / "*.txt"))) == set(TEXTS[:5])
    with pytest.raises(UserError, match="matches no files"):
        expand_paths(str(tmp_path / "*.nothing"))


def test_jsonl_with_configurable_field_and_bad_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"body": t, "id": i}) for i, t in enumerate(TEXTS[:10])]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"other": "x"}))
    lines.insert(7, "")
    path.write_text("\n".join(lines) + "\n")
    source = open_source("jsonl", str(path))
    assert len(source) == 12  # the blank line is not a record
    assert isinstance(source[3], BadRecord) and source[3].where.endswith("a.jsonl:4")
    assert source[0]["body"] == TEXTS[0]
    config = config_for("jsonl", str(path), text_field="body")
    it = make_batches(config)
    for _ in range(4):
        next(it)
    report = it.report()
    assert report["first"]["malformed JSON (Expecting property name enclosed in double quotes)"].endswith("a.jsonl:4")
    assert any(reason.startswith("missing field 'body'") for reason in report["skipped"])
    assert packed_documents(config) == set(TEXTS[:10])
    with pytest.raises(UserError, match=r"a.jsonl:[46]"):
        packed_documents(config_for("jsonl", str(path), text_field="body", bad_input="fail"))


def test_parquet_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": TEXTS, "n": list(range(len(TEXTS)))})
    pq.write_table(table.slice(0, 20), tmp_path / "a.parquet", row_group_size=7)
    pq.write_table(table.slice(20), tmp_path / "b.parquet", row_group_size=4)
    source = open_source("parquet", str(tmp_path / "*.parquet"))
    assert len(source) == 30
    assert [source[i]["n"] for i in range(30)] == list(range(30))
    assert source.key(21) == "b.parquet:1"
    assert packed_documents(config_for("parquet", str(tmp_path / "*.parquet")), 10) == set(TEXTS)


def test_arrayrecord_json_and_text_records(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(tmp_path / "a.array_record"), "group_size:1")
    for t in TEXTS[:8]:
        writer.write(json.dumps({"text": t}).encode())
    writer.close()
    writer = ArrayRecordWriter(str(tmp_path / "raw.array_record"), "group_size:1")
    for t in TEXTS[8:12]:
        writer.write(t.encode())
    writer.close()
    source = open_source("arrayrecord", str(tmp_path / "a.array_record"))
    assert len(source) == 8 and source[2] == {"text": TEXTS[2]}
    assert packed_documents(config_for("arrayrecord", str(tmp_path / "a.array_record"))) == set(TEXTS[:8])
    raw = config_for("arrayrecord", str(tmp_path / "raw.array_record"), record_format="text")
    assert packed_documents(raw) == set(TEXTS[8:12])


TFDS_BUILDER = '''
import numpy as np
import tensorflow_datasets as tfds

TEXTS = {texts!r}

class TinyCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({{"text": tfds.features.Text(), "id": np.int64}}))

    def _split_generators(self, dl_manager):
        return {{"train": self._generate_examples(0, 24), "test": self._generate_examples(24, 30)}}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            yield i, {{"text": TEXTS[i], "id": i}}

TinyCorpus(data_dir={data_dir!r}, file_format="array_record").download_and_prepare()
'''


def test_tfds_by_name_built_locally_offline(tmp_path):
    # Built in a subprocess from a builder file (tfds reads the builder's package directory),
    # then read here by name only: no builder class registered, no network.
    data_dir = tmp_path / "tfds"
    script = tmp_path / "builder" / "tiny_corpus.py"
    script.parent.mkdir()
    script.write_text(TFDS_BUILDER.format(texts=TEXTS, data_dir=str(data_dir)))
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, cwd=script.parent)
    source = open_source("tfds", "tiny_corpus", split="test", data_dir=str(data_dir))
    assert len(source) == 6 and {source[i]["text"] for i in range(6)} == set(TEXTS[24:])
    config = config_for("tfds", "tiny_corpus", data_dir=str(data_dir), eval_split="test")
    assert packed_documents(config, 10) == set(TEXTS[:24])
    val = make_batches(config, "validation")
    assert next(val)["inputs"].shape == (4, 128)
    with pytest.raises(UserError, match="not found"):
        open_source("tfds", "no_such_dataset", data_dir=str(data_dir))


def test_hf_save_to_disk_dataset_and_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": TEXTS[:20], "n": list(range(20))})
    ds.save_to_disk(str(tmp_path / "one"), max_shard_size="1KB")
    datasets.DatasetDict({"train": ds, "validation": datasets.Dataset.from_dict({"text": TEXTS[20:]})}).save_to_disk(str(tmp_path / "dd"))
    source = open_source("hf", str(tmp_path / "one"))
    assert len(source.files) > 1  # sharded on disk
    assert [source[i]["n"] for i in range(20)] == list(range(20))
    assert packed_documents(config_for("hf", str(tmp_path / "one")), 8) == set(TEXTS[:20])
    config = config_for("hf", str(tmp_path / "dd"), eval_split="validation")
    val_docs = set()
    it = make_batches(config, "validation")
    for _ in range(4):
        b = next(it)
        for i in range(4):
            seg = b["segment_ids"][i]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                val_docs.add(bytes(list(b["inputs"][i][idx]) + [b["targets"][i][idx[-1]]]).decode())
    assert val_docs == set(TEXTS[20:])
    with pytest.raises(UserError, match="not a Hugging Face save_to_disk"):
        open_source("hf", str(tmp_path))


def test_builtin_text_is_the_stdlib_without_tests():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 200
    assert not any("/test/" in f or "/tests/" in f or "site-packages" in f for f in files)
    source = builtin_text()
    assert any(source.key(i) == "json/decoder.py" for i in range(len(source)))
    text = source[[source.key(i) for i in range(len(source))].index("json/decoder.py")]
    assert "class JSONDecoder" in text
