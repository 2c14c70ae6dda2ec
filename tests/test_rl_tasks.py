"""llm.rl.tasks: the built-in addition and docstring tasks (determinism, held-out prompts,
reward values) and the user's JSONL prompts with their bad-input errors."""

from __future__ import annotations

import json

import pytest

from llm.config.base import base_config
from llm.errors import ConfigError, UserError
from llm.rl.tasks import PromptRow, build_task, columns_of
from llm.rl.tasks.addition import addition_reward, addition_score


def _config(**rl):
    config = base_config()
    for k, v in rl.items():
        config.rl[k] = v
    return config


def test_addition_is_seeded_distinct_and_holds_out_disjoint_prompts():
    config = _config(task="addition", task_size=300, held_out=40, digits=3)
    task = build_task(config)
    assert len(task.train) == 260 and len(task.held_out) == 40
    prompts = [r.prompt for r in task.train + task.held_out]
    assert len(set(prompts)) == 300  # distinct, so train and held out never share a prompt
    assert build_task(config) == task  # a pure function of the config
    config.data.seed = 1
    assert build_task(config).train != task.train
    for row in task.train[:50]:
        a, b = row.prompt.rstrip("=").split("+")
        assert row.prompt.endswith("=") and row.columns["answer"] == str(int(a) + int(b))
        assert 1 <= len(a) <= 3 and 1 <= len(b) <= 3 and str(int(a)) == a
    assert {len(r.prompt.split("+")[0]) for r in task.train} == {1, 2, 3}
    assert task.sft_records(2) == [{"prompt": r.prompt, "response": r.columns["answer"]} for r in task.train[:2]]


def test_addition_reward_values():
    assert addition_score(" 46\n", "46") == 1.0
    assert addition_score("47", "46") == pytest.approx(0.1 + 0.1 + 0.3 * 1 / 2)  # right length, tens right
    assert addition_score("64", "46") == pytest.approx(0.2)  # right length, no digit in place
    assert addition_score("146", "46") == pytest.approx(0.1 + 0.3 * 2 / 3)  # wrong length, 2 of 3 in place
    assert addition_score("-46", "46") == addition_score("46 apples", "46") == addition_score("", "46") == 0.0
    assert max(addition_score(f"{x}", "46") for x in range(1000) if x != 46) < 0.5
    assert addition_reward(["1+1="] * 3, ["2", "3", "2"], answer=["2", "2", None]) == [1.0, pytest.approx(0.2), None]
    task = build_task(_config(task_size=10, held_out=2))
    assert task.success("12 ", {"answer": "12"}) and not task.success("13", {"answer": "12"})


def test_addition_bad_sizes_are_one_line():
    with pytest.raises(UserError, match=r"rl.task_size=101 is more than the 100 distinct additions.*raise rl.digits"):
        build_task(_config(task_size=101, held_out=1, digits=1))
    assert len(build_task(_config(task_size=100, held_out=1, digits=1)).train) == 99  # the whole space
    with pytest.raises(UserError, match=r"rl.held_out=10 must be in \[0, rl.task_size=10\)"):
        build_task(_config(task_size=10, held_out=10))
    with pytest.raises(ConfigError, match="rl.task='chess' is not one of addition, docstring, jsonl"):
        build_task(_config(task="chess"))


def test_columns_of_rows():
    rows = [PromptRow("a", {"answer": "1"}), PromptRow("b", {"answer": "2", "id": 7})]
    assert columns_of(rows) == {"answer": ["1", "2"], "id": [None, 7]}


def _jsonl_config(path, **data):
    config = _config(task="jsonl")
    config.data.path = str(path)
    for k, v in data.items():
        config.data[k] = v
    return config


def test_jsonl_rows_columns_and_held_out_share(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}", "id": i}) + "\n" for i in range(200)) + "\n")
    task = build_task(_jsonl_config(path, eval_fraction=0.2))
    assert len(task.train) + len(task.held_out) == 200 and 20 < len(task.held_out) < 60
    assert {r.prompt for r in task.train}.isdisjoint(r.prompt for r in task.held_out)
    assert task.train[0].columns == {"response": "a0", "id": 0} or task.held_out[0].columns["id"] == 0
    assert task.rewards == [] and task.sft_records(1)[0]["response"].startswith("a")
    assert task.success(" a3 ", {"response": "a3"}) and not task.success("a3", {"id": 3})
    assert build_task(_jsonl_config(path, eval_fraction=0.2)) == task
    held = tmp_path / "h.jsonl"
    held.write_text(json.dumps({"prompt": "h", "answer": 1}) + "\n")
    task = build_task(_jsonl_config(path, eval_path=str(held)))
    assert len(task.train) == 200 and task.held_out == [PromptRow("h", {"answer": 1})]


@pytest.mark.parametrize("content, words", [
    (b'{"prompt": "a"}\n{"prompt": \n', r"line 2 of .*p.jsonl is not JSON .*write one object per line"),
    (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', r"is not UTF-8 \(line 2, byte \d+\); re-encode it as UTF-8"),
    (b'{"prompt": "a"}\n{"question": "b"}\n', r"p.jsonl:2 has no 'prompt' field \(it has 'question'\); add it or set data.prompt_field"),
    (b'{"prompt": "a"}\n[1, 2]\n', r"p.jsonl:2 is a JSON list"),
    (b'{"prompt": 3}\n', r"p.jsonl:1: 'prompt' is int; give the prompt as a non-empty string"),
    (b"\n\n", r"has no rows"),
])
def test_jsonl_bad_input_is_one_line(tmp_path, content, words):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=words) as err:
        build_task(_jsonl_config(path))
    assert "\n" not in str(err.value)


def test_jsonl_missing_path(tmp_path):
    with pytest.raises(UserError, match="needs data.path"):
        build_task(_jsonl_config(""))
    with pytest.raises(UserError, match="does not exist"):
        build_task(_jsonl_config(tmp_path / "nope.jsonl"))


# -- docstring task: real standard library functions, doctests run in llm.sandbox ----------------

def _stdlib_row(module: str, name: str, doctest: bool) -> dict:
    from llm.rl.tasks.docstring import stdlib_functions

    fn = next(f for f in stdlib_functions() if f.module == module and f.qualname == name)
    return {"header": fn.header, "function": name, "module": module, "doctest": doctest, "body": fn.body}


def _score(reward, row: dict, completions: list[str]) -> list:
    columns = {k: [row[k]] * len(completions) for k in row}
    return reward(["prompt"] * len(completions), completions, **columns)


def test_docstring_reward_tiers_on_statistics_median():
    import time

    from llm.rl.tasks.docstring_reward import DocstringReward, DocstringSuccess

    row = _stdlib_row("statistics", "median", True)
    reward = DocstringReward(timeout_s=1.0, memory_mb=256, workers=4)
    loop = "    while True:\n        pass\n"
    completions = [
        row["body"],  # the real body: both examples pass
        "    return sorted(data)[len(data) // 2]\n",  # the odd example passes, the even one fails
        "    return 0\n",  # defines it, no example passes
        # forges the harness's line without its per-call nonce, then exits before the harness prints
        "    return 0\nimport os, sys\nsys.__stdout__.write('verify 2 0\\n'); sys.__stdout__.flush(); os._exit(0)\n",
        "    return (\n",  # does not parse
        "return 3\n",  # parses, but the function has no body after its docstring
    ] + [loop] * 4
    start = time.monotonic()
    scores = _score(reward, row, completions)
    elapsed = time.monotonic() - start
    assert scores[:6] == [1.0, pytest.approx(0.5 + 0.4 * 1 / 2), 0.5, 0.5, 0.0, 0.25]
    assert scores[6:] == [0.25] * 4  # infinite loops are cut at the timeout and score low
    assert elapsed < 3.5, f"4 one-second timeouts on 4 workers took {elapsed:.1f}s: not run in parallel"
    success = DocstringSuccess(reward)
    assert success(row["body"], row) and not success("    return 0\n", row)


def test_docstring_reward_without_doctests_is_at_most_one_half():
    from llm.rl.tasks.docstring_reward import DocstringReward, DocstringSuccess

    row = _stdlib_row("textwrap", "wrap", False)
    assert _score(DocstringReward(), row, [row["body"], "    return [text]\n", "  x = (\n"]) == [0.5, 0.5, 0.0]
    assert DocstringSuccess(DocstringReward())("    return []\n", row)


def test_docstring_task_is_seeded_with_doctest_rows_on_both_sides():
    from llm.data.builtin import PROMPT

    config = _config(task="docstring", task_size=200, held_out=50)
    task = build_task(config)
    assert len(task.train) == 150 and len(task.held_out) == 50
    keys = [(r.columns["module"], r.columns["function"]) for r in task.train + task.held_out]
    assert len(set(keys)) == 200 and all("." not in f for _, f in keys)  # distinct top-level functions
    train_tested = [r for r in task.train if r.columns["doctest"]]
    held_tested = [r for r in task.held_out if r.columns["doctest"]]
    assert len(train_tested) > 20 and len(held_tested) > 5  # every verified doctest function, split by share
    row = held_tested[0]
    assert row.prompt == PROMPT.format(module=row.columns["module"], header=row.columns["header"])
    assert ">>>" in row.columns["header"] and task.success(row.columns["body"], row.columns)
    assert task.sft_records(1) == [{"prompt": task.train[0].prompt, "response": task.train[0].columns["body"]}]
    assert build_task(config) == task
    config.data.seed = 3
    assert build_task(config).train != task.train
