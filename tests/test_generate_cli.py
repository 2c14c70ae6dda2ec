"""`llm generate` end to end on a tiny params checkpoint: streamed single prompt, batch JSONL
mode, stop tokens, and the one-line errors for bad input."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

from llm.checkpoint.params_io import save_params
from llm.cli.main import main
from llm.config.base import base_config
from llm.data.tokenizer import ByteTokenizer
from llm.generate.load import checkpoint_config, load_for_generation
from llm.model.build import abstract_model
from llm.model.spec import model_spec
from llm.parallel.rules import AxisRules

CONTEXT = 48


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    c = base_config()
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len = 256, 64, 2, 4, 2, 128, CONTEXT
    c.data.seq_len = CONTEXT
    spec = model_spec(c)
    _, abstract = abstract_model(spec, AxisRules.from_config(c.mesh.rules))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (rng.normal(0, 0.1, x.shape) + ("scale" in jax.tree_util.keystr(path))).astype(np.float32),
        abstract.to_pure_dict(),
    )
    root = tmp_path_factory.mktemp("gen")
    ByteTokenizer().save(root / "tok")
    directory = save_params(root / "ckpt", params, c, tokenizer_dir=root / "tok")
    return str(directory)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_for_generation(checkpoint, checkpoint_config(checkpoint))


def expected_text(loaded, prompt: str, n: int) -> tuple[str, list[int]]:
    (c,) = loaded.generator.generate([list(prompt.encode())], max_new_tokens=n)
    return ByteTokenizer().decode(c.tokens), c.tokens


def test_single_prompt_streams_the_greedy_completion(checkpoint, loaded, capsys):
    rc = main(["generate", "--checkpoint", checkpoint, "--prompt", "hello", "--max-new-tokens", "12", "--chunk-tokens", "3"])
    assert rc == 0
    text, _ = expected_text(loaded, "hello", 12)
    assert capsys.readouterr().out == text + "\n"


def test_streaming_writes_as_chunks_arrive(loaded):
    from llm.cli.generate import _stream_one

    writes = []

    class Console(io.StringIO):
        def write(self, s):
            writes.append(s)
            return len(s)

    _stream_one(loaded, list(b"abc"), [], dict(max_new_tokens=12, chunk_tokens=3), Console())
    text, _ = expected_text(loaded, "abc", 12)
    assert "".join(writes) == text + "\n"
    assert len(writes) >= 5  # prefill token, 4 chunks of 3 (minus held-back partial characters), the end


def test_batch_jsonl_mode(checkpoint, loaded, tmp_path):
    rows = [{"prompt": "one", "id": 1}, {"prompt": "a longer prompt", "id": 2, "max_new_tokens": 5}, {"prompt": "x", "id": 3}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main([
        "generate", "--checkpoint", checkpoint, "--input", str(src), "--output", str(dst),
        "--max-new-tokens", "9", "--batch-size", "2", "--logprobs",
    ])
    assert rc == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == [1, 2, 3]
    for row, o in zip(rows, out):
        text, tokens = expected_text(loaded, row["prompt"], row.get("max_new_tokens", 9))
        assert o["tokens"] == tokens and o["completion"] == text
        assert o["finish_reason"] == "length" and len(o["logprobs"]) == len(tokens)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", ""], "--prompt number 1 is empty"),
        (["--prompt", "x" * CONTEXT], f"context holds {CONTEXT}"),
        (["--prompt", "hi", "--max-new-tokens", str(CONTEXT)], "lower max_new_tokens to <= 46"),
        (["--prompt", "hi", "--stop", "ab"], "unknown stop token 'ab'"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature=-1.0 must be >= 0"),
        (["--input", "missing.jsonl", "--output", "o.jsonl"], "does not exist"),
        (["--input", "x.jsonl"], "--input needs --output"),
        (["--prompt", "hi", "--limit", "2"], "--limit 2 needs --input"),
    ],
)
def test_bad_input_exits_2_with_one_line(checkpoint, capsys, extra, message):
    rc = main(["generate", "--checkpoint", checkpoint, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1, err


def test_stop_token_ends_the_completion_and_is_not_printed(checkpoint, loaded, capsys):
    text, tokens = expected_text(loaded, "hello", 12)
    stop = next(t for t in tokens[2:] if t < 128)  # an ASCII byte is one token of the byte tokenizer
    cut = tokens.index(stop)
    assert cut < 11
    rc = main(["generate", "--checkpoint", checkpoint, "--prompt", "hello", "--max-new-tokens", "12",
               "--stop", chr(stop).encode("unicode_escape").decode()])
    assert rc == 0
    assert capsys.readouterr().out == ByteTokenizer().decode(tokens[:cut]) + "\n"


def chat_prompt(text: str) -> str:
    return f"<|user|>\n{text}<|end|>\n<|assistant|>\n"  # the default template (data.chat_template)


def test_chat_wraps_prompts_and_takes_sft_messages_up_to_the_last_user_turn(checkpoint, loaded, tmp_path, capsys):
    rc = main(["generate", "--checkpoint", checkpoint, "--prompt", "hi", "--chat", "--max-new-tokens", "6"])
    assert rc == 0
    text, _ = expected_text(loaded, chat_prompt("hi"), 6)
    assert capsys.readouterr().out == text + "\n"

    rows = [
        {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "reference"}], "id": 1},
        {"prompt": "cd", "id": 2},
        {"messages": [{"role": "user", "content": "never read"}], "id": 3},
    ]
    src, dst = tmp_path / "sft.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["generate", "--checkpoint", checkpoint, "--chat", "--input", str(src), "--limit", "2",
               "--output", str(dst), "--max-new-tokens", "5"])
    assert rc == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == [1, 2]
    assert out[0]["messages"] == rows[0]["messages"]  # the reference answer stays next to the completion
    for o, user in zip(out, ["ab", "cd"]):
        assert o["completion"] == expected_text(loaded, chat_prompt(user), 5)[0]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"messages": [{"role": "assistant", "content": "x"}]}\n', "has no user turn"),
        ('{"messages": "x"}\n', 'has neither a string "prompt" field nor a "messages" list'),
        (b'{"prompt": "\xff"}\n', "is not UTF-8"),
    ],
)
def test_chat_input_errors(checkpoint, tmp_path, capsys, content, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = main(["generate", "--checkpoint", checkpoint, "--chat", "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
