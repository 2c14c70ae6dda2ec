"""Start weights trained with another tokenizer (same vocabulary size, another fingerprint) are
refused by `checkpoint.init_from` and `llm sft --init-from`, as resume refuses them, unless
checkpoint.allow_tokenizer_mismatch says to go on."""

import inspect
import json

import pytest

import llm.data.pipeline
import llm.data.tokenizer
from finetune_fixtures import llm_session
from helpers import tiny_config
from llm.checkpoint.params_io import config_to_json
from llm.data.tokenizer import train_sentencepiece
from llm.errors import UserError
from llm.train.init_sources import init_params_hook

COMMON = [
    "--config.train.steps=1", "--config.train.eval_every=0", "--config.data.seq_len=64",
    "--config.train.measure_peak=false", "--config.data.num_workers=0",
]


def two_tokenizers(tmp_path):
    """Two 200-piece sentencepiece tokenizers trained on different text: same size, other pieces."""
    out = []
    for name, module in (("a", llm.data.tokenizer), ("b", llm.data.pipeline)):
        tok = train_sentencepiece([inspect.getsource(module)] * 3, 200, byte_fallback=False, chat_symbols=())
        tok.save(tmp_path / name)
        out.append((tmp_path / name, tok.fingerprint))
    assert out[0][1] != out[1][1]
    return out


@pytest.mark.slow
def test_init_from_a_run_with_another_tokenizer_is_refused_unless_allowed(tmp_path):
    (tok_a, fp_a), (tok_b, fp_b) = two_tokenizers(tmp_path)
    pre, run = tmp_path / "pre", tmp_path / "run"
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(8)))
    init = [f"--config.checkpoint.init_from={pre}", f"--config.data.tokenizer={tok_b}"]
    (pre_code, pre_err), (train_code, train_err), (sft_code, sft_err), (allowed_code, allowed_err) = llm_session(
        ["train", "--config", "configs/tiny.py", "--workdir", str(pre), *COMMON, f"--config.data.tokenizer={tok_a}"],
        ["train", "--config", "configs/tiny.py", "--workdir", str(run), *COMMON, *init],
        ["sft", "--config", "configs/sft_full_tiny.py", "--workdir", str(tmp_path / "sft"), "--init-from", str(pre),
         "--data", str(data), f"--config.data.tokenizer={tok_b}", *COMMON],
        ["train", "--config", "configs/tiny.py", "--workdir", str(run), *COMMON, *init, "--config.checkpoint.allow_tokenizer_mismatch=true"],
    )
    assert pre_code == 0, pre_err[-3000:]
    for code, err in ((train_code, train_err), (sft_code, sft_err)):
        assert code == 2, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert f"was trained with tokenizer {fp_a[:12]}, but this run's data.tokenizer={str(tok_b)!r} is {fp_b[:12]}" in line, line
        assert "set checkpoint.allow_tokenizer_mismatch=true" in line
    assert allowed_code == 0, allowed_err[-3000:]
    assert "starting from its weights anyway (checkpoint.allow_tokenizer_mismatch=true)" in allowed_err
    assert f"start: init_from {pre}/checkpoints/1" in allowed_err


def test_a_params_checkpoint_s_tokenizer_is_checked_before_any_model_is_built(tmp_path):
    (tok_a, fp_a), (tok_b, _) = two_tokenizers(tmp_path)
    export = tmp_path / "export"
    (export / "params").mkdir(parents=True)
    (export / "config.json").write_text(config_to_json(tiny_config(f"data.tokenizer={tok_a}")))
    (export / "tokenizer").mkdir()
    (export / "tokenizer" / "tokenizer.model").write_bytes((tok_a / "tokenizer.model").read_bytes())
    assert init_params_hook(tiny_config(f"checkpoint.init_from={export}", f"data.tokenizer={tok_a}")) is not None
    with pytest.raises(UserError, match=f"was trained with tokenizer {fp_a[:12]}"):
        init_params_hook(tiny_config(f"checkpoint.init_from={export}", f"data.tokenizer={tok_b}"))
    assert init_params_hook(tiny_config(f"checkpoint.init_from={export}", f"data.tokenizer={tok_b}", "checkpoint.allow_tokenizer_mismatch=true"))
