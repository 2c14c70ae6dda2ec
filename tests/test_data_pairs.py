"""Preference pairs (llm.data.pairs): TRL's record formats, trl.DPOTrainer's tokenization
reproduced, the manifest / eval_path / held-out splits, prompt truncation and bad input."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_config
from interop_models import train_tokenizer
from llm.data.formats import SftEncoder, chat_template
from llm.data.pairs import PairStats, encode_prompt_answer, fit_prompt, implicit_prompt, load_pairs, record_key
from llm.data.pipeline import build_tokenizer
from llm.data.split import is_validation
from llm.errors import UserError

MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The HF rendering of our "default" template (BOS first, EOS after a final assistant turn), so
# TRL's apply_chat_template and our piecewise ChatTemplate describe the same tokens.
HF_DEFAULT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% if loop.last and m['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

STRING_RECORDS = [
    {"prompt": "def f(x):", "chosen": " return x", "rejected": " pass"},
    {"prompt": "x = 1\nimpo", "chosen": "rt json", "rejected": "rt os"},  # tokens merge across the boundary
    {"prompt": "Say hi.", "chosen": " hi</s>", "rejected": " no"},  # chosen already ends with the EOS string
]
IMPLICIT_STRING_RECORDS = [
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"chosen": "import json", "rejected": "import os"},
]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CHAT_RECORDS = [
    {"prompt": [user("What color is the sky?")], "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")]},
    {"prompt": [{"role": "system", "content": "Be brief."}, user("Name a prime."), assistant("7"), user("Another?")],
     "chosen": [assistant("11")], "rejected": [assistant("12")]},
]
IMPLICIT_CHAT_RECORDS = [
    {"chosen": [user("Where is the sun?"), assistant("In the sky.")], "rejected": [user("Where is the sun?"), assistant("In the sea.")]},
]


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory) -> Path:
    """A BPE tokenizer directory that adds BOS like Llama's, with the chat markers as special
    tokens and a chat template equal to our default one."""
    import transformers
    from tokenizers import processors

    base = train_tokenizer(tmp_path_factory.mktemp("base"))
    tok = transformers.AutoTokenizer.from_pretrained(base)
    tok.add_tokens(MARKERS, special_tokens=True)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    tok.chat_template = HF_DEFAULT_TEMPLATE
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


def write(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def config_for(path, tok="bytes", *overrides):
    return tiny_config(f"data.path={path}", f"data.tokenizer={tok}", "data.eval_fraction=0.0", "model.vocab_size=512",
                       "data.seq_len=256", *overrides)


def trl_tokenize(tok_dir: Path, records: list[dict]) -> list[dict]:
    """trl.DPOTrainer's own _prepare_dataset (extract prompt, add EOS, tokenize_fn) on `records`.
    It is a method, but it only reads `self._tokenizer`, so it runs without building a trainer."""
    import transformers
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DPOTrainer

    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_end")
    out = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), Dataset.from_list(records), tok, args, "test")
    return [{k: out[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(len(out))]


def assert_same_as_trl(pairs, expected):
    assert len(pairs) == len(expected)
    for pair, want in zip(pairs, expected):
        assert pair.prompt.tolist() == want["prompt_ids"]
        assert pair.chosen.tolist() == want["chosen_ids"]
        assert pair.rejected.tolist() == want["rejected_ids"]
        assert pair.prompt.dtype == pair.chosen.dtype == pair.rejected.dtype == np.int32


@pytest.mark.parametrize("records", [STRING_RECORDS, IMPLICIT_STRING_RECORDS], ids=["explicit", "implicit"])
def test_plain_text_pairs_equal_trl_tokenization(tmp_path, hf_tok, records):
    config = config_for(write(tmp_path / "p.jsonl", records), hf_tok, "data.strings_as_chat=false")
    pairs, stats = load_pairs(config, "train")
    assert_same_as_trl(pairs, trl_tokenize(hf_tok, records))
    assert stats == PairStats(read=len(records), kept=len(records))
    tokenizer = build_tokenizer(config)
    assert pairs[0].prompt[0] == tokenizer.bos_id and pairs[0].chosen[-1] == tokenizer.eos_id
    if records is STRING_RECORDS:  # "impo" + "rt" merge: the prompt ends where the two tokenizations diverge
        prompt_alone = [tokenizer.bos_id] + tokenizer.encode(records[1]["prompt"])
        assert len(pairs[1].prompt) < len(prompt_alone)
        assert np.count_nonzero(pairs[2].chosen == tokenizer.eos_id) == 1  # no second EOS


@pytest.mark.parametrize("records", [CHAT_RECORDS, IMPLICIT_CHAT_RECORDS], ids=["explicit", "implicit"])
def test_conversational_pairs_equal_trl_tokenization(tmp_path, hf_tok, records):
    config = config_for(write(tmp_path / "p.jsonl", records), hf_tok, "data.chat_template=default")
    pairs, _ = load_pairs(config, "train")
    assert_same_as_trl(pairs, trl_tokenize(hf_tok, records))
    tokenizer = build_tokenizer(config)
    assert tokenizer.decode(pairs[0].prompt.tolist()).endswith("<|assistant|>\n")


def test_string_records_render_like_sft(tmp_path, hf_tok):
    """strings_as_chat (the default): prompt + answer are the `llm sft` tokens of the same
    prompt/response record; the answer is exactly the tokens SFT trains on."""
    record = {"prompt": "Write a loop.", "chosen": "for i in range(3): pass", "rejected": "while True: pass"}
    config = config_for(write(tmp_path / "p.jsonl", [record]), hf_tok, "data.chat_template=chatml")
    [pair], _ = load_pairs(config, "train")
    sft = SftEncoder(build_tokenizer(config), chat_template("chatml"))
    for side in ("chosen", "rejected"):
        encoded = sft({"prompt": record["prompt"], "response": record[side]}, "x")
        first = int(np.flatnonzero(encoded.weights)[0])
        assert pair.prompt.tolist() == encoded.tokens[:first].tolist()
        assert getattr(pair, side).tolist() == encoded.tokens[first:].tolist()
        assert encoded.weights[first:].all()
    chat = {"prompt": [user(record["prompt"])], "chosen": [assistant(record["chosen"])], "rejected": [assistant(record["rejected"])]}
    [as_messages], _ = load_pairs(config_for(write(tmp_path / "c.jsonl", [chat]), hf_tok, "data.chat_template=chatml"), "train")
    assert as_messages.prompt.tolist() == pair.prompt.tolist() and as_messages.chosen.tolist() == pair.chosen.tolist()


def test_encode_prompt_answer_is_the_chosen_side(tmp_path, hf_tok):
    for strings_as_chat in ("true", "false"):
        config = config_for(write(tmp_path / "p.jsonl", STRING_RECORDS), hf_tok, f"data.strings_as_chat={strings_as_chat}")
        pairs, _ = load_pairs(config, "train")
        tokenizer = build_tokenizer(config)
        r = STRING_RECORDS[0]
        prompt, answer = encode_prompt_answer(tokenizer, config, r["prompt"], r["chosen"])
        assert prompt.tolist() == pairs[0].prompt.tolist() and answer.tolist() == pairs[0].chosen.tolist()
    with pytest.raises(UserError, match="message"):
        encode_prompt_answer(tokenizer, config, "hi", [{"role": "robot", "content": "x"}])


def test_implicit_prompt_follows_trl_extract_prompt():
    from trl.data_utils import extract_prompt

    cases = [("The sky is blue.", "The sky is green."), ("abc", "abcdef"), ("x", "y"), ("same start a", "same start b"),
             ([user("q"), assistant("a")], [user("q"), assistant("b")]), ([user("q"), assistant("a")], [user("p"), assistant("a")])]
    for chosen, rejected in cases:
        want = extract_prompt({"chosen": chosen, "rejected": rejected})
        assert implicit_prompt(chosen, rejected) == (want["prompt"], want["chosen"], want["rejected"])


def test_manifest_splits(tmp_path):
    root = tmp_path / "corpus"
    (root / "preference").mkdir(parents=True)
    rows = {s: [{"prompt": f"{s} {i}:", "chosen": " yes", "rejected": " no"} for i in range(n)] for s, n in (("train", 3), ("validation", 2))}
    for split, records in rows.items():
        write(root / f"preference/{split}.jsonl", records)
    manifest = {"name": "t", "files": {"preference": {s: f"preference/{s}.jsonl" for s in rows}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for path in (root / "manifest.json", root):
        config = config_for(path, "bytes", "data.strings_as_chat=false")
        for split, records in rows.items():
            pairs, stats = load_pairs(config, split)
            assert [bytes(p.prompt.tolist()).decode() for p in pairs] == [r["prompt"] for r in records]
            assert [p.index for p in pairs] == list(range(len(records)))
            assert stats.read == stats.kept == len(records)


def test_builtin_manifest_pairs(tmp_path):
    import sysconfig

    from llm.data.builtin import build_builtin

    files = [str(Path(sysconfig.get_paths()["stdlib"]) / "json" / name) for name in ("decoder.py", "encoder.py", "scanner.py")]
    manifest = build_builtin(tmp_path / "corpus", files=files, eval_fraction=0.0)
    config = config_for(tmp_path / "corpus" / "manifest.json", "bytes", "data.seq_len=1024", "model.max_seq_len=1024",
                        "data.strings_as_chat=false")
    pairs, stats = load_pairs(config, "train")
    assert stats.read == manifest["counts"]["preference"]["train"] > 0
    assert stats.kept == len(pairs) > 0 and stats.read == stats.kept + stats.identical + stats.too_long + stats.bad
    record = json.loads((tmp_path / "corpus/preference/train.jsonl").read_text().splitlines()[pairs[0].index])
    assert bytes(pairs[0].chosen.tolist()).decode().startswith(record["chosen"])  # bytes: no BOS/EOS


def test_held_out_fraction_and_eval_path(tmp_path):
    records = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": "b"} for i in range(40)]
    path = write(tmp_path / "all.jsonl", records)
    config = config_for(path, "bytes", "data.eval_fraction=0.3", "data.strings_as_chat=false")
    train, _ = load_pairs(config, "train")
    valid, _ = load_pairs(config, "validation")
    held = [r for r in records if is_validation(record_key(r), 0.3)]
    assert 0 < len(held) < len(records)
    assert [bytes(p.prompt.tolist()).decode() for p in valid] == [r["prompt"] for r in held]
    assert len(train) + len(valid) == len(records)
    assert [p.index for p in valid] == list(range(len(valid)))
    eval_path = write(tmp_path / "eval.jsonl", records[:2])
    config = config_for(path, "bytes", "data.eval_fraction=0.3", f"data.eval_path={eval_path}")
    assert len(load_pairs(config, "train")[0]) == len(records)
    assert len(load_pairs(config, "validation")[0]) == 2


def test_fit_prompt_keeps_the_end_and_a_leading_bos():
    prompt = np.arange(10, dtype=np.int32)
    assert fit_prompt(prompt, 3, 3, 100, True) is prompt
    # 2*p + 3 + 3 - 2 <= 12 -> p <= 4
    assert fit_prompt(prompt, 3, 3, 12, False).tolist() == [6, 7, 8, 9]
    assert fit_prompt(prompt, 3, 3, 12, True).tolist() == [0, 7, 8, 9]
    assert fit_prompt(prompt, 3, 3, 6, True).tolist() == [0]  # p <= 1
    assert fit_prompt(prompt, 3, 3, 6, False).tolist() == [9]
    assert fit_prompt(prompt, 3, 3, 5, True) is None  # no room for the answers
    assert fit_prompt(prompt[:0], 3, 3, 4, False).tolist() == []  # no prompt: 3 + 3 - 2 <= 4


def test_long_prompts_are_cut_from_the_start_and_counted(tmp_path, hf_tok):
    records = [{"prompt": "x = 1\n" * 20, "chosen": " y", "rejected": " z"}, {"prompt": "ok", "chosen": " y", "rejected": " z"}]
    config = config_for(write(tmp_path / "p.jsonl", records), hf_tok, "data.strings_as_chat=false", "data.seq_len=32")
    full, uncut = load_pairs(config_for(write(tmp_path / "q.jsonl", records), hf_tok, "data.strings_as_chat=false"), "train")
    assert uncut.prompts_cut == 0
    pairs, stats = load_pairs(config, "train")
    cut, kept = pairs[0], full[0]
    assert 2 * len(cut.prompt) + len(cut.chosen) + len(cut.rejected) - 2 in (31, 32)  # the longest prompt that fits
    assert cut.prompt[0] == kept.prompt[0] == build_tokenizer(config).bos_id
    assert cut.prompt[1:].tolist() == kept.prompt[len(kept.prompt) - len(cut.prompt) + 1 :].tolist()
    assert cut.chosen.tolist() == kept.chosen.tolist() and cut.rejected.tolist() == kept.rejected.tolist()
    assert pairs[1].prompt.tolist() == full[1].prompt.tolist()
    assert (stats.prompts_cut, stats.prompt_tokens_cut, stats.kept) == (1, len(kept.prompt) - len(cut.prompt), 2)


def test_answers_that_do_not_fit(tmp_path, caplog):
    records = [{"prompt": "p", "chosen": "a" * 30, "rejected": "b" * 30}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    path = write(tmp_path / "p.jsonl", records)
    plain = ("data.seq_len=40", "data.strings_as_chat=false")
    with pytest.raises(UserError, match=rf"at {path}:1: the pair leaves no room for the answer at data.seq_len=40 \(chosen 30 \+ rejected 30 "
                                        r"tokens .*raise data.seq_len to at least 60"):
        load_pairs(config_for(path, "bytes", *plain, "data.bad_input=fail"), "train")
    with caplog.at_level(logging.WARNING, logger="llm.data.pairs"):
        pairs, stats = load_pairs(config_for(path, "bytes", *plain, "data.bad_input=skip"), "train")
    assert [p.index for p in pairs] == [1] and stats.too_long == 1 and stats.kept == 1
    assert "skipped 1 train preference pairs whose answers alone exceed data.seq_len=40" in caplog.text


def test_missing_answer_is_always_an_error(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])
    for policy, split in (("skip", "train"), ("fail", "train"), ("skip", "validation")):  # the record is in train
        with pytest.raises(UserError, match=rf"record at {path}:2 has no 'rejected' field .*preference format"):
            load_pairs(config_for(path, "bytes", f"data.bad_input={policy}"), split)


def test_identical_answers_are_skipped_and_counted(tmp_path, caplog):
    records = [{"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "a", "rejected": "b"},
               {"chosen": "The same.", "rejected": "The same."}]
    with caplog.at_level(logging.WARNING, logger="llm.data.pairs"):
        pairs, stats = load_pairs(config_for(write(tmp_path / "p.jsonl", records), "bytes", "data.bad_input=fail"), "train")
    assert [p.index for p in pairs] == [1] and (stats.identical, stats.kept, stats.read) == (2, 1, 3)
    assert "skipped 2 train preference pairs whose chosen and rejected answers are identical" in caplog.text


def test_malformed_records_follow_bad_input(tmp_path, caplog):
    records = [{"prompt": "p", "chosen": 3, "rejected": "b"}, ["not", "an", "object"], {"prompt": "q", "chosen": "a", "rejected": "b"},
               {"prompt": [user("q")], "chosen": [{"role": "robot", "content": "x"}], "rejected": [assistant("y")]}]
    path = write(tmp_path / "p.jsonl", records)
    with pytest.raises(UserError, match=rf"bad input at {path}:1: field 'chosen' must be a string .*data.bad_input=skip"):
        load_pairs(config_for(path, "bytes", "data.bad_input=fail"), "train")
    with caplog.at_level(logging.WARNING, logger="llm.data.pairs"):
        pairs, stats = load_pairs(config_for(path, "bytes", "data.bad_input=skip"), "train")
    assert [p.index for p in pairs] == [2] and (stats.bad, stats.kept) == (3, 1)
    assert f"{path}:4" in caplog.text and "unknown role 'robot'" in caplog.text


def test_no_pair_left_is_an_error(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    with pytest.raises(UserError, match=r"the train split of data.path=.* has no usable preference pairs \(read 1, kept 0, identical 1"):
        load_pairs(config_for(path), "train")
    with pytest.raises(UserError, match=r"the validation split .*\(read 0"):
        load_pairs(config_for(path), "validation")  # eval_fraction=0: nothing held out


def test_margin_field(tmp_path):
    records = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.5}, {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}]
    path = write(tmp_path / "p.jsonl", records)
    pairs, stats = load_pairs(config_for(path, "bytes", "rm.margin_field=margin"), "train")
    assert [p.margin for p in pairs] == [1.5] and stats.bad == 1
    assert load_pairs(config_for(path), "train")[0][1].margin == 0.0
    with pytest.raises(UserError, match=r"has no margin field 'gap'; .*rm.margin_field=''"):
        load_pairs(config_for(path, "bytes", "rm.margin_field=gap"), "train")
