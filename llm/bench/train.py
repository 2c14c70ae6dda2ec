"""`llm bench [train]`: our train step's tokens/s, step time, MFU and peak memory, with the
Hugging Face peer measured in the same run on the same shape.

Each side records what it really ran (parameter count, batch shape, tokens processed), so a
reader and the tests can check that both sides measured the same work."""

from __future__ import annotations

import argparse
import platform
import resource
import time

import jax
import ml_collections
import numpy as np

from llm.bench.hf_peer import params_as_hf_counts
from llm.config.loading import load_config
from llm.train.flops import device_peak_flops, flops_per_token
from llm.train.setup import build_setup


def synthetic_batch(vocab: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": np.ones((batch, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
        "loss_mask": np.ones((batch, seq_len), np.float32),
    }


def peak_memory_bytes() -> tuple[int, str]:
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS (CPU)"


def timed_steps(config: ml_collections.ConfigDict, steps: int, warmup: int = 2):
    """(setup, state, batch, metrics, seconds for `steps` steps after `warmup` compiled ones) on
    one synthetic batch, so only the train step is timed."""
    setup, state = build_setup(config)
    batch = setup.shard_batch(synthetic_batch(setup.spec.vocab_size, config.data.batch_size, config.data.seq_len))
    for _ in range(warmup):
        state, metrics = setup.train_step(state, batch, {})
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = setup.train_step(state, batch, {})
    jax.block_until_ready(metrics["loss"])
    return setup, state, batch, metrics, time.perf_counter() - start


def bench_train(config: ml_collections.ConfigDict, steps: int, warmup: int = 2) -> dict:
    """Our side: the figures, and the shape, parameter count and tokens it really ran."""
    setup, state, batch, metrics, elapsed = timed_steps(config, steps, warmup)
    spec = setup.spec
    batch_size, seq_len = batch["inputs"].shape
    memory, memory_source = peak_memory_bytes()
    peak, peak_source = device_peak_flops()
    tokens = steps * batch["inputs"].size
    fpt = flops_per_token(spec, seq_len)
    tokens_per_s = tokens / elapsed
    return {
        "batch_shape": [batch_size, seq_len],
        "params": params_as_hf_counts(spec, state.params),
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "step_time": elapsed / steps,
        "mfu": tokens_per_s * fpt / (peak * jax.device_count()) if peak else None,
        "model_flops_per_token": fpt,
        "peak_flops": peak,
        "peak_source": peak_source,
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "loss": float(metrics["loss"]),
    }


def run_train_bench(config: ml_collections.ConfigDict, steps: int, vs_hf: bool) -> dict:
    """Measure and print our train step (and the HF peer's); returns the figures."""
    result = {
        "config": {"family": config.model.family, "d_model": config.model.d_model, "n_layers": config.model.n_layers,
                   "batch_size": config.data.batch_size, "seq_len": config.data.seq_len, "vocab_size": config.model.vocab_size},
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}",
    }
    result.update(bench_train(config, steps))
    print(f"llm:  {result['tokens_per_s']:.0f} tokens/s, {result['step_time'] * 1e3:.1f} ms/step, "
          f"MFU {100 * (result['mfu'] or 0):.1f}% ({result['peak_source']}), peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB")
    if vs_hf:
        from llm.bench.hf_peer import bench_hf_train, check_same_model

        hf = bench_hf_train(config, config.data.batch_size, config.data.seq_len, steps)
        check_same_model(result["params"], hf["hf_params"], "this config")
        result.update(hf)
        result["speedup_vs_hf"] = result["tokens_per_s"] / hf["hf_tokens_per_s"]
        print(f"hf:   {hf['hf_tokens_per_s']:.0f} tokens/s, {hf['hf_step_time'] * 1e3:.1f} ms/step "
              f"(transformers {hf['hf_transformers']} {hf['hf_model']}, {hf['hf_attention']} attention, "
              f"torch {hf['hf_torch']}, {hf['hf_dtype']}, {hf['hf_threads']} threads)")
        print(f"speedup vs hf: {result['speedup_vs_hf']:.2f}x")
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["train"])."""
    return run_train_bench(load_config(args.config, args.config_overrides), args.steps, args.vs_hf)
