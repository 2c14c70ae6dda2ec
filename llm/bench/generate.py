"""`llm bench generate`: decode throughput of our sampler, side by side with Hugging Face
`generate` (PyTorch, f32 on CPU) running the same exported weights in the same process.

Decode tokens/s = batch * (N - 1) / (time the last new token reaches the host - time the first
one does): the prefill is excluded, so the figure is the cost of the cached decode loop alone
(ours: the streaming callback after the prefill and after the single decode loop; Hugging Face:
a streamer's timestamps). Hugging Face runs in f32 and under bf16 autocast (its fastest CPU
mode depends on the machine: bf16 on one with AMX, f32 where bf16 has no matrix engine), each at
every candidate torch thread count; the fastest of all is the one compared against, and both
modes are reported. Under `precision.compute=auto` with the peer, ours runs in f32 and bf16 too
(the top-level figures are what `auto` resolves to). Both sides decode greedily with no stop
token, from the same random prompts, and take the best of a few repeats, alternating between all
runners so that load from other processes on a shared machine hits every side alike (an HF
thread count far behind at its warm-up, or running past HOPELESS times its mode's best run, is
stopped and not timed further: spin-waiting OpenMP workers on a busy machine can make one decode
take minutes). The greedy tokens of ours in f32
(the config's precision, or under `auto` its f32 run) and of HF in f32 are compared, which also
proves the weights really are the same (bf16 roundings flip near-ties). The batch-1 figure is set
against the memory roofline: every decode step reads all the weights once, so at batch 1 the
best possible rate is measured bandwidth / weight bytes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm.bench.hf_peer import HOPELESS, check_same_model, cpu_modes, params_as_hf_counts, thread_candidates, torch_bf16_slowdown
from llm.config.loading import load_config
from llm.errors import UserError
from llm.parallel.accelerators import hbm_bandwidth
from llm.generate.generator import Generator
from llm.model.build import init_params
from llm.model.spec import ModelSpec, model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

log = logging.getLogger("llm")

PROMPT_LEN = 64
NEW_TOKENS = 128
BATCHES = (1, 16)


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` runs of fn (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class TooSlow(Exception):
    """Raised by a runner's streamer when its run passes its deadline (see interleaved)."""


class Stamps(list):
    """The timestamps a run appends, and the perf_counter time by which it must end (None: no
    limit); HF's streamer raises TooSlow past it, ours ignore it."""

    deadline: float | None = None


def timed(run: Callable[[list[float]], Any], budget_s: float | None = None) -> tuple[float, float, Any] | None:
    """(decode seconds, total seconds, output) of one call of run(stamps), or None when it ran
    past `budget_s` seconds and was stopped.

    run appends a timestamp when the first new token is on the host and another when the last
    one is: their difference is the decode loop (N - 1 tokens per row), prefill excluded.
    """
    stamps = Stamps()
    start = time.perf_counter()
    stamps.deadline = None if budget_s is None else start + budget_s
    try:
        out = run(stamps)
    except TooSlow:
        return None
    total = time.perf_counter() - start
    return stamps[-1] - stamps[0], total, out


WARMUP_TOKENS = 9


def interleaved(
    runs: dict[Any, Callable[[list[float]], Any]],
    repeats: int,
    skip: Callable[[Any, dict], bool] | None = None,
    budget: Callable[[Any, dict], float | None] | None = None,
    stopped: set | None = None,
) -> dict[Any, tuple[float, float, Any]]:
    """Best decode and total time of each runner, alternating between them every repeat so a
    change in machine load hits both sides alike. skip(name, best so far) leaves a runner out
    of a repeat; budget(name, best so far) limits a run's seconds: one that runs past it is
    stopped, added to `stopped` and not run again."""
    best: dict[Any, tuple[float, float, Any]] = {}
    stopped = set() if stopped is None else stopped
    for _ in range(repeats):
        for name, run in runs.items():
            if name in stopped or (skip is not None and skip(name, best)):
                continue
            figures = timed(run, budget(name, best) if budget is not None else None)
            if figures is None:
                stopped.add(name)
                continue
            decode_s, total_s, out = figures
            if name not in best:
                best[name] = (decode_s, total_s, out)
            else:
                best[name] = (min(decode_s, best[name][0]), min(total_s, best[name][1]), out)
    return best


def _hf_budget(name: Any, best: dict) -> float | None:
    """An HF run may take HOPELESS times its mode's fastest run so far (no limit before one)."""
    if name[0] != "hf":
        return None
    same = [v[1] for k, v in best.items() if k[:2] == name[:2]]
    return HOPELESS * min(same) if same else None


def _hopeless(name: Any, best: dict) -> bool:
    """An HF (mode, thread count) already 3x slower than another one is left out of later
    repeats: on an oversubscribed machine OpenMP threads that spin-wait can make one run take
    minutes (and PyTorch's bf16 without a matrix engine is many times slower than its f32), and
    a runner that far behind is not going to be the fastest."""
    hf = [v[0] for k, v in best.items() if k[0] == "hf"]
    return name[0] == "hf" and name in best and best[name][0] > HOPELESS * min(hf)


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s, from a jitted sum over a large f32 array (read once)."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    return x.nbytes / best_time(lambda: total(x).block_until_ready(), repeats)


def weight_bytes(params: Any, dtype) -> int:
    """Bytes one decode step reads: every weight once, in the dtype the matmuls use. The embedding
    table is only gathered (a row per token), unless it doubles as the LM head."""
    size = sum(x.size for x in jax.tree_util.tree_leaves(params))
    if "head" in params:
        size -= params["embed"].size
    return size * jnp.dtype(dtype).itemsize


def _our_runner(generator: Generator, prompts: list[list[int]], new_tokens: int) -> tuple[Callable, float]:
    """(run(stamps), seconds of the first, compiling call). Streaming with one chunk as long as
    the whole decode: on_chunk fires after the prefill and after the single decode loop."""

    def run(stamps: list[float]):
        out = generator.generate(
            prompts, max_new_tokens=new_tokens, on_chunk=lambda _: stamps.append(time.perf_counter()),
            chunk_tokens=new_tokens,
        )
        return [c.tokens for c in out]

    start = time.perf_counter()
    run([])
    return run, time.perf_counter() - start


def _hf_model(config: ml_collections.ConfigDict, params: Any):
    """Export our params with llm.interop and load them with transformers (f32 weights, eval
    mode; its bf16 mode runs them under autocast, as a user would)."""
    import torch
    import transformers

    from llm.interop.hf_export import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(config, params, Path(tmp) / "hf", dtype="float32")
        model = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
    model.eval()
    return model


class _Stamps:
    """A transformers streamer that only records when each step's tokens reach the host (the
    first put is the prompt, before the prefill)."""

    def __init__(self, stamps: list[float]):
        self.stamps = stamps
        self.puts = 0
        self.deadline = getattr(stamps, "deadline", None)

    def put(self, value) -> None:
        self.puts += 1
        now = time.perf_counter()
        if self.puts > 1:
            self.stamps.append(now)
        if self.deadline is not None and now > self.deadline:
            raise TooSlow

    def end(self) -> None:
        pass


def _hf_runners(model, prompts: list[list[int]], new_tokens: int, modes: dict[str, bool]) -> tuple[dict, dict]:
    """({(mode, torch threads): run(stamps)}, {(mode, threads): warm-up decode tokens/s}): HF
    `generate` in each of `modes` (hf_peer.cpu_modes: f32, bf16 autocast) at each candidate thread
    count, each warmed up with a short timed decode. Every one not far behind at the warm-up
    (behind_at_warmup) is timed in the interleaved repeats and the fastest reported. (A short
    probe that picks the count once is not enough on a shared machine: two threads can win the
    probe and then run ten times slower than one when another process starts.)"""
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)  # equal lengths: no padding needed

    def runner(autocast: bool, threads: int) -> Callable:
        def run(stamps: list[float], n: int = new_tokens):
            torch.set_num_threads(threads)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                    eos_token_id=None,
                    pad_token_id=0,
                    streamer=_Stamps(stamps),
                )
            return out[:, ids.shape[1] :].tolist()

        return run

    runs = {(mode, threads): runner(autocast, threads)
            for mode, autocast in modes.items() for threads in sorted(thread_candidates(), reverse=True)}
    warm, n = {}, min(new_tokens, WARMUP_TOKENS)
    for key, run in runs.items():  # warm-up in this mode at this thread count, then a short timed decode
        run([], 2)
        stamps: list[float] = []
        run(stamps, n)
        warm[key] = len(prompts) * (n - 1) / max(stamps[-1] - stamps[0], 1e-9)
    return runs, warm


def behind_at_warmup(warm: dict[tuple[str, int], float]) -> set[tuple[str, int]]:
    """The (mode, threads) whose warm-up rate is under 1/HOPELESS of the best of their mode: not
    timed further (on an oversubscribed machine spin-waiting OpenMP workers can make a full
    decode take minutes). A mode's best count always stays (its greedy tokens are compared)."""
    best = {}
    for (mode, _), rate in warm.items():
        best[mode] = max(best.get(mode, 0.0), rate)
    return {key for key, rate in warm.items() if rate * HOPELESS < best[key[0]]}


def hf_figures(best: dict, batch: int, new_tokens: int, warm: dict | None = None) -> dict:
    """The peer's figures for one batch from the interleaved bests {("hf", mode, threads): (decode
    s, total s, tokens)}: each mode's best thread count and rate, and the fastest mode (and each
    count's warm-up rate from `warm` {(mode, threads): tokens/s}, timed or not)."""
    rate = lambda name: batch * (new_tokens - 1) / best[name][0]
    by_mode: dict[str, dict] = {}
    for mode in sorted({name[1] for name in best}):
        by_threads = {name[2]: rate(name) for name in best if name[:2] == ("hf", mode)}
        threads = max(by_threads, key=by_threads.get)
        by_mode[mode] = {"tokens_per_s": by_threads[threads], "threads": threads,
                         "tokens_per_s_by_threads": {str(t): v for t, v in by_threads.items()},
                         "decode_s": best[("hf", mode, threads)][0], "total_s": best[("hf", mode, threads)][1],
                         "tokens": best[("hf", mode, threads)][2]}
        if warm:
            by_mode[mode]["warmup_tokens_per_s_by_threads"] = {str(t): v for (m, t), v in warm.items() if m == mode}
    fastest = max(by_mode, key=lambda m: by_mode[m]["tokens_per_s"])
    return {"mode": fastest, "by_mode": by_mode}


def hf_cache_layers(model, prompt: list[int]) -> dict[str, int]:
    """{cache layer class: layers} of the KV cache HF `generate` builds for this model by default
    (transformers 5: a sliding-window layer for each windowed layer of Gemma / Mistral / Qwen)."""
    import torch

    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                             eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
    kinds: dict[str, int] = {}
    for layer in out.past_key_values.layers:
        kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
    return kinds


def _agreement(ours: list[list[int]], theirs: list[list[int]]) -> float:
    """Mean fraction of each row's tokens that match before the first difference."""
    fractions = []
    for a, b in zip(ours, theirs):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        fractions.append(same / max(len(a), 1))
    return float(np.mean(fractions))


def build_model(config: ml_collections.ConfigDict, seed: int = 0) -> tuple[ModelSpec, Any, Any]:
    """A randomly initialised model on the config's mesh: (spec, graphdef, params)."""
    mesh = build_mesh(config.mesh)
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    spec = model_spec(config, vocab_shards=rules.shards("vocab"))
    graphdef, params, _ = init_params(spec, rules, seed)
    return spec, graphdef, params


def other_precision(config: ml_collections.ConfigDict, vs_hf: bool, auto_dtype: str) -> str | None:
    """The compute precision ours also runs in: under `auto` with the peer, the one `auto` did
    not pick (None otherwise: the plain bench is one model)."""
    if config.precision.compute != "auto" or not vs_hf:
        return None
    return "bfloat16" if auto_dtype == "float32" else "float32"


def run_generate_bench(
    config: ml_collections.ConfigDict,
    vs_hf: bool,
    *,
    prompt_len: int = PROMPT_LEN,
    new_tokens: int = NEW_TOKENS,
    batches: tuple[int, ...] = BATCHES,
    repeats: int = 3,
    bandwidth_mb: int = 512,
) -> dict:
    """Measure and print the figures; returns them.

    Top-level keys tokens_per_s / hf_tokens_per_s / speedup_vs_hf are for the largest batch,
    `*_b<batch>` keys for every batch; hf_* figures are the peer's fastest mode (hf_mode_b<batch>),
    hf_by_mode_b<batch> holds both; ours_by_precision_b<batch> ours in f32 and bf16 (under `auto`).
    """
    if prompt_len + new_tokens > config.model.max_seq_len:
        new_tokens = config.model.max_seq_len - prompt_len
    spec, graphdef, params = build_model(config)
    generator = Generator(graphdef, params)
    compute = jnp.dtype(spec.compute_dtype).name
    generators = {compute: generator}
    other = other_precision(config, vs_hf, compute)
    if other is not None:
        other_config = copy.deepcopy(config)
        other_config.precision.compute = other
        _, other_graphdef, other_params = build_model(other_config)
        generators[other] = Generator(other_graphdef, other_params)
    hf_model = _hf_model(config, params) if vs_hf else None
    rng = np.random.default_rng(0)
    result: dict = {
        "config": {"family": spec.family, "d_model": spec.d_model, "n_layers": spec.n_layers, "vocab": spec.vocab_size},
        "params": params_as_hf_counts(spec, params),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "compute_dtype": compute,
        "compute_config": config.precision.compute,
        "decode": "greedy, no stop token; tokens/s of the decode loop (prefill subtracted)",
    }
    if config.precision.compute == "auto" and jax.default_backend() == "cpu":
        from llm.cpu.precision import cpu_compute_choice

        result["auto_compute"] = f"{compute}: {cpu_compute_choice().reason}"
    if hf_model is not None:
        result["hf_params"] = sum(p.numel() for p in hf_model.parameters())
        check_same_model(result["params"], result["hf_params"], "this config")
        result["hf_model"] = type(hf_model).__name__
        result["hf_attention"] = hf_model.config._attn_implementation
        result["hf_cache"] = hf_cache_layers(hf_model, list(range(prompt_len)))
        result["hf_bf16_matmul_slowdown"] = torch_bf16_slowdown()
        hf_modes, result["hf_skipped_modes"] = cpu_modes(result["hf_bf16_matmul_slowdown"])
    for batch in batches:
        prompts = rng.integers(0, spec.vocab_size, (batch, prompt_len)).tolist()
        runs, first_calls = {}, {}
        for precision, gen in generators.items():
            name = "ours" if precision == compute else ("ours", precision)
            runs[name], first_calls[precision] = _our_runner(gen, prompts, new_tokens)
        warm: dict = {}
        behind: set = set()
        if hf_model is not None:
            hf_runs, warm = _hf_runners(hf_model, prompts, new_tokens, hf_modes)
            behind = behind_at_warmup(warm)
            # Fastest at the warm-up first: it sets the budget of the others in its mode.
            runs.update({("hf", *key): hf_runs[key] for key in sorted(hf_runs, key=lambda k: -warm[k])})
        skip = lambda name, best: name[0] == "hf" and (tuple(name[1:]) in behind or _hopeless(name, best))
        stopped: set = set()
        best = interleaved(runs, repeats, skip=skip, budget=_hf_budget, stopped=stopped)
        rate = lambda name: batch * (new_tokens - 1) / best[name][0]
        decode_s, total_s, ours = best["ours"]
        result[f"decode_s_b{batch}"] = decode_s
        result[f"tokens_b{batch}"] = sum(len(row) for row in ours)  # new tokens ours really produced
        result[f"tokens_per_s_b{batch}"] = rate("ours")
        result[f"e2e_tokens_per_s_b{batch}"] = batch * new_tokens / total_s
        result[f"first_call_s_b{batch}"] = first_calls[compute]
        if other is not None:
            result[f"ours_by_precision_b{batch}"] = {
                precision: {"tokens_per_s": rate("ours" if precision == compute else ("ours", precision)),
                            "first_call_s": first_calls[precision]}
                for precision in generators
            }
        if hf_model is not None:
            hf = hf_figures({k: v for k, v in best.items() if k[0] == "hf"}, batch, new_tokens, warm)
            left_out = {mode: sorted(t for (m, t) in behind | {k[1:] for k in stopped} if m == mode) for mode in hf["by_mode"]}
            fast = hf["by_mode"][hf["mode"]]
            result[f"hf_mode_b{batch}"] = hf["mode"]
            result[f"hf_threads_b{batch}"] = fast["threads"]
            result[f"hf_decode_s_b{batch}"] = fast["decode_s"]
            result[f"hf_tokens_b{batch}"] = sum(len(row) for row in fast["tokens"])
            result[f"hf_tokens_per_s_by_threads_b{batch}"] = fast["tokens_per_s_by_threads"]
            result[f"hf_tokens_per_s_b{batch}"] = fast["tokens_per_s"]
            result[f"hf_e2e_tokens_per_s_b{batch}"] = batch * new_tokens / fast["total_s"]
            result[f"speedup_vs_hf_b{batch}"] = result[f"tokens_per_s_b{batch}"] / fast["tokens_per_s"]
            result[f"hf_by_mode_b{batch}"] = {
                mode: {"tokens_per_s": f["tokens_per_s"], "threads": f["threads"],
                       "tokens_per_s_by_threads": f["tokens_per_s_by_threads"],
                       "warmup_tokens_per_s_by_threads": f["warmup_tokens_per_s_by_threads"],
                       "threads_not_timed": left_out[mode],  # far behind at the warm-up, or stopped past HOPELESS x the best
                       "speedup": result[f"tokens_per_s_b{batch}"] / f["tokens_per_s"],
                       "greedy_agreement": _agreement(ours, f["tokens"])}
                for mode, f in hf["by_mode"].items()
            }
            # Ours in f32 (the config's precision, or its f32 run under `auto`) against HF's f32
            # decode: the same weights give the same greedy tokens in f32.
            ours_f32 = ours if compute == "float32" or "float32" not in generators else best[("ours", "float32")][2]
            result[f"greedy_agreement_with_hf_b{batch}"] = _agreement(ours_f32, hf["by_mode"]["float32"]["tokens"])
        log.info("batch %d: %.1f decode tokens/s", batch, result[f"tokens_per_s_b{batch}"])
    top = max(batches)
    result["batch"] = top
    result["tokens_per_s"] = result[f"tokens_per_s_b{top}"]
    if hf_model is not None:
        result["hf_mode"] = result[f"hf_mode_b{top}"]
        result["hf_tokens_per_s"] = result[f"hf_tokens_per_s_b{top}"]
        result["speedup_vs_hf"] = result[f"speedup_vs_hf_b{top}"]
    if 1 in batches:
        bandwidth = measure_bandwidth(bandwidth_mb)
        bytes_per_step = weight_bytes(params, spec.compute_dtype)
        result["bandwidth_gb_s"] = bandwidth / 1e9
        result["weight_bytes_per_step"] = bytes_per_step
        result["roofline_tokens_per_s_b1"] = bandwidth / bytes_per_step
        result["roofline_fraction_b1"] = result["tokens_per_s_b1"] / result["roofline_tokens_per_s_b1"]
        sheet = hbm_bandwidth(jax.devices()[0].device_kind)  # the roofline on a GPU / TPU
        if sheet:
            result["datasheet_bandwidth_gb_s"] = sheet / 1e9
            result["datasheet_roofline_fraction_b1"] = result["tokens_per_s_b1"] * bytes_per_step / sheet
    print(json.dumps(result, indent=2))
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["generate"])."""
    try:
        batches = tuple(int(b) for b in str(args.batches).split(",") if b.strip()) if args.batches else BATCHES
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise UserError(f"--batches {args.batches!r} is not a list of positive batch sizes; write e.g. 1,64")
    return run_generate_bench(load_config(args.config, args.config_overrides), args.vs_hf, batches=batches)
