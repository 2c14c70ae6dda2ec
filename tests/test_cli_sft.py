"""`llm sft` start-up errors: a Hugging Face directory holding only pickled weights gets the same
refusal as `llm convert` (one check for every command that reads HF weights)."""

from __future__ import annotations

from finetune_fixtures import llm_session
from interop_models import hf_config


def test_a_bin_only_hf_directory_gets_convert_s_pickle_refusal(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    hf_config("llama").to_json_file(hf / "config.json")
    (hf / "pytorch_model.bin").write_bytes(b"not read: refused before loading")
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "q", "response": "a"}\n')
    (sft_code, sft_err), (convert_code, convert_err) = llm_session(
        ["sft", "--config", "configs/sft_lora_tiny.py", "--workdir", str(tmp_path / "run"), "--init-from", str(hf), "--data", str(data)],
        ["convert", "from-hf", "--src", str(hf), "--out", str(tmp_path / "out")],
    )
    assert (sft_code, convert_code) == (2, 2)
    sft_line, convert_line = sft_err.strip().splitlines()[-1], convert_err.strip().splitlines()[-1]
    assert "pytorch_model.bin (PyTorch pickle weights)" in convert_line
    assert sft_line.split(": error: ", 1)[1] == convert_line.split(": error: ", 1)[1]
