"""`llm bench checkpoint`: how long an async save blocks the training loop (target: under 10%
of one step) and how long a restore takes, on the config's real train state."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import ml_collections

from llm.bench.convert import directory_bytes
from llm.bench.train import timed_steps
from llm.checkpoint.manager import Checkpointer
from llm.config.loading import load_config
from llm.pytree import abstract_like


def run_checkpoint_bench(config: ml_collections.ConfigDict, steps: int) -> dict:
    """Time `steps` train steps, two async saves (the second is reported) and a restore."""
    setup, state, batch, metrics, elapsed = timed_steps(config, steps, warmup=1)
    step_time = elapsed / steps
    with tempfile.TemporaryDirectory() as tmp:
        config.checkpoint.async_save = True
        ckpt = Checkpointer(tmp, config)
        meta = {"config": json.loads(config.to_json_best_effort())}
        blocked = []
        for i in range(2):  # the first save also creates directories and warms Orbax up
            start = time.perf_counter()
            ckpt.save(i + 1, state, {"position": i}, meta)
            blocked.append(time.perf_counter() - start)
            # The loop keeps training while the save runs in the background.
            state, metrics = setup.train_step(state, batch, {})
            jax.block_until_ready(metrics["loss"])
            start_wait = time.perf_counter()
            ckpt.wait()
            background = time.perf_counter() - start_wait
        size = directory_bytes(Path(tmp) / "checkpoints" / "2")
        start = time.perf_counter()
        restored = Checkpointer(tmp, config).restore(abstract_like(state))
        jax.block_until_ready(restored[0])
        restore_time = time.perf_counter() - start
        ckpt.close()
    result = {
        "step_time": step_time,
        "save_blocked_s": blocked[-1],
        "save_blocked_fraction_of_step": blocked[-1] / step_time,
        "save_wait_after_one_step_s": background,
        "restore_s": restore_time,
        "checkpoint_bytes": size,
        "state_bytes": sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(state)),
        "machine": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
    }
    print(f"step {step_time * 1e3:.0f} ms; async save blocked the loop {blocked[-1] * 1e3:.0f} ms "
          f"({100 * result['save_blocked_fraction_of_step']:.1f}% of a step); restore {restore_time:.2f} s; "
          f"checkpoint {size / 2**20:.0f} MiB")
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["checkpoint"])."""
    return run_checkpoint_bench(load_config(args.config, args.config_overrides), args.steps)
