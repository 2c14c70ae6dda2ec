"""SFT and preference formats: chat template rendering, assistant-only loss mask through the
packed pipeline, preference pairs, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm.config.loading import load_config
from llm.data.formats import TEMPLATES, chat_template, encode_chat, sft_messages
from llm.data.pipeline import make_batches
from llm.data.preference import make_preference_batches
from llm.data.sources import BadRecord
from llm.data.tokenizer import ByteTokenizer
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def config_for(path: str, fmt: str, **data):
    config = load_config(ROOT / "configs/tiny.py")
    with config.unlocked():
        config.data.source = "jsonl"
        config.data.path = path
        config.data.format = fmt
        config.data.eval_fraction = 0.0
        config.data.seq_len = 128
        config.data.batch_size = 4
        for k, v in data.items():
            config.data[k] = v
    return config


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_template_renders_and_masks_assistant_only():
    template = TEMPLATES["default"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = template.text(messages)
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi?<|end|>\n<|assistant|>\nHello.<|end|>\n"
    enc = encode_chat(ByteTokenizer(), template, messages)
    assert bytes(enc.tokens.tolist()).decode() == text
    assert bytes(enc.tokens[enc.weights == 1].tolist()).decode() == "Hello.<|end|>\n"
    assert template.generation_prompt(messages[:2]).endswith("<|user|>\nHi?<|end|>\n<|assistant|>\n")


def test_custom_template_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"system": ["S:", "\n"], "user": ["U:", "\n"], "assistant": ["A:", "\n"]}))
    t = chat_template(str(path))
    assert t.text([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == "U:x\nA:y\n"
    path.write_text(json.dumps({"user": ["U:", "\n"]}))
    with pytest.raises(UserError, match="must map each of system, user, assistant"):
        chat_template(str(path))
    with pytest.raises(UserError, match="neither"):
        chat_template("no-such-template")


def test_sft_record_forms():
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert sft_messages(chat, "prompt", "response", "f:1") == chat["messages"]
    assert sft_messages({"prompt": "q", "response": "a"}, "prompt", "response", "f:1") == chat["messages"]
    assert sft_messages({"q": "q", "a": "a"}, "q", "a", "f:1") == chat["messages"]
    bad = sft_messages({"messages": [{"role": "user", "content": "q"}]}, "prompt", "response", "f:2")
    assert isinstance(bad, BadRecord) and bad.reason == "no assistant turn with content" and bad.where == "f:2"
    assert "unknown role" in sft_messages({"messages": [{"role": "bot", "content": "q"}]}, "p", "r", "f").reason
    assert "missing field" in sft_messages({"text": "q"}, "prompt", "response", "f").reason


def test_sft_batches_put_loss_on_assistant_tokens_only(tmp_path):
    records = []
    for i in range(30):
        if i % 2:
            records.append({"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]})
        else:
            records.append({"prompt": f"question {i}", "response": f"answer {i}"})
    records.append({"messages": [{"role": "user", "content": "no answer"}]})
    records.append({"prompt": "long " * 40, "response": "x"})
    path = write_jsonl(tmp_path / "sft.jsonl", records)
    it = make_batches(config_for(path, "sft"))
    answers = []
    for _ in range(6):
        b = next(it)
        for i in range(4):
            seg, mask = b["segment_ids"][i], b["loss_mask"][i]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                whole = bytes(b["inputs"][i][idx].tolist() + [int(b["targets"][i][idx[-1]])]).decode()
                trained = bytes(b["targets"][i][idx][mask[idx] == 1].tolist()).decode()
                assert whole.startswith("<|user|>\nquestion ")
                n = whole.split("question ")[1].split("<")[0]
                assert trained == f"answer {n}<|end|>\n"
                answers.append(n)
    assert len(set(answers)) == 30
    report = it.report()
    assert report["skipped"]["no assistant turn with content"] >= 1
    assert report["skipped"]["example longer than data.seq_len+1=129 tokens"] >= 1


def test_preference_pairs(tmp_path):
    records = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    records.append({"prompt": [{"role": "user", "content": "conv"}], "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]})
    records.append({"prompt": "p", "chosen": "only"})
    path = write_jsonl(tmp_path / "pref.jsonl", records)
    it = make_preference_batches(config_for(path, "preference", batch_size=2, seq_len=64, prefetch=0))
    seen = {}
    for _ in range(12):
        b = next(it)
        assert b["chosen_inputs"].shape == (2, 64) and b["rejected_loss_mask"].dtype == np.float32
        for i in range(2):
            sides = {}
            for side in ("chosen", "rejected"):
                real = b[f"{side}_segment_ids"][i] == 1
                np.testing.assert_array_equal(b[f"{side}_positions"][i][real], np.arange(real.sum()))
                prompt = bytes(b[f"{side}_inputs"][i][real][:12].tolist()).decode()
                trained = bytes(b[f"{side}_targets"][i][b[f"{side}_loss_mask"][i] == 1].tolist()).decode()
                sides[side] = (prompt, trained)
            assert sides["chosen"][0] == sides["rejected"][0]
            seen[sides["chosen"][1]] = sides["rejected"][1]
    assert seen["good 3<|end|>\n"] == "bad 3<|end|>\n"
    assert seen["yes<|end|>\n"] == "no<|end|>\n"
    # The one bad record (line 12) is skipped once per pass over the file: 24 pairs read from 11
    # good records completed 2 passes and started a third (no prefetch reads ahead).
    reason = "missing field 'rejected' (preference records need prompt/chosen/rejected)"
    report = it.report()
    assert set(report["skipped"]) == {reason} and report["skipped"][reason] in (2, 3)
    assert report["first"] == {reason: f"{path}:12"}


def test_make_batches_refuses_preference_format(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(UserError, match="make_preference_batches"):
        make_batches(config_for(path, "preference"))


# Gemma 2's chat template as its tokenizer_config.json ships it (Gemma 3's renders these turns the same).
GEMMA_JINJA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def test_gemma_template_renders_gemmas_own_turns():
    """data.chat_template=gemma gives the text of Gemma's jinja template (after its BOS, which
    data.add_bos adds), and the generation prompt opens the model's turn the same way."""
    from llm.interop.hf_chat_template import HFChatTemplate

    jinja = HFChatTemplate(GEMMA_JINJA, {"bos_token": "<bos>"})
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Why?"}]
    ours = TEMPLATES["gemma"]
    assert "<bos>" + ours.text(messages[:2]) == jinja.render(messages[:2], add_generation_prompt=False)
    assert "<bos>" + ours.generation_prompt(messages) == jinja.render(messages, add_generation_prompt=True)
    enc = encode_chat(ByteTokenizer(), ours, messages[:2])
    assert bytes(enc.tokens[enc.weights == 1].tolist()).decode() == "Hello.<end_of_turn>\n"
