"""Tokenizers: sentencepiece training round-trips the corpus exactly (byte fallback for unseen
characters), special tokens, save/load/fingerprint, directory loading, CLI, pipeline use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm.cli.main import main
from llm.config.loading import load_config
from llm.data.pipeline import make_batches
from llm.data.sources import builtin_text
from llm.data.tokenizer import (
    CHAT_SYMBOLS,
    ByteTokenizer,
    SentencePieceTokenizer,
    check_fingerprint,
    load_tokenizer,
    train_sentencepiece,
)
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    source = builtin_text()
    keys = [source.key(i) for i in range(len(source))]
    picked = [keys.index(k) for k in ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "heapq.py", "bisect.py", "shlex.py")]
    return [source[i] for i in picked]


@pytest.fixture(scope="module")
def spm(corpus) -> SentencePieceTokenizer:
    return train_sentencepiece(corpus[:-2], vocab_size=600)


def test_round_trip_on_the_corpus_and_unseen_text(spm, corpus):
    assert spm.vocab_size == 600
    for text in corpus:  # the last two documents were not in training
        assert spm.decode(spm.encode(text)) == text
    tricky = "naïve café 😀 — 中文 \t tab\r\nCRLF  double  spaces\n\n\nend  "
    ids = spm.encode(tricky)
    assert spm.decode(ids) == tricky
    assert any(spm.id_to_piece(i).startswith("<0x") for i in ids)  # byte fallback
    assert len(spm.encode(corpus[-1])) < len(corpus[-1].encode()) / 1.8  # it compresses


def test_special_tokens(spm):
    assert (spm.bos_id, spm.eos_id, spm.pad_id) == (1, 2, 3)
    for symbol in CHAT_SYMBOLS:
        ids = spm.encode(symbol)
        assert len(ids) == 1 and spm.token_id(symbol) == ids[0]
    assert spm.decode([spm.bos_id, spm.eos_id]) == ""


def test_save_load_and_fingerprint(spm, tmp_path):
    path = spm.save(tmp_path / "tok")
    assert path.name == "tokenizer.model"
    again = load_tokenizer(str(path))
    same_dir = load_tokenizer(str(tmp_path / "tok"))
    assert again.fingerprint == same_dir.fingerprint == spm.fingerprint
    assert again.encode("x = 1") == spm.encode("x = 1")
    check_fingerprint(again, spm.fingerprint, "ckpt")
    with pytest.raises(UserError, match="differs"):
        check_fingerprint(ByteTokenizer(), spm.fingerprint, "workdir/checkpoints/10")
    import pickle

    assert pickle.loads(pickle.dumps(spm)).encode("héllo") == spm.encode("héllo")


def test_byte_tokenizer_and_errors(tmp_path):
    tok = load_tokenizer("bytes")
    text = "ünï 😀\n"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 256
    tok.save(tmp_path / "b")
    assert isinstance(load_tokenizer(str(tmp_path / "b")), ByteTokenizer)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a sentencepiece model"):
        load_tokenizer(str(tmp_path / "junk.model"))
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        load_tokenizer(str(tmp_path / "empty"))


def test_directory_with_tokenizer_json_is_delegated_to_hf(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path))
    assert type(tok).__module__ == "llm.interop.hf_tokenizer"
    assert tok.encode("hello world") == [1, 2] and tok.vocab_size == 3


def test_pipeline_with_a_sentencepiece_model(spm, tmp_path, corpus):
    path = spm.save(tmp_path / "tok")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(corpus):
        (docs / f"{i}.py").write_text(text[:2000])
    config = load_config(ROOT / "configs/tiny.py", [f"data.path={docs}/*.py", f"data.tokenizer={path}", "model.vocab_size=600", "data.eval_fraction=0"])
    it = make_batches(config)
    bos = eos = 0
    for _ in range(8):
        b = next(it)
        is_bos = b["inputs"] == spm.bos_id
        assert np.all(b["positions"][is_bos] == 0)  # BOS only opens a document
        for i, j in zip(*np.nonzero(b["targets"] == spm.eos_id)):
            # EOS is the last target of its segment: nothing after it in the same document
            assert j + 1 == b["inputs"].shape[1] or b["segment_ids"][i, j + 1] != b["segment_ids"][i, j]
        bos, eos = bos + is_bos.sum(), eos + (b["targets"] == spm.eos_id).sum()
    assert bos >= 1 and eos >= 1
    assert b["inputs"].max() < 600
    text = spm.decode(b["inputs"][0][b["segment_ids"][0] == 1].tolist())
    assert any(text.lstrip() and text[:50] in c for c in corpus)
    with pytest.raises(UserError, match="model.vocab_size"):
        make_batches(load_config(ROOT / "configs/tiny.py", [f"data.tokenizer={path}"]))


def test_cli_train_encode_decode(tmp_path, capsys, corpus):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(corpus):
        (docs / f"{i}.py").write_text(text)
    work = tmp_path / "work"
    rc = main(["tokenizer", "train", "--config", str(ROOT / "configs/tiny.py"), f"--config.data.path={docs}/*.py",
               "--config.data.eval_fraction=0.3", "--vocab-size", "500", "--workdir", str(work), "--special", "<|tool|>"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = work / "tokenizer" / "tokenizer.model"
    assert summary["path"] == str(model) and summary["vocab_size"] == 500
    assert summary["bytes_per_token_validation"] > 1.5
    assert len(load_tokenizer(str(model)).encode("<|tool|>")) == 1
    assert main(["tokenizer", "encode", "--tokenizer", str(model), "def f(x):"]) == 0
    ids = json.loads(capsys.readouterr().out)["ids"]
    assert main(["tokenizer", "decode", "--tokenizer", str(model), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "def f(x):\n"
    assert main(["tokenizer", "decode", "--tokenizer", str(model), "99999"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
