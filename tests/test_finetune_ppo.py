"""`llm ppo` (llm.finetune.ppo): a rollout's per-token rewards, GAE, whitening and minibatches equal
a hand computation; a separate critic (rl.value_model="separate") reads the policy's frozen base
and has its own weights; the run raises the reward model's held-out score with either critic;
bad input is one line."""

from __future__ import annotations

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from finetune_fixtures import FAST, llm_session
from llm.config.loading import load_config
from llm.errors import ConfigError
from llm.finetune import ppo
from llm.finetune.ppo import PPORollouts, check_ppo_config, ppo_loss_builder, split_value
from llm.finetune.rollouts import Rollout
from llm.rl.rollout_batch import rollout_rows

KL_COEF, GAMMA, LAM = 0.1, 0.9, 0.8


def _config(**rl):
    config = load_config("configs/ppo_tiny.py", [])
    config.checkpoint.init_from = "SFT"
    config.rl.reward_model = "RM"
    config.rl.update({**dict(kl_coef=KL_COEF, gamma=GAMMA, lam=LAM, prompts_per_step=2, num_generations=2,
                             steps_per_generation=2, num_ppo_epochs=3), **rl})
    return check_ppo_config(config)


def _rollout(config) -> Rollout:
    """Four rows of different completion lengths (one empty-scored: NaN), random per-token arrays."""
    rng = np.random.default_rng(0)
    prompts = [np.array([5, 6, 7]), np.array([5, 6, 7]), np.array([8, 9]), np.array([8, 9])]
    completions = [[11, 12, 13, 14], [15], [16, 17, 18], [19, 20]]
    batch = rollout_rows(prompts, completions, int(config.data.seq_len))
    for key in ("old_logps", "ref_logps", "old_values", "sampler_logps"):
        batch[key] = rng.normal(-1.0, 0.5, batch["inputs"].shape).astype(np.float32)
    rewards = np.array([0.5, -1.0, np.nan, 2.0], np.float32)
    metrics = {"rollout_time": 1.0, "reward_time": 1.0, "reference_time": 1.0, "new_tokens": 10.0}
    return Rollout(step=3, rows=[None] * 4, cut=[None] * 4, batch=batch, rewards=rewards, metrics=metrics)


def _whiten(x, m):
    mean = x[m].mean()
    var = x[m].var(ddof=1)
    return (x - mean) / np.sqrt(var + 1e-8)


def _by_hand(batch, rewards, whiten_rewards: bool):
    """TRL 0.x PPOTrainer steps 4-6 written out with plain loops over each row's completion."""
    scored = np.isfinite(rewards)
    m = (batch["loss_mask"] > 0) & scored[:, None]
    old, ref, values = batch["old_logps"], batch["ref_logps"], batch["old_values"]
    token_rewards = np.zeros_like(old)
    for i in range(len(rewards)):
        cols = np.flatnonzero(m[i])
        for t in cols:
            token_rewards[i, t] = -KL_COEF * (old[i, t] - ref[i, t])
        if len(cols):
            token_rewards[i, cols[-1]] += rewards[i]
    if whiten_rewards:
        w = (token_rewards - token_rewards[m].mean()) / np.sqrt(token_rewards[m].var(ddof=1) + 1e-8) + token_rewards[m].mean()
        token_rewards = np.where(m, w, 0.0)
    advantages, returns = np.zeros_like(old), np.zeros_like(old)
    for i in range(len(rewards)):
        cols = list(np.flatnonzero(m[i]))
        last = 0.0
        for j in reversed(range(len(cols))):
            t = cols[j]
            next_value = values[i, cols[j + 1]] if j + 1 < len(cols) else 0.0
            delta = token_rewards[i, t] + GAMMA * next_value - values[i, t]
            last = delta + GAMMA * LAM * last
            advantages[i, t] = last
            returns[i, t] = last + values[i, t]
    return np.where(m, _whiten(advantages, m), 0.0), returns, m


@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_updates_equal_a_hand_computation(whiten_rewards):
    config = _config(whiten_rewards=whiten_rewards, kl_estimator="k1")
    source = PPORollouts.__new__(PPORollouts)  # updates() reads only the config: no model, task or rewards needed
    source.config = config
    rollout = _rollout(config)
    original = {k: v.copy() for k, v in rollout.batch.items()}
    passes = source.updates(rollout)

    advantages, returns, mask = _by_hand(original, rollout.rewards, whiten_rewards)
    batch = rollout.batch
    np.testing.assert_allclose(batch["advantages"], advantages, atol=1e-5)
    np.testing.assert_allclose(batch["returns"], returns, atol=1e-5)
    np.testing.assert_array_equal(batch["loss_mask"] > 0, mask)  # the unscored row trains on nothing
    assert "ref_logps" not in batch

    # 3 epochs x 2 minibatches of 2 rows: each epoch every row once, in the (seed, step, epoch) order.
    assert len(passes) == 6
    for epoch in range(3):
        order = np.random.default_rng([int(config.train.seed), rollout.step, epoch]).permutation(4)
        for j, (mb, _) in enumerate(passes[2 * epoch : 2 * epoch + 2]):
            assert set(mb) == set(original) - {"ref_logps"} | {"advantages", "returns"}
            for key in mb:
                np.testing.assert_array_equal(mb[key], batch[key][order[2 * j : 2 * j + 2]])
    metrics = passes[0][1]
    assert metrics["rollout_time"] == pytest.approx(1 / 6) and metrics["rollout_tokens"] == pytest.approx(10 / 6)
    kl = ((original["old_logps"] - original["ref_logps"]) * mask).sum(axis=1)
    assert metrics["objective/kl"] == pytest.approx(kl.mean(), rel=1e-5)
    assert metrics["objective/scores"] == pytest.approx(np.nanmean(rollout.rewards))


@pytest.mark.parametrize("change, message", [
    (dict(reward_model=""), "llm ppo has no reward: pass --reward-model RM"),
    (dict(value_model="critic"), "rl.value_model='critic'; use one of head, separate"),
    (dict(num_iterations=2), "rl.num_iterations=2 is GRPO's"),
    (dict(lam=1.5), r"rl.lam=1.5 must be in \[0, 1\]"),
    (dict(num_ppo_epochs=0), "rl.num_ppo_epochs=0 must be >= 1"),
])
def test_bad_config(change, message):
    config = load_config("configs/ppo_tiny.py", [])
    config.checkpoint.init_from = "SFT"
    config.rl.reward_model = "RM"
    config.rl.update(change)
    with pytest.raises(ConfigError, match=message):
        check_ppo_config(config)


def test_one_completion_per_prompt_is_allowed():
    assert _config(num_generations=1, prompts_per_step=4).data.batch_size == 2


def _leaves(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("lora_rank", [8, 0])
def test_separate_critic_reads_the_policys_frozen_base_with_its_own_weights(lora_rank, monkeypatch):
    """rl.value_model="separate": with LoRA the critic is a second set of adapters (another seed)
    and its forward merges the very frozen arrays the policy's does (no second base); with full
    fine-tuning it is a copy of the trainable leaves and shares peft.freeze's. Only the critic
    moves the values; the policy's log-probs do not depend on it."""
    from llm.finetune.tasks import partition_for_config
    from llm.model.build import init_params
    from llm.model.spec import model_spec
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    config = _config(value_model="separate")
    config.peft.lora_rank = lora_rank
    config.peft.freeze = () if lora_rank else ("embed",)
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    graphdef, trainable, frozen = partition_for_config(config).apply(graphdef, params)
    policy, critic = split_value(trainable)
    assert set(critic) == {"params", "value_head"} and not np.asarray(critic["value_head"]["kernel"]).any()
    weights, mine = _leaves(critic["params"]), _leaves(policy)
    assert set(weights) == set(mine) and weights  # the policy's trainable leaves, no more
    assert not {id(x) for x in weights.values()} & {id(x) for x in jax.tree_util.tree_leaves((policy, frozen))}
    if lora_rank:
        assert all(k.endswith(("['lora_a']", "['lora_b']")) for k in weights)  # no base leaf
        for k, x in weights.items():
            same = np.array_equal(np.asarray(x), np.asarray(mine[k]))
            assert same == k.endswith("['lora_b']"), k  # B = 0 in both; A drawn from another seed
    else:
        assert frozen and all("embed" in k for k in _leaves(frozen))
        assert all(np.array_equal(np.asarray(x), np.asarray(mine[k])) for k, x in weights.items())  # a copy

    merged: list[dict] = []  # the trees ppo.py's forwards merge with
    spy = lambda g, tree: (merged.append(_leaves(tree)), nnx.merge(g, tree))[1]  # noqa: E731
    monkeypatch.setattr(ppo, "nnx", types.SimpleNamespace(merge=spy))
    config.data.seq_len = 16
    batch = _rollout(config).batch
    batch.update(advantages=np.ones_like(batch["old_logps"]), returns=np.ones_like(batch["old_logps"]))
    loss_fn = ppo_loss_builder(config)(graphdef, lambda rng: {}, False)
    loss, aux = loss_fn(trainable, frozen, batch, None)
    assert len(merged) == 2  # the policy's forward, then the critic's
    base = {k: id(x) for k, x in _leaves(frozen).items()}
    for tree in merged:
        assert {k: id(x) for k, x in tree.items() if k in base} == base  # the same frozen arrays, not copies
    assert {k: id(x) for k, x in merged[1].items() if k not in base} == {k: id(x) for k, x in weights.items()}

    def forward(critic):
        return ppo.policy_logps_and_values(graphdef, policy, critic, frozen, {}, {}, batch, 1.0)

    logps, values = forward(critic)
    assert not np.asarray(values).any()  # a zero head: values start at 0
    rng = np.random.default_rng(1)
    moved = jax.tree_util.tree_map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), critic)
    logps2, values2 = forward(moved)
    np.testing.assert_array_equal(np.asarray(logps), np.asarray(logps2))
    with_policy_trunk = ppo.policy_logps_and_values(graphdef, policy, {"value_head": moved["value_head"]}, frozen, {}, {}, batch, 1.0)[1]
    assert np.abs(np.asarray(values2) - np.asarray(with_policy_trunk)).max() > 1e-4  # its own trunk, not the policy's


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A random tiny Llama policy (Hugging Face directory) and a reward model workdir (another
    random tiny Llama + a random head) sharing one Llama-3-style BPE tokenizer (BOS by its post-processor)."""
    from interop_models import build_hf_model, single_device_rules, styled_tokenizer
    from llm.checkpoint.params_io import save_params
    from llm.config.base import base_config
    from llm.interop.hf_import import load_hf_checkpoint
    from llm.interop.hf_reward import write_head_file

    root = tmp_path_factory.mktemp("ppo")
    tok = styled_tokenizer(root / "tok", "llama3")
    build_hf_model("llama", root / "policy", seed=3, tokenizer_dir=tok)
    build_hf_model("llama", root / "rm_src", seed=4, tokenizer_dir=tok)
    config, _, params = load_hf_checkpoint(root / "rm_src", single_device_rules(base_config()))
    save_params(root / "rm" / "merged", params, config, tokenizer_dir=tok)
    write_head_file(root / "rm" / "merged", np.random.default_rng(0).normal(0.0, 0.5, (config.model.d_model, 1)).astype(np.float32))
    return {"policy": root / "policy", "rm": root / "rm", "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("value_model", ["head", "separate"])
def test_ppo_raises_the_reward_models_score(models, value_model):
    """LoRA PPO against a random reward model: the reward model's mean score of greedy completions
    of 32 held-out prompts rises (head: measured -0.10 -> 2.12; with the reward negated, the score
    falls instead: 0.10 -> 1.91 of -score, so the rise is the reward's doing, not drift; separate:
    measured -0.10 -> 2.17, and with the reward negated 0.10 -> 0.97 of -score)."""
    work = models["root"] / f"run_{value_model}"
    common = ["--config", "configs/ppo_tiny.py", "--init-from", str(models["policy"]), "--config.rl.task=addition", "--config.rl.prompts_per_step=4",
              "--config.rl.max_prompt_tokens=48", "--config.rl.max_new_tokens=16", "--config.rl.eval_prompts=32", *FAST]
    (code, err), (bad, bad_err) = llm_session(
        ["ppo", "--workdir", str(work), "--reward-model", str(models["rm"]), *common, "--config.train.steps=64",
         "--config.train.eval_every=64", "--config.train.log_every=16", "--config.optim.lr=3e-3",
         f"--config.rl.value_model={value_model}"],
        ["ppo", "--workdir", str(models["root"] / f"none_{value_model}"), *common],
    )
    assert code == 0, err[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["heldout_reward"] > summary["start_eval_reward"] + 1.0, summary
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in rows for k in r}
    assert {"objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "val/clipfrac_avg"} <= logged
    assert (work / "adapter").is_dir() and (work / "peft" / "adapter_model.safetensors").is_file()  # the policy's adapters
    assert (work / "reward.png").is_file()
    if value_model == "head":
        assert (work / "merged" / "value_head.safetensors").is_file()
    else:
        from safetensors.numpy import load_file

        critic = load_file(str(work / "merged" / "critic.safetensors"))
        assert "value_head/kernel" in critic and np.abs(critic["value_head/kernel"]).max() > 0
        adapters = [k for k in critic if k.startswith("params/")]
        assert adapters and all(k.endswith(("/lora_a", "/lora_b")) for k in adapters)  # adapters only: no base copy
        assert any(np.abs(critic[k]).max() > 0 for k in adapters if k.endswith("/lora_b"))  # the critic's trunk trained
    assert bad == 2 and "llm ppo has no reward" in bad_err and len(bad_err.strip().splitlines()) == 1, bad_err


@pytest.mark.slow
def test_separate_critic_resumes_exactly(models):
    """The critic is trainable state: a run stopped at step 3 (mid-rollout: 2 minibatches per
    rollout) and resumed to step 6 logs the losses of an uninterrupted 6-step run. Its values
    feed the later rollouts' advantages, so a critic restored wrong would change them."""
    args = ["--config", "configs/ppo_tiny.py", "--init-from", str(models["policy"]), "--reward-model", str(models["rm"]),
            "--config.rl.task=addition", "--config.rl.prompts_per_step=4", "--config.rl.max_prompt_tokens=48", "--config.rl.max_new_tokens=16",
            "--config.rl.eval_prompts=4", "--config.rl.num_ppo_epochs=1", "--config.rl.value_model=separate",
            "--config.train.eval_every=0", "--config.train.log_every=1", "--config.optim.lr=3e-3", *FAST]
    whole, parts = models["root"] / "whole", models["root"] / "parts"
    results = llm_session(["ppo", "--workdir", str(whole), *args, "--config.train.steps=6"],
                          ["ppo", "--workdir", str(parts), *args, "--config.train.steps=3"],
                          ["ppo", "--workdir", str(parts), *args, "--config.train.steps=6"])
    assert all(code == 0 for code, _ in results), [err[-3000:] for _, err in results]

    def losses(workdir: Path) -> dict[int, tuple[float, float]]:
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["loss"], r["loss/value_avg"]) for r in rows if "loss" in r}

    expected = losses(whole)
    assert sorted(expected) == list(range(1, 7))
    assert "resumed from" in results[2][1] and list((parts / "rollouts").glob("after_3.npz"))
    assert losses(parts) == expected
