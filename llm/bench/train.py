"""`llm bench [train]`: our train step's tokens/s, step time, MFU and peak memory, with the
Hugging Face peer measured in the same run on the same shape.

Each side records what it really ran (parameter count, batch shape, tokens processed), so a
reader and the tests can check that both sides measured the same work."""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import time
from typing import Callable

import jax
import jax.numpy as jnp
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


def prepared(config: ml_collections.ConfigDict, warmup: int):
    """(setup, state, batch, metrics) after `warmup` compiled steps on one synthetic batch, so
    only the train step is timed after it."""
    setup, state = build_setup(config)
    batch = setup.shard_batch(synthetic_batch(setup.spec.vocab_size, config.data.batch_size, config.data.seq_len))
    for _ in range(warmup):
        state, metrics = setup.train_step(state, batch, {})
    jax.block_until_ready(metrics["loss"])
    return setup, state, batch, metrics


def timed_steps(config: ml_collections.ConfigDict, steps: int, warmup: int = 2):
    """(setup, state, batch, metrics, seconds for `steps` steps after `warmup` compiled ones) on
    one synthetic batch, so only the train step is timed."""
    setup, state, batch, metrics = prepared(config, warmup)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = setup.train_step(state, batch, {})
    jax.block_until_ready(metrics["loss"])
    return setup, state, batch, metrics, time.perf_counter() - start


def bench_train(config: ml_collections.ConfigDict, steps: int, warmup: int = 2) -> dict:
    """Our side: the figures, and the shape, parameter count and tokens it really ran."""
    return bench_configs([config], steps, warmup)[0]


def alternate(steps_by_name: dict[str, Callable[[], None]], steps: int) -> dict[str, float]:
    """{name: mean seconds per step} of `steps` steps of each, taking turns one step at a time so
    that load from other processes hits each alike."""
    total = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            total[name] += time.perf_counter() - start
    return {name: seconds / steps for name, seconds in total.items()}


def bench_configs(
    configs: list[ml_collections.ConfigDict], steps: int, warmup: int = 2,
    time_steps: Callable[[dict[str, Callable[[], None]]], dict[str, float]] | None = None,
    profile: str | None = None,
) -> list[dict]:
    """bench_train of each config (our precisions), their timed steps taking turns (alternate, or
    `time_steps`, which also runs the peer's in between). Peak memory is the first one's, taken
    before anything else is built. With `profile` (a directory), the first config's step is
    then traced (profile_step) and the figures gain its op table."""
    runs, memories = [], []
    for i, config in enumerate(configs):
        runs.append(list(prepared(config, warmup)))
        memories.append(peak_memory_bytes() if i == 0 else (None, f"not measured (after {configs[0].precision.compute}'s run)"))

    def one_step(run: list) -> Callable[[], None]:
        def step() -> None:
            run[1], run[3] = run[0].train_step(run[1], run[2], {})
            jax.block_until_ready(run[3]["loss"])
        return step

    fns = {f"ours/{i}": one_step(run) for i, run in enumerate(runs)}
    step_times = time_steps(fns) if time_steps is not None else alternate(fns, steps)
    profiled = None
    if profile:
        from llm.bench.profile import profile_step

        setup, state, batch = runs[0][:3]
        profiled = profile_step(fns["ours/0"], lambda: setup.train_step.lower(state, batch, {}).compile().as_text(),
                                profile, min(steps, 3))
    elapsed = [step_times[f"ours/{i}"] * steps for i in range(len(runs))]
    peak, peak_source = device_peak_flops()
    out = []
    for (setup, state, batch, metrics), seconds, (memory, memory_source) in zip(runs, elapsed, memories):
        spec = setup.spec
        batch_size, seq_len = batch["inputs"].shape
        tokens = steps * batch["inputs"].size
        fpt = flops_per_token(spec, seq_len)
        tokens_per_s = tokens / seconds
        out.append({
            "batch_shape": [batch_size, seq_len],
            "params": params_as_hf_counts(spec, state.params),
            "tokens": tokens,
            "tokens_per_s": tokens_per_s,
            "step_time": seconds / steps,
            "mfu": tokens_per_s * fpt / (peak * jax.device_count()) if peak else None,
            "model_flops_per_token": fpt,
            "peak_flops": peak,
            "peak_source": peak_source,
            "peak_memory_bytes": memory,
            "peak_memory_source": memory_source,
            "loss": float(metrics["loss"]),
            "compute_dtype": jnp.dtype(spec.compute_dtype).name,
        })
    if profiled:
        out[0]["profile"] = profiled
    return out


def precisions_to_measure(config: ml_collections.ConfigDict, vs_hf: bool) -> tuple[str, ...]:
    """Our compute precisions to time: the config's own, and under `auto` with --vs-hf the other
    one too (one more compile and run; the plain bench stays one measurement)."""
    if config.precision.compute != "auto" or not vs_hf:
        return (config.precision.compute,)
    return ("auto", *(p for p in ("float32", "bfloat16") if p != _auto_name()))


def _auto_name(platform: str | None = None) -> str:
    from llm.model.spec import resolve_compute_dtype

    return jnp.dtype(resolve_compute_dtype("auto", platform)).name


def _print_ours(label: str, r: dict) -> None:
    print(f"{label:<5} {r['tokens_per_s']:.0f} tokens/s, {r['step_time'] * 1e3:.1f} ms/step, "
          f"MFU {100 * (r['mfu'] or 0):.1f}% ({r['peak_source']}), "
          + (f"peak memory {r['peak_memory_bytes'] / 2**20:.0f} MiB, " if r["peak_memory_bytes"] is not None else "")
          + f"compute {r['compute_dtype']}")


def run_train_bench(config: ml_collections.ConfigDict, steps: int, vs_hf: bool, profile: str | None = None) -> dict:
    """Measure and print our train step (and the HF peer's); returns the figures.

    The top-level figures are the config's precision (under `auto`, what it resolves to here);
    with `auto` and vs_hf, by_precision holds float32 and bfloat16 both. speedup_vs_hf is ours
    over the peer's faster mode (speedup_vs_hf_by_mode: over each). With the peer, our timed
    steps take turns with its timed steps, so both sides see the same load."""
    result = {
        "config": {"family": config.model.family, "d_model": config.model.d_model, "n_layers": config.model.n_layers,
                   "batch_size": config.data.batch_size, "seq_len": config.data.seq_len, "vocab_size": config.model.vocab_size},
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}",
    }
    configs = []
    for precision in precisions_to_measure(config, vs_hf):
        configs.append(copy.deepcopy(config))
        configs[-1].precision.compute = precision
    hf: dict = {}

    def with_peer(ours: dict[str, Callable[[], None]]) -> dict[str, float]:
        """Our steps take turns with the peer's (hf_peer.time_modes)."""
        from llm.bench.hf_peer import bench_hf_train

        step_times: dict[str, float] = {}
        precision = {f"ours/{i}": _auto_name() if c.precision.compute == "auto" else c.precision.compute for i, c in enumerate(configs)}
        hf.update(bench_hf_train(config, config.data.batch_size, config.data.seq_len, steps, also=ours, also_step_time=step_times,
                                 also_modes=precision))
        return step_times

    runs = bench_configs(configs, steps, time_steps=with_peer if vs_hf else None, profile=profile)
    by_precision = {figures["compute_dtype"]: figures for figures in runs}
    for i, figures in enumerate(by_precision.values()):
        if i == 0:  # the config's own precision
            result.update(figures)
            _print_ours("llm:", figures)
        else:
            _print_ours(f"llm {figures['compute_dtype']}:", figures)
    result["compute_config"] = config.precision.compute
    if len(by_precision) > 1:
        result["by_precision"] = {name: {k: f[k] for k in ("tokens_per_s", "step_time", "mfu", "loss")} for name, f in by_precision.items()}
    if config.precision.compute == "auto" and jax.default_backend() == "cpu":
        from llm.cpu.precision import cpu_compute_choice

        result["auto_compute"] = f"{result['compute_dtype']}: {cpu_compute_choice().reason}"
        print(f"auto compute on this CPU: {result['auto_compute']}")
    if vs_hf:
        from llm.bench.hf_peer import MODE_LABELS, check_same_model

        check_same_model(result["params"], hf["hf_params"], "this config")
        result.update(hf)
        result["speedup_vs_hf"] = result["tokens_per_s"] / hf["hf_tokens_per_s"]
        result["speedup_vs_hf_by_mode"] = {m: result["tokens_per_s"] / f["tokens_per_s"] for m, f in hf["hf_by_mode"].items()}
        for mode in sorted(hf["hf_by_mode"], key=lambda m: m != hf["hf_mode"]):
            f = hf["hf_by_mode"][mode]
            label = "hf:" if mode == hf["hf_mode"] else f"hf {mode}:"
            print(f"{label:<5} {f['tokens_per_s']:.0f} tokens/s, {f['step_time'] * 1e3:.1f} ms/step "
                  f"(transformers {hf['hf_transformers']} {hf['hf_model']}, {hf['hf_attention']} attention, "
                  f"torch {hf['hf_torch']}, {MODE_LABELS[mode]}, {f['threads']} threads)")
        others = ", ".join(f"{v:.2f}x vs hf {m}" for m, v in result["speedup_vs_hf_by_mode"].items() if m != hf["hf_mode"])
        print(f"speedup vs hf: {result['speedup_vs_hf']:.2f}x (ours {result['compute_dtype']} vs hf {hf['hf_dtype']}, "
              f"its faster mode{'; ' + others if others else ''})")
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["train"])."""
    return run_train_bench(load_config(args.config, args.config_overrides), args.steps, args.vs_hf, args.profile)
