"""`llm grpo` end to end on `tiny`: the rollout, reference and train step read one copy of the
base (LoRA), the LoRA step needs less memory than full fine-tuning, GRPO raises the held-out
reward of an SFT-warmed policy, kill -9 + resume equals an uninterrupted run, and bad input
stops with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from finetune_fixtures import FAST, corpus_and_start, llm_session
from llm.compile.aot import abstract_setup, compile_step
from llm.config.loading import load_config
from llm.errors import ConfigError
from llm.finetune.tasks import partition_for_config

GRPO = ["--config", "configs/grpo_tiny.py", *FAST]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A short SFT warm start on the addition task's records (60 steps: it answers in the format but
    mostly wrongly, so RL has something to raise), from the shared briefly-pretrained tiny."""
    _, start = corpus_and_start(tmp_path_factory)
    root = tmp_path_factory.mktemp("grpo")
    results = llm_session(
        ["data", "rl-task", "--config", "configs/grpo_tiny.py", "--out", str(root / "task")],
        ["sft", "--config", "configs/sft_full_tiny.py", "--workdir", str(root / "sft"), "--init-from", str(start),
         "--data", str(root / "task" / "sft.jsonl"), "--config.train.steps=60", "--config.train.eval_every=0",
         "--config.optim.lr=3e-3", *FAST],
    )
    assert all(code == 0 for code, _ in results), results[-1][1][-3000:]
    return root / "sft"


def grpo_config(*overrides: str):
    return load_config("configs/grpo_tiny.py", ["checkpoint.init_from=/nonexistent", *overrides])


def test_bad_rl_configs_are_one_line_errors():
    from llm.finetune.grpo import check_grpo_config

    with pytest.raises(ConfigError, match="rl.num_generations=1: GRPO compares"):
        check_grpo_config(grpo_config("rl.num_generations=1"))
    with pytest.raises(ConfigError, match="exceeds the model's 256 positions"):
        check_grpo_config(grpo_config("rl.max_new_tokens=250"))
    with pytest.raises(ConfigError, match="pass --init-from"):
        check_grpo_config(load_config("configs/grpo_tiny.py", []))
    with pytest.raises(ConfigError, match="data.batch_size=5 but online RL derives it"):
        check_grpo_config(grpo_config("data.batch_size=5"))
    with pytest.raises(ConfigError, match="rl.loss_agg='sum'"):
        check_grpo_config(grpo_config("rl.loss_agg=sum"))
    config = check_grpo_config(grpo_config("rl.steps_per_generation=2"))
    assert config.data.batch_size == 16 and config.data.seq_len == 64


@pytest.mark.slow
def test_lora_step_needs_less_memory_than_full_fine_tuning():
    # Rows few and weights many, as in any real run (activations of 32 rows of a 0.5M-parameter
    # model outweigh its weights and AdamW state, which is all LoRA saves).
    common = ("rl.beta=0.04", "rl.num_iterations=2", "rl.prompts_per_step=1", "rl.num_generations=2", "model.d_model=512", "model.d_ff=1536")

    def compiled(config):
        from llm.finetune.grpo import check_grpo_config

        config = check_grpo_config(config)
        setup = abstract_setup(config, jax.devices()[:1], partition_for_config(config))
        return setup, compile_step(setup)

    lora_setup, lora = compiled(grpo_config(*common))
    _, full = compiled(grpo_config("peft.lora_rank=0", *common))
    state_leaves = jax.tree_util.tree_leaves_with_path(lora_setup.state.params)
    assert state_leaves and all("lora_" in jax.tree_util.keystr(p) for p, _ in state_leaves)
    assert lora.total_bytes < full.total_bytes


@pytest.mark.slow
def test_lora_rollouts_reference_and_updates_read_the_same_base_arrays(policy, tmp_path, monkeypatch):
    """No base leaf is copied: the sampler, the adapters-off reference and the train step get
    the very frozen arrays the run holds."""
    from llm.finetune import rollouts
    from llm.finetune.grpo import run_grpo
    from llm.finetune.start import apply_init_from
    from llm.generate.generator import Generator

    seen: dict[str, list[set[int]]] = {"sampler": [], "reference": [], "train": []}
    ids = lambda tree: {id(x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if "lora" not in jax.tree_util.keystr(p)}  # noqa: E731

    generate = Generator.generate
    monkeypatch.setattr(Generator, "generate", lambda self, prompts, **kw: (seen["sampler"].append(ids(kw["params"])), generate(self, prompts, **kw))[1])
    device_values = rollouts.Rollouts.device_values
    monkeypatch.setattr(rollouts.Rollouts, "device_values", lambda self, setup, state, frozen, b: (seen["reference"].append(ids(frozen)), device_values(self, setup, state, frozen, b))[1])
    next_batch = rollouts.Rollouts.next_batch
    monkeypatch.setattr(rollouts.Rollouts, "next_batch", lambda self, setup, state, frozen: (seen["train"].append(ids(frozen)), next_batch(self, setup, state, frozen))[1])

    config = apply_init_from(load_config("configs/grpo_tiny.py", ["rl.beta=0.04", "train.steps=2", "train.eval_every=0",
                                                                  "train.measure_peak=false", "rl.eval_prompts=4"]), str(policy))
    run_grpo(config, tmp_path / "run")
    base = seen["train"][0]
    assert len(base) > 10
    assert all(s == base for s in seen["train"] + seen["reference"])
    assert all(base <= s for s in seen["sampler"])  # the sampler's tree adds the adapters and dropout leaves only


def _start(workdir: Path, policy: Path) -> subprocess.Popen:
    args = [*GRPO, "--workdir", str(workdir), "--init-from", str(policy), "--config.train.steps=8", "--config.train.log_every=1",
            "--config.train.eval_every=0", "--config.checkpoint.every_steps=3", "--config.rl.steps_per_generation=2"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, "-m", "llm.cli.main", "grpo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _losses(workdir: Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = (record["loss"], record["reward"])
    return out


@pytest.mark.slow
def test_kill_minus_9_mid_rollout_then_resume_equals_an_uninterrupted_run(policy, tmp_path):
    """Checkpoints at steps 3 and 6 fall between the two minibatches of a rollout, so the
    resumed run must also restore the untrained half from the data state."""
    reference = tmp_path / "reference"
    proc = _start(reference, policy)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
    expected = _losses(reference)
    assert sorted(expected) == list(range(1, 9))

    victim = tmp_path / "victim"
    proc = _start(victim, policy)
    deadline = time.time() + 600
    while not (victim / "checkpoints" / "3").is_dir() or max(_losses(victim) if (victim / "metrics.jsonl").exists() else [0]) < 5:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _start(victim, policy)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from" in output
    assert list((victim / "rollouts").glob("after_*.npz"))
    assert _losses(victim) == expected  # exact: same rollouts, same rewards, same updates


@pytest.mark.slow
def test_grpo_raises_the_held_out_reward_of_the_sft_policy(policy, tmp_path):
    workdir = tmp_path / "grpo"
    [(code, err)] = llm_session(["grpo", *GRPO, "--workdir", str(workdir), "--init-from", str(policy), "--config.train.eval_every=150"])
    assert code == 0, err[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["heldout_reward"] > summary["start_eval_reward"] + 0.03, summary
    assert (workdir / "reward.png").is_file() and (workdir / "samples.jsonl").read_text().count("\n") >= 4
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*records)
    for key in ("reward", "reward_std", "clip_ratio/region_mean", "rollout_time", "train_time", "sampler_logp_diff", "completions/clipped_ratio"):
        assert key in logged, key
