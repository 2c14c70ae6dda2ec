"""The Hugging Face tokenizer loader gives the same ids and text as transformers.AutoTokenizer,
reads special tokens and the chat template, and behaves like the data pipeline's tokenizers."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest

from interop_models import TOKENIZER_STYLES, styled_tokenizer, train_tokenizer
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


PARITY = MIXED[:-1] + [
    "NFC: cafe\u0301 na\u0308ive A\u030a \u1e9b\u0323 (combining marks transformers' Qwen2Tokenizer composes)",
    "digits 2024-12-31 1234567 and   runs\t\t of  \n\n whitespace  ",
    "<s>bos</s> eos <pad> pad <bos> <eos> inside text",
]
MODEL_TYPES = {"llama3": "llama", "qwen2": "qwen2", "gpt2": "gpt2", "mistral": "mistral", "gemma": "gemma3_text"}


@pytest.mark.parametrize("with_config", [False, True], ids=["tokenizer-dir", "model-dir"])
@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_encoding_with_startup_bos_eos_equals_autotokenizer(style, with_config, tmp_path):
    """ids incl. the BOS/EOS the import sets (data.add_bos / add_eos) == AutoTokenizer(text)["input_ids"],
    and the text the pipeline shows (skip_special_tokens) is the same; AutoTokenizer's class depends on
    config.json's model_type (a Mistral model directory uses tokenizer.json as is, a lone LlamaTokenizer
    directory is rebuilt)."""
    import transformers

    from llm.config.base import base_config
    from llm.interop.hf_tokenizer import apply_hf_startup

    d = styled_tokenizer(tmp_path / style, style)
    if with_config:
        (d / "config.json").write_text(json.dumps({"model_type": MODEL_TYPES[style]}))
    auto = transformers.AutoTokenizer.from_pretrained(d)
    config = base_config()
    config.data.tokenizer = str(d)
    ours = apply_hf_startup(config, d)
    assert config.data.add_bos == (style in ("llama3", "mistral", "gemma")) and config.data.add_eos  # add_eos stays
    assert ours.tokenizer_class == type(auto).__name__ and ours.note is None
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size) == (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, len(auto))
    for text in PARITY:
        ids = ([ours.bos_id] if config.data.add_bos else []) + ours.encode(text)
        assert ids == auto(text)["input_ids"], (style, text)
        assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True), (style, text)
    assert ours.chat_template == auto.chat_template


def test_qwen2_tokenizer_json_alone_differs_from_autotokenizer(tmp_path):
    """Why the rebuild matters: transformers 5's Qwen2Tokenizer runs NFC and its own regex, not the file's
    pre-tokenizer, so the raw tokenizer.json gives other ids on text NFC composes."""
    import transformers
    from tokenizers import Tokenizer

    d = styled_tokenizer(tmp_path / "qwen2", "qwen2")
    auto = transformers.AutoTokenizer.from_pretrained(d)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    texts = ["cafe\u0301", "A\u030a"]
    assert all(raw.encode(t).ids != auto(t)["input_ids"] for t in texts)
    assert all(load_hf_tokenizer(d).encode(t) == auto(t)["input_ids"] for t in texts)


def test_a_class_llm_does_not_reproduce_is_named(tmp_path, caplog):
    d = styled_tokenizer(tmp_path / "t5", "llama3")
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "T5TokenizerFast"}))
    with caplog.at_level("WARNING", logger="llm"):
        tok = load_hf_tokenizer(d)
    assert tok.tokenizer_class == "T5Tokenizer" and "names T5Tokenizer" in caplog.text and "may differ" in caplog.text


def test_directory_without_tokenizer_json_names_the_fix(tmp_path):
    from llm.config.base import base_config
    from llm.interop.hf_tokenizer import apply_hf_startup

    (tmp_path / "tokenizer.model").write_bytes(b"spm")
    with pytest.raises(UserError, match=r"has no tokenizer.json; it only has a sentencepiece tokenizer.model: convert it") as err:
        load_hf_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    config = base_config()
    config.data.tokenizer = str(tmp_path)
    with pytest.raises(UserError, match="save_pretrained"):
        apply_hf_startup(config, tmp_path)
