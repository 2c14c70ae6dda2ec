"""`llm convert from-hf` / `to-hf` end to end: Hugging Face -> our params checkpoint -> Hugging
Face is lossless, keeps the model type and tokenizer, and user errors exit 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from interop_models import build_hf_model, train_tokenizer
from llm.checkpoint.params_io import load_params
from llm.cli.main import main


def _tensors(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    directory = tmp_path_factory.mktemp("mistral")
    build_hf_model("mistral", directory, seed=3, tokenizer_dir=tok)
    return directory


def test_round_trip_through_our_checkpoint_is_lossless(tmp_path, mistral_dir, capsys):
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", "from-hf", "--src", str(mistral_dir), "--out", str(ours)]) == 0
    assert "imported llama" in capsys.readouterr().out
    config, params = load_params(ours)
    assert config.model.vocab_size == 300 and params["embed"].shape == (384, 64)
    assert config.data.tokenizer == str(ours / "tokenizer") and (ours / "tokenizer" / "tokenizer.json").exists()
    assert config.mesh.data == -1  # the conversion's own mesh is not written into the config
    assert main(["convert", "to-hf", "--checkpoint", str(ours), "--out", str(back), "--max-shard-size", "50KB"]) == 0
    before, after = _tensors(mistral_dir), _tensors(back)
    assert set(after) == set(before) and len(list(back.glob("*.safetensors"))) > 1
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    hf = json.loads((back / "config.json").read_text())
    assert hf["model_type"] == "mistral" and hf["sliding_window"] == 4096  # the source's window, kept
    assert (back / "tokenizer.json").read_bytes() == (mistral_dir / "tokenizer.json").read_bytes()


def test_overrides_and_export_dtype(tmp_path, mistral_dir):
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", "from-hf", "--src", str(mistral_dir), "--out", str(ours),
                 "--config.precision.params=bfloat16", "--config.model.scan_layers", "true"]) == 0
    config, params = load_params(ours)
    assert config.precision.params == "bfloat16" and config.model.scan_layers
    assert params["blocks"]["attn"]["q"]["kernel"].shape == (2, 64, 4, 16)
    assert main(["convert", "to-hf", "--checkpoint", str(ours), "--out", str(back), "--dtype", "float32", "--model-type", "llama"]) == 0
    hf = json.loads((back / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["dtype"] == "float32"
    before, after = _tensors(mistral_dir), _tensors(back)
    import ml_dtypes

    for name, value in before.items():  # exactly the bf16-rounded originals
        np.testing.assert_array_equal(after[name], value.astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=name)


def test_user_errors_exit_2_with_one_line(tmp_path, mistral_dir, capsys):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((mistral_dir / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    assert main(["convert", "from-hf", "--src", str(tmp_path / "bin"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["convert", "from-hf", "--src", str(mistral_dir), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o3"), "--config.model.d_model=8"]) == 2
    assert "no --config" in capsys.readouterr().err
    assert main(["convert", "from-hf", "--src", str(mistral_dir), "--out", str(tmp_path / "o4"), "--config.model.nope=1"]) == 2
    assert "unknown config key 'model.nope'" in capsys.readouterr().err
