"""Timing on a CPU whose cores other processes share: by the process's CPU time, not the clock.

Time-slicing with neighbours stretches the wall clock of a step and of a peak-matmul probe by
different amounts (the probe takes a fraction of a second, the step many), so wall-clock MFU
on a shared machine measures the neighbours. The CPU time our threads actually ran does not
depend on them: a step that takes C CPU-seconds takes C / cores seconds on the machine alone,
and a matmul of F FLOPs in C CPU-seconds runs at F / C FLOP/s per core. Both the MFU table's
cpu rows and the validation are measured this way; the peak `llm plan` uses for `cpu` is the same
probe times the cores, what the machine gives one process when nothing else runs.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections


MIN_TIMED_S = 2.0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's peak FLOP/s for one process: the best per-core rate of an f32 matmul (by
    CPU time) times the cores."""
    from llm.train.flops import measure_matmul_peak

    with jax.default_device(jax.devices("cpu")[0]):
        return measure_matmul_peak(jnp.float32, size, repeats, clock=time.process_time) * cores()


@dataclasses.dataclass(frozen=True)
class StepMeasurement:
    wall_s: float  # per step, as the clock saw it (neighbours included)
    alone_s: float  # per step, the process's CPU time / cores: the step on the machine alone
    memory_bytes: int  # the compiled step's buffers (as cost.json's peak_memory_bytes)
    model_flops: float  # per step, all devices (the DESIGN.md formula, frozen weights without weight gradients)


def measure_steps(config: ml_collections.ConfigDict, steps: int) -> StepMeasurement:
    """Build the run `llm sft` / `llm train` would (one device), compile, then time `steps`
    steps on one synthetic batch after one untimed step."""
    from llm.bench.train import synthetic_batch
    from llm.compile.analysis import compiled_figures
    from llm.finetune.cost import step_flops_per_token
    from llm.finetune.tasks import is_partitioned, partition_for_config
    from llm.train.flops import flops_per_token
    from llm.train.setup import build_partitioned_setup, build_setup

    devices = jax.devices("cpu")[:1]
    if is_partitioned(config):
        setup, state, frozen = build_partitioned_setup(config, partition_for_config(config), devices)
        per_token = step_flops_per_token(config, setup.spec, state.params, frozen)
    else:
        (setup, state), frozen = build_setup(config, devices=devices), {}
        per_token = flops_per_token(setup.spec, config.data.seq_len)
    batch = setup.shard_batch(synthetic_batch(setup.spec.vocab_size, config.data.batch_size, config.data.seq_len))
    step = setup.train_step.lower(state, batch, frozen).compile()  # compiled once: timed and analysed
    figures = compiled_figures(step)
    memory = max(figures.peak_bytes or 0, figures.total_bytes)  # as cost.json's peak_memory_bytes
    state, metrics = step(state, batch, frozen)
    jax.block_until_ready(metrics["loss"])
    # At least `steps` steps and at least MIN_TIMED_S of them: a few tens-of-ms steps (tiny) are
    # otherwise dominated by the timer's and the dispatcher's noise.
    wall, cpu, done = time.perf_counter(), time.process_time(), 0
    while done < steps or time.perf_counter() - wall < MIN_TIMED_S:
        state, metrics = step(state, batch, frozen)
        jax.block_until_ready(metrics["loss"])
        done += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return StepMeasurement(wall / done, cpu / done / cores(), memory, per_token * config.data.batch_size * config.data.seq_len)
