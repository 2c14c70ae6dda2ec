"""The peer we compare speed against: Hugging Face transformers on PyTorch, same model shape,
batch and optimizer, in its fastest mode. On a CPU that depends on the machine (f32 on one
without a bf16 matrix engine, where PyTorch's bf16 is many times slower; bf16 autocast on one
with AMX, where it is several times faster), so both modes run, each at its best torch thread
count, and the faster is the one compared against; a GPU runs bf16 autocast."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import ml_collections

from llm.errors import UserError
from llm.model.spec import ModelSpec


def params_as_hf_counts(spec: ModelSpec, params: Any) -> int:
    """Our parameter count without the vocabulary padding (rows the tokenizer never uses), which
    the transformers model does not have: equal to its count when both are the same model."""
    total = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    return total - (spec.padded_vocab - spec.vocab_size) * spec.d_model * (1 if spec.tie_embeddings else 2)


def hf_config(config: ml_collections.ConfigDict):
    """The transformers config of the same model as `config`'s, of the family that expresses it
    exactly (Llama, Mistral, Qwen2/3, Gemma 2/3, GPT-2): the config.json our exporter writes
    (llm.interop.hf_config.config_to_hf, the one home of the field mapping), loaded by transformers."""
    import transformers

    from llm.interop.hf_config import config_to_hf

    fields = config_to_hf(config)
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def hf_model(config: ml_collections.ConfigDict, **kwargs):
    """The transformers model for `config` (its own random init), with the attention
    implementation transformers picks by default: what a user gets (sdpa, or eager for Gemma 2,
    whose sdpa path has no soft-capping)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_config(hf_config(config), **kwargs)


def check_same_model(ours: int, theirs: int, what: str) -> None:
    """Stop when the peer is not the same model (its parameter count differs from ours)."""
    if ours != theirs:
        raise UserError(f"the Hugging Face peer of {what} has {theirs:,} parameters, ours {ours:,}: it is not the same "
                        "model; fix llm.interop.hf_config.config_to_hf for this family")


# The peer's CPU modes: the key in the results, and whether the forward runs under
# torch.autocast("cpu", dtype=torch.bfloat16).
MODES = {"float32": False, "bfloat16": True}
MODE_LABELS = {"float32": "float32", "bfloat16": "bfloat16 autocast"}
PROBE_REPEATS = 2
# A mode whose matmul is this many times slower than the other's is not run: PyTorch's bf16 on a
# CPU without a bf16 matrix engine (AVX2) is ~20x slower than its f32, and a whole bench of it
# would take many minutes to confirm that it is not the peer's fastest mode.
HOPELESS = 3.0


def torch_bf16_slowdown(shape: tuple[int, int, int] = (1024, 512, 1536), repeats: int = 2) -> float:
    """PyTorch's bf16 matmul time over its f32 time on this CPU (all threads; best of `repeats`,
    alternating): < 1 where a bf16 matrix engine makes bf16 faster."""
    import torch

    m, k, n = shape
    a, b = torch.ones(m, k), torch.ones(k, n)
    pairs = {"f32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    for _ in range(repeats + 1):  # the first round warms up
        for name, (x, y) in pairs.items():
            start = time.perf_counter()
            torch.matmul(x, y)
            best[name] = min(best[name], time.perf_counter() - start)
    return best["bf16"] / best["f32"]


def cpu_modes(bf16_slowdown: float) -> tuple[dict[str, bool], dict[str, str]]:
    """({mode: autocast} to run, {mode: why not run}) given torch_bf16_slowdown()."""
    if bf16_slowdown > HOPELESS:
        return ({"float32": False},
                {"bfloat16": f"not run: torch bf16 matmul {bf16_slowdown:.1f}x slower than f32 on this CPU"})
    return dict(MODES), {}


def thread_candidates(cores: int | None = None) -> list[int]:
    """Torch intra-op thread counts to try: 1, the powers of two below the usable cores, and all
    of them. On a shared, oversubscribed machine fewer threads can be several times faster
    (OpenMP workers spin waiting for each other); every count up to a many-core machine's
    would make the probe long, powers of two span them."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts, t = {cores}, 1
    while t < cores:
        counts.add(t)
        t *= 2
    return sorted(counts)


def best_threads(probe: dict[tuple[str, int], float]) -> dict[str, int]:
    """{mode: the thread count of its shortest step} from {(mode, threads): step seconds}; a tie
    goes to fewer threads."""
    best: dict[str, int] = {}
    for (mode, threads), seconds in sorted(probe.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if mode not in best or seconds < probe[(mode, best[mode])]:
            best[mode] = threads
    return best


def fastest_mode(step_seconds: dict[str, float]) -> str:
    """The mode with the shortest timed step: the one our figure is compared against."""
    return min(step_seconds, key=step_seconds.get)


def time_modes(
    steps_by_mode: dict[str, Callable[[], Any]],
    threads: list[int],
    steps: int,
    warmup: int,
    set_threads: Callable[[int], None],
    clock: Callable[[], float] = time.perf_counter,
    probe_repeats: int = PROBE_REPEATS,
    also: dict[str, Callable[[], Any]] | None = None,
    also_step_time: dict[str, float] | None = None,
    also_modes: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Time each mode's training step at its best thread count.

    Each step function runs one step and blocks until it is done. Every mode warms up `warmup`
    steps at the most threads; a probe then times one step at each (mode, thread count),
    `probe_repeats` times, alternating between all of them so load from other processes hits
    each alike (a count already HOPELESS times slower than the mode's best is not repeated), and
    keeps each mode's fastest count; finally `steps` steps of every mode at its
    count, alternating between the modes step by step. Returns {mode: {step_time, threads,
    probe_step_time_by_threads}}. The steps in `also` (ours: warmed up by the caller) take turns
    in that last phase too, so the two sides share the machine's load alike; their mean step
    seconds go to `also_step_time`. With `also_modes` ({name: peer mode}) the last phase runs one
    peer mode at a time, its steps taking turns with the steps paired with it (unpaired ones join
    the first mode): our bf16 step timed after the peer's f32 one ran ~10% slower on a 2-core
    Sapphire Rapids than in a run of bf16 steps, as a training run has, and the peer's bf16
    step ~3%."""
    for mode, step in steps_by_mode.items():
        set_threads(max(threads))
        for _ in range(warmup):
            step()
    probe: dict[tuple[str, int], float] = {}
    for _ in range(probe_repeats):
        for mode, step in steps_by_mode.items():
            for t in threads:
                if (mode, t) in probe and probe[(mode, t)] > HOPELESS * min(v for (m, _), v in probe.items() if m == mode):
                    continue  # far behind: OpenMP workers spin-waiting on a busy machine take seconds a step
                set_threads(t)
                start = clock()
                step()
                probe[(mode, t)] = min(probe.get((mode, t), float("inf")), clock() - start)
    chosen = best_threads(probe)
    also = also or {}
    total = dict.fromkeys([*steps_by_mode, *also], 0.0)
    if also_modes is None:
        phases = [(list(steps_by_mode), list(also))]
    else:
        first = next(iter(steps_by_mode))
        pair = {n: also_modes[n] if also_modes.get(n) in steps_by_mode else first for n in also}
        phases = [([m], [n for n in also if pair[n] == m]) for m in steps_by_mode]
    for modes, names in phases:
        for _ in range(steps):
            for mode in modes:
                set_threads(chosen[mode])
                start = clock()
                steps_by_mode[mode]()
                total[mode] += clock() - start
            for name in names:
                start = clock()
                also[name]()
                total[name] += clock() - start
    if also_step_time is not None:
        also_step_time.update({name: total[name] / steps for name in also})
    return {
        mode: {"step_time": total[mode] / steps, "threads": chosen[mode],
               "probe_step_time_by_threads": {str(t): probe[(mode, t)] for t in threads}}
        for mode in steps_by_mode
    }


def _train_step(config: ml_collections.ConfigDict, batch_size: int, seq_len: int, seed: int, device: str, autocast: bool):
    """(model, inputs, step): one AdamW step of the transformers model per call of step(), the
    forward under bf16 autocast when `autocast`; step() returns when the step is done."""
    import torch

    torch.manual_seed(seed)
    model = hf_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device == "cuda")
    tokens = torch.randint(0, config.model.vocab_size, (batch_size, seq_len + 1), device=device)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # waits for the step (a host sync on CUDA)

    return model, inputs, step


def bench_hf_train(
    config: ml_collections.ConfigDict, batch_size: int, seq_len: int, steps: int, warmup: int = 2, seed: int = 0,
    also: dict[str, Callable[[], Any]] | None = None, also_step_time: dict[str, float] | None = None,
    also_modes: dict[str, str] | None = None,
) -> dict:
    """The peer at its best: on CPU, f32 and bf16 autocast (unless its bf16 matmul is hopeless
    here: cpu_modes), each at its fastest thread count (time_modes), the top-level hf_* figures
    being the faster mode's and hf_by_mode holding each; on a GPU, bf16 autocast. Also the batch
    shape, parameter count and tokens it ran. `also`: our steps, timed in turn with the peer's
    (time_modes; `also_modes` pairs each with the peer mode of its precision)."""
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    slowdown = None if cuda else torch_bf16_slowdown()
    modes, skipped = ({"bfloat16": True}, {}) if cuda else cpu_modes(slowdown)
    peers = {mode: _train_step(config, batch_size, seq_len, seed, device, autocast) for mode, autocast in modes.items()}
    threads = [0] if cuda else thread_candidates()
    set_threads = (lambda t: None) if cuda else torch.set_num_threads
    by_mode = time_modes({mode: peer[2] for mode, peer in peers.items()}, threads, steps, warmup, set_threads,
                         also=also, also_step_time=also_step_time, also_modes=also_modes)
    tokens = steps * batch_size * seq_len
    for figures in by_mode.values():
        figures["tokens_per_s"] = tokens / (figures["step_time"] * steps)
    mode = fastest_mode({m: f["step_time"] for m, f in by_mode.items()})
    model, inputs, _ = peers[mode]
    return {
        "hf_batch_shape": list(inputs.shape),
        "hf_params": sum(p.numel() for p in model.parameters()),
        "hf_tokens": tokens,
        "hf_tokens_per_s": by_mode[mode]["tokens_per_s"],
        "hf_step_time": by_mode[mode]["step_time"],
        "hf_mode": mode,
        "hf_dtype": MODE_LABELS[mode],
        "hf_threads": by_mode[mode]["threads"],
        "hf_by_mode": by_mode,
        "hf_skipped_modes": skipped,
        "hf_bf16_matmul_slowdown": slowdown,
        "hf_model": type(model).__name__,
        "hf_attention": model.config._attn_implementation,
        "hf_torch": torch.__version__,
        "hf_transformers": transformers.__version__,
    }
