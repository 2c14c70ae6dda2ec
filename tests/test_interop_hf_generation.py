"""generation_config.json: read (eos int or list, sampling defaults, one-line errors for a bad
file), used by `llm generate` unless a flag overrides it (every eos id stops), and written back
by the export so transformers loads the same defaults."""

from __future__ import annotations

import argparse
import json

import pytest

from interop_models import build_hf_model, styled_tokenizer
from llm.cli.main import main
from llm.errors import UserError
from llm.interop.hf_generation import GenerationDefaults, read_generation_config

SOURCE = {"bos_token_id": 0, "eos_token_id": [1, 7], "pad_token_id": 2, "do_sample": True, "temperature": 0.7,
          "top_k": 20, "top_p": 0.9, "max_new_tokens": 33}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tok = styled_tokenizer(root / "tok", "llama3")
    build_hf_model("llama", root / "model", tokenizer_dir=tok)
    return root / "model"


def test_read_lists_ints_and_config_json_fallback(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 5, "bos_token_id": 4}))
    assert read_generation_config(tmp_path) == GenerationDefaults(eos_ids=(5,), bos_id=4)
    (tmp_path / "generation_config.json").write_text(json.dumps(SOURCE))
    got = read_generation_config(tmp_path)
    assert got.eos_ids == (1, 7) and got.to_hf() == SOURCE and got.sampling() == (0.7, 20, 0.9)
    assert GenerationDefaults(do_sample=True).sampling() == (1.0, 50, 1.0)  # transformers' own fallbacks
    assert GenerationDefaults(temperature=0.7).sampling() == (0.0, 0, 1.0)  # greedy without do_sample


@pytest.mark.parametrize("content,message", [
    ("{broken", "is not valid JSON"),
    ("[1, 2]", "holds a list, not a JSON object"),
    ('{"eos_token_id": "x"}', "eos_token_id='x' is not a token id"),
    ('{"eos_token_id": [1, -3]}', "eos_token_id=-3 is not a token id"),
    ('{"do_sample": "yes"}', "do_sample='yes' is not true or false"),
    ('{"top_k": 2.5}', "top_k=2.5 is not an integer"),
])
def test_malformed_file_is_one_line_naming_it(tmp_path, content, message):
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        read_generation_config(tmp_path)
    assert "generation_config.json" in str(err.value) and "\n" not in str(err.value)


def test_cli_sampling_defaults_and_explicit_flags():
    from llm.cli.generate import _sampling

    flags = argparse.Namespace(temperature=None, top_k=None, top_p=None)
    sampled = GenerationDefaults(do_sample=True, temperature=0.7, top_p=0.9)
    assert _sampling(flags, sampled, 30) == _sampling(flags, sampled, 30).__class__(0.7, 30, 0.9)  # top_k 50 capped
    assert _sampling(flags, GenerationDefaults(), 300).greedy
    explicit = argparse.Namespace(temperature=0.0, top_k=None, top_p=None)
    assert _sampling(explicit, sampled, 300).greedy


def test_bad_generation_config_stops_llm_generate_in_one_line(model_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(model_dir, d)
    (d / "generation_config.json").write_text("{broken")
    assert main(["generate", "--checkpoint", str(d), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "generation_config.json is not valid JSON" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_every_eos_id_stops_and_the_export_keeps_the_defaults(model_dir, tmp_path, capsys):
    import shutil

    import transformers

    from llm.interop.convert import from_hf, to_hf

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    prompt = "The quick brown fox"
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": prompt}) + "\n")
    assert main(["generate", "--checkpoint", str(d), "--max-new-tokens", "12", "--input", str(src),
                 "--output", str(tmp_path / "a.jsonl")]) == 0
    tokens = json.loads((tmp_path / "a.jsonl").read_text())["tokens"]
    stop = next(t for t in tokens[2:] if t not in tokens[:2] and t != 1)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, stop]}))
    assert main(["generate", "--checkpoint", str(d), "--max-new-tokens", "12", "--input", str(src),
                 "--output", str(tmp_path / "b.jsonl")]) == 0
    out = json.loads((tmp_path / "b.jsonl").read_text())
    assert out["tokens"] == tokens[: tokens.index(stop) + 1] and out["finish_reason"] != "length"

    source_config = json.loads((d / "config.json").read_text())
    source_config["eos_token_id"] = [1, stop]
    (d / "config.json").write_text(json.dumps(source_config))
    (d / "generation_config.json").write_text(json.dumps(SOURCE))
    from_hf(d, tmp_path / "ckpt")
    to_hf(tmp_path / "ckpt", tmp_path / "export")
    exported = transformers.GenerationConfig.from_pretrained(tmp_path / "export")
    for key, value in SOURCE.items():
        assert getattr(exported, key) == value, key
    assert json.loads((tmp_path / "export" / "config.json").read_text())["eos_token_id"] == [1, stop]
