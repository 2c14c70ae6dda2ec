"""The Hugging Face tokenizer loader gives the same ids and text as transformers.AutoTokenizer,
reads special tokens and the chat template, and behaves like the data pipeline's tokenizers."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest

from interop_models import train_tokenizer
from llm.data.tokenizer import load_tokenizer
from llm.errors import UserError
from llm.interop.hf_tokenizer import load_hf_tokenizer

MIXED = [
    "Hello, world! The quick brown fox jumps over 13 lazy dogs.",
    "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # comment\n\ttab",
    "Ünïcödé: naïve café, 東京タワー, Привет мир, مرحبا",
    "emoji 🤖🚀 and combining e\u0301 and zero\u200bwidth",
    "   leading and trailing spaces   \n\n\nnewlines",
    "<s>special tokens inline</s><pad>",
    "numbers 1234567890 3.14159 -42 0x1F",
    "",
]


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tok_dir(request, tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp(request.param), style=request.param)


@pytest.fixture(scope="module")
def auto(tok_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tok_dir)


def test_ids_and_text_match_transformers(tok_dir, auto):
    ours = load_hf_tokenizer(tok_dir)
    for text in MIXED:
        ids = ours.encode(text)
        assert ids == auto(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == auto.decode(ids), text
    joined = "\n".join(MIXED)
    assert ours.encode(joined) == auto.encode(joined, add_special_tokens=False)
    assert ours.encode_array(joined).tolist() == ours.encode(joined)
    assert ours.vocab_size == len(auto)


def test_special_tokens_fingerprint_and_chat_template(tok_dir, auto):
    ours = load_hf_tokenizer(tok_dir)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id)
    assert ours.bos_id is not None and ours.token_id("</s>") == ours.eos_id and ours.token_id("no-such-piece") is None
    assert ours.fingerprint == hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert ours.chat_template == auto.chat_template and "messages" in ours.chat_template


def test_save_pickle_and_the_data_pipeline_loader(tok_dir, tmp_path):
    ours = load_hf_tokenizer(tok_dir)
    ours.save(tmp_path / "copy")
    again = load_hf_tokenizer(tmp_path / "copy")
    assert again.fingerprint == ours.fingerprint and again.chat_template == ours.chat_template
    clone = pickle.loads(pickle.dumps(ours))
    assert clone.encode(MIXED[2]) == ours.encode(MIXED[2]) and clone.eos_id == ours.eos_id
    via_pipeline = load_tokenizer(str(tok_dir))  # llm.data.tokenizer delegates tokenizer.json here
    assert via_pipeline.fingerprint == ours.fingerprint


@pytest.mark.parametrize("force", [False, True])
def test_transformers4_layout_with_template_in_config_and_cleanup(tok_dir, tmp_path, force):
    """Older directories keep the chat template (possibly several) in tokenizer_config.json and
    may ask decode to clean up spaces before punctuation, which transformers 5 only honours for
    BPE models when forced."""
    import transformers

    d = tmp_path / "v4"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    config = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True},
              "eos_token": "</s>", "clean_up_tokenization_spaces": True,
              "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": force,
              "chat_template": [{"name": "default", "template": "{{ messages[0]['content'] }}"},
                                {"name": "tool_use", "template": "tools"}]}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    ours = load_hf_tokenizer(d)
    assert ours.chat_template == "{{ messages[0]['content'] }}" and ours.pad_id is None
    auto = transformers.AutoTokenizer.from_pretrained(d)
    assert ours.bos_id == auto.bos_token_id == ours.token_id("<s>")
    text = "Hello , world . Is n't it ? Yes !"
    ids = ours.encode(text)
    assert ours.decode(ids) == auto.decode(ids) == ("Hello, world. Isn't it? Yes!" if force else text)


def test_errors(tmp_path, tok_dir):
    with pytest.raises(UserError, match="does not exist"):
        load_hf_tokenizer(tmp_path / "nope")
    with pytest.raises(UserError, match="has no tokenizer.json"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|not-there|>"}))
    with pytest.raises(UserError, match="bos_token='<|not-there|>' is not in the vocabulary"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot be loaded"):
        load_hf_tokenizer(tmp_path)
