"""llm.rl.rewards: reward specs from config entries, the concurrent runner with its failure
accounting, and the reward-model reward's tokenizer check."""

from __future__ import annotations

import logging
import sys
import threading
import types

import numpy as np
import pytest

from llm.errors import UserError
from llm.rl.rewards import RewardRunner, RewardSpec, parse_rewards
from llm.rl.rewards.runner import summarize
from llm.rl.tasks.addition import addition_task


@pytest.fixture
def user_module(monkeypatch):
    """An importable module `rl_user_rewards` with a few reward functions."""
    mod = types.ModuleType("rl_user_rewards")
    mod.length = lambda prompts, completions, **_: [float(len(c)) for c in completions]
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, "rl_user_rewards", mod)
    return mod


def test_parse_rewards_entries_and_weights(user_module):
    task = addition_task(10, 2, 2, 0)
    assert parse_rewards([], task) == task.rewards  # empty: the task's default
    specs = parse_rewards(["builtin:addition@2", "rl_user_rewards:length@-0.5"], task)
    assert [(s.name, s.weight) for s in specs] == [("builtin:addition", 2.0), ("rl_user_rewards:length", -0.5)]
    assert specs[0].fn is task.rewards[0].fn and specs[1].fn is user_module.length
    assert parse_rewards(["rl_user_rewards:length"], None)[0].weight == 1.0


@pytest.mark.parametrize("entry, words", [
    ("no_such_module_xyz:f", "does not import"),
    ("rl_user_rewards:missing", "has no 'missing'"),
    ("rl_user_rewards:not_callable", "not callable"),
    ("rl_user_rewards:length@heavy", "not a number"),
    ("rl_user_rewards:length@inf", "not finite"),
    ("just_a_name", "neither MODULE:FUNCTION"),
    ("builtin:docstring", "no such built-in reward"),
])
def test_parse_rewards_bad_entries_are_one_line(user_module, entry, words):
    with pytest.raises(UserError, match=words) as err:
        parse_rewards([entry], addition_task(10, 2, 2, 0))
    assert "\n" not in str(err.value) and repr(entry) in str(err.value)


def test_parse_rewards_refuses_a_duplicate_and_a_string(user_module):
    with pytest.raises(UserError, match="twice"):
        parse_rewards(["rl_user_rewards:length", "rl_user_rewards:length@2"], None)
    with pytest.raises(UserError, match="is a string"):
        parse_rewards("rl_user_rewards:length", None)


def _raises(prompts, completions, **_):
    raise ValueError("bad row\nsecond line")


def test_a_raising_reward_is_summarised_counted_and_others_still_score(caplog):
    ok = RewardSpec("ok", 2.0, lambda prompts, completions, answer, **_: [float(c == a) for c, a in zip(completions, answer)])
    runner = RewardRunner([ok, RewardSpec("bad", 1.0, _raises)], max_failure_rate=1.0)
    with caplog.at_level(logging.WARNING, logger="llm"):
        scores = runner.score(["p", "q"], ["1", "2"], {"answer": ["1", "3"]})
    runner.close()
    np.testing.assert_array_equal(scores.per_reward["ok"], [1.0, 0.0])
    assert np.isnan(scores.per_reward["bad"]).all()
    np.testing.assert_array_equal(scores.total, [2.0, 0.0])  # the failed reward is left out, not zero
    assert scores.failures == {"bad": 1} and runner.failed == {"ok": 0, "bad": 1}
    (line,) = scores.messages
    assert line == f"reward bad failed: ValueError: bad row ({__file__.rsplit('/', 1)[-1]}:{_raises.__code__.co_firstlineno + 1})"
    assert line in caplog.text


def test_wrong_length_non_numbers_and_inf_are_failures():
    runner = RewardRunner([RewardSpec("short", 1.0, lambda prompts, completions, **_: [1.0]),
                           RewardSpec("word", 1.0, lambda prompts, completions, **_: ["high", 1.0]),
                           RewardSpec("inf", 1.0, lambda prompts, completions, **_: [float("inf"), 1.0])],
                          max_failure_rate=1.0)
    scores = runner.score(["p", "q"], ["a", "b"], {})
    assert scores.failures == {"short": 1, "word": 1, "inf": 1}
    assert "returned 1 values for 2 completions" in scores.messages[0]
    assert "'high'" in scores.messages[1] and "inf" in scores.messages[2]


def test_total_is_nan_where_no_reward_scored_the_row():
    specs = [RewardSpec("a", 1.0, lambda prompts, completions, **_: [None, 1.0, None]),
             RewardSpec("b", 0.5, lambda prompts, completions, **_: [None, 4.0, float("nan")])]
    with RewardRunner(specs) as runner:
        scores = runner.score(["p"] * 3, ["x"] * 3, {})
    assert np.isnan(scores.total[0]) and scores.total[1] == 3.0 and np.isnan(scores.total[2])
    assert scores.total.dtype == np.float32 and not scores.failures
    with pytest.raises(UserError, match="column 'completions'.*rename that field"):
        RewardRunner(specs).score(["p"], ["x"], {"completions": ["y"]})


def test_failure_rate_over_the_run_stops_with_the_fix():
    outcomes = iter([True, True, False, False])  # ok, ok, fail (1/3 <= 0.4 goes on), fail (2/4 > 0.4 stops)

    def flaky(prompts, completions, **_):
        if not next(outcomes):
            raise RuntimeError("flaky")
        return [1.0] * len(completions)

    runner = RewardRunner([RewardSpec("my:flaky", 1.0, flaky)], max_failure_rate=0.4, min_calls=1)
    for _ in range(3):
        runner.score(["p"], ["c"], {})
    with pytest.raises(UserError, match=r"^reward my:flaky failed 2 of 4 calls.*fix the function or raise rl.max_reward_failure_rate$"):
        runner.score(["p"], ["c"], {})


def test_one_early_failure_does_not_stop_a_run():
    state = {"n": 0}

    def first_fails(prompts, completions, **_):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("warming up")
        return [0.0] * len(completions)

    runner = RewardRunner([RewardSpec("f", 1.0, first_fails)], max_failure_rate=0.5)  # min_calls=10
    for _ in range(12):
        runner.score(["p"], ["c"], {})
    assert runner.failed["f"] == 1 and runner.calls["f"] == 12


def test_rewards_run_concurrently():
    barrier = threading.Barrier(2, timeout=10)

    def meet(prompts, completions, **_):
        barrier.wait()  # breaks (raises) unless both rewards are running at the same time
        return [1.0] * len(completions)

    with RewardRunner([RewardSpec("a", 1.0, meet), RewardSpec("b", 1.0, meet)], workers=2) as runner:
        scores = runner.score(["p"], ["c"], {})
    assert not scores.failures and scores.total[0] == 2.0


def test_summary_names_the_innermost_frame():
    def inner():
        raise KeyError("answer")

    try:
        inner()
    except KeyError as err:
        assert summarize(err) == f"KeyError: 'answer' (test_rl_rewards.py:{inner.__code__.co_firstlineno + 1})"


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny byte-level reward model the way `llm rm` leaves it: merged/ = params + reward head."""
    import jax

    from llm.checkpoint.params_io import save_params
    from llm.config.base import base_config
    from llm.interop.hf_reward import write_head_file
    from llm.model.build import init_params
    from llm.model.spec import model_spec
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    config = base_config()
    config.model.vocab_size, config.model.d_model, config.model.d_ff, config.model.n_layers = 256, 32, 64, 1
    config.model.n_heads, config.model.n_kv_heads, config.model.max_seq_len = 2, 2, 64
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, devices=jax.devices()[:1]))
    _, params, _ = init_params(model_spec(config), rules, seed=1)
    run = tmp_path_factory.mktemp("rm") / "run"
    save_params(run / "merged", params, config)
    write_head_file(run / "merged", np.random.default_rng(0).normal(0, 1.0, (32, 1)).astype(np.float32))
    return run


def test_reward_model_reward_scores_pairs_and_refuses_another_tokenizer(reward_model_dir):
    from llm.data.tokenizer import load_tokenizer
    from llm.rl.rewards import reward_model_reward

    fingerprint = load_tokenizer("bytes").fingerprint
    with pytest.raises(UserError, match=r"uses tokenizer .* but the policy uses 0123456789abcdef; train the reward model") as err:
        reward_model_reward(str(reward_model_dir), "0123456789abcdef")
    assert "\n" not in str(err.value)
    spec = reward_model_reward(str(reward_model_dir), fingerprint, weight=0.5)
    assert spec.weight == 0.5
    scorer = spec.fn.scorer
    prompts, completions = ["2+2=", "Say hi.", "x"], ["4", " hi", "y" * 200]  # the last is longer than max_seq_len
    got = spec.fn(prompts, completions)
    want = scorer.score([scorer.encode({"prompt": p, "completion": c}, "row") for p, c in zip(prompts[:2], completions[:2])])
    np.testing.assert_allclose(got[:2], want, rtol=1e-6)
    assert got[2] is None and got[0] != got[1]
