"""`llm bench [train]`: our train step and the HF peer measured on the same work. What is
checked is what each side ran (parameter count, batch shape, tokens) and that its timings are
plausible; speeds themselves belong to benchmarks, not tests."""

import math

import pytest

from helpers import tiny_config
from llm.bench.train import run_train_bench


@pytest.mark.slow  # a JAX compile and a PyTorch model at two thread counts
def test_train_bench_measures_ours_and_the_peer_on_the_same_work():
    config = tiny_config("data.seq_len=32", "mesh.data=8")
    steps = 1
    r = run_train_bench(config, steps=steps, vs_hf=True)
    batch, seq_len = config.data.batch_size, config.data.seq_len
    # Same model and the same work on both sides, as each side reports it.
    assert r["params"] == r["hf_params"] > 0
    assert r["batch_shape"] == r["hf_batch_shape"] == [batch, seq_len]
    assert r["tokens"] == r["hf_tokens"] == steps * batch * seq_len
    for key in ("step_time", "hf_step_time"):
        assert 0 < r[key] < 60 and math.isfinite(r[key]), (key, r[key])
    assert 0 < r["mfu"] < 1
    assert r["peak_memory_bytes"] > 4 * r["params"] and math.isfinite(r["loss"])
    # HF in both modes (bf16 left out only where torch's bf16 matmul is hopeless), the faster one
    # compared against; ours (auto, f32 in the suite) in both precisions.
    modes = r["hf_by_mode"]
    assert "float32" in modes and set(modes) | set(r["hf_skipped_modes"]) == {"float32", "bfloat16"}
    assert r["hf_tokens_per_s"] == max(m["tokens_per_s"] for m in modes.values()) == modes[r["hf_mode"]]["tokens_per_s"]
    assert r["compute_dtype"] == "float32" and set(r["by_precision"]) == {"float32", "bfloat16"}


FAMILY_CONFIGS = ("small_qwen3", "small_gemma3", "small_gemma2")
# The family configs shrunk to a tiny model whose windowed layers (window 8) see less than the
# 32-token test sequence.
TINY = ("model.vocab_size=300", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=96",
        "model.sliding_window=8", "model.attention_block=8", "model.loss_chunk=0", "data.seq_len=32",
        "precision.compute=float32")


@pytest.mark.parametrize("name", ("small", *FAMILY_CONFIGS))
def test_hf_peer_of_each_bench_config_is_the_same_architecture(name):
    from llm.bench.hf_peer import hf_model
    from llm.config.loading import load_config
    from llm.interop.hf_config import default_model_type
    from llm.model.spec import model_spec, param_count

    config = load_config(f"configs/{name}.py", [])
    model = hf_model(config)
    spec = model_spec(config)
    ours = param_count(spec) - (spec.padded_vocab - spec.vocab_size) * spec.d_model * (1 if spec.tie_embeddings else 2)
    assert sum(p.numel() for p in model.parameters()) == ours
    assert model.config.model_type == default_model_type(config) == {
        "small": "llama", "small_qwen3": "qwen3", "small_gemma3": "gemma3_text", "small_gemma2": "gemma2"}[name]
    hf_types = getattr(model.config, "layer_types", None) or ["full_attention"] * spec.n_layers
    assert tuple(model.config.sliding_window if t == "sliding_attention" else 0 for t in hf_types) == spec.windows


@pytest.mark.slow  # ~30 s each on 2 shared cores: an 8-layer JAX compile and an export
@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_hf_peer_computes_our_logits(tmp_path, name):
    """Our random weights (every leaf perturbed, norms included) loaded into the peer's
    architecture (hf_config, not the exported config.json) give our f32 logits."""
    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from interop_models import single_device_rules
    from llm.bench.hf_peer import hf_config
    from llm.config.loading import load_config
    from llm.interop.hf_export import export_hf
    from llm.model.build import init_params
    from llm.model.spec import model_spec

    config = load_config(f"configs/{name}.py", list(TINY))
    graphdef, params, _ = init_params(model_spec(config), single_device_rules(config), seed=0)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    export_hf(config, params, tmp_path / "hf", dtype="float32")
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", config=hf_config(config), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 300, (2, 32))
    ours = np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens))[..., :300]
    with torch.no_grad():
        theirs = peer(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


# The peer's modes and thread counts, chosen by measurement: a fake machine whose step times
# depend on the mode and the thread count set, and a clock that advances by them.
class FakeMachine:
    def __init__(self, seconds: dict[tuple[str, int], float]):
        self.seconds, self.now, self.threads, self.calls = seconds, 0.0, None, []

    def clock(self) -> float:
        return self.now

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def step(self, mode: str):
        def run():
            self.calls.append((mode, self.threads))
            self.now += self.seconds[(mode, self.threads)]
        return run


def test_each_peer_mode_runs_at_its_fastest_thread_count_and_the_faster_mode_is_compared():
    from llm.bench.hf_peer import fastest_mode, time_modes

    # f32 is fastest on 1 thread (an oversubscribed machine), bf16 on 2 and faster than f32.
    machine = FakeMachine({("float32", 1): 2.0, ("float32", 2): 3.0, ("bfloat16", 1): 1.5, ("bfloat16", 2): 1.0})
    figures = time_modes({m: machine.step(m) for m in ("float32", "bfloat16")}, [1, 2], steps=3, warmup=1,
                         set_threads=machine.set_threads, clock=machine.clock)
    assert figures["float32"]["threads"] == 1 and figures["float32"]["step_time"] == 2.0
    assert figures["bfloat16"]["threads"] == 2 and figures["bfloat16"]["step_time"] == 1.0
    assert figures["float32"]["probe_step_time_by_threads"] == {"1": 2.0, "2": 3.0}
    assert fastest_mode({m: f["step_time"] for m, f in figures.items()}) == "bfloat16"
    # Warm-up at the most threads, then the probe alternating over every (mode, threads), then
    # the timed steps alternating between the modes at their chosen counts.
    assert machine.calls[:2] == [("float32", 2), ("bfloat16", 2)]
    assert machine.calls[2:6] == [("float32", 1), ("float32", 2), ("bfloat16", 1), ("bfloat16", 2)] == machine.calls[6:10]
    assert machine.calls[10:] == [("float32", 1), ("bfloat16", 2)] * 3


def test_thread_ties_go_to_fewer_threads():
    from llm.bench.hf_peer import best_threads

    assert best_threads({("float32", 4): 1.0, ("float32", 1): 1.0, ("float32", 2): 1.5}) == {"float32": 1}


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (64, [1, 2, 4, 8, 16, 32, 64])])
def test_thread_candidates_span_one_to_all_cores(cores, counts):
    from llm.bench.hf_peer import thread_candidates

    assert thread_candidates(cores) == counts


def test_peer_bf16_is_not_run_where_torch_bf16_is_hopeless():
    from llm.bench.hf_peer import cpu_modes

    assert cpu_modes(0.15) == ({"float32": False, "bfloat16": True}, {})  # AMX: bf16 6x faster
    modes, skipped = cpu_modes(22.0)  # AVX2: bf16 emulated
    assert modes == {"float32": False} and "22.0x slower" in skipped["bfloat16"]


@pytest.mark.parametrize("compute, vs_hf, bf16, measured", [
    ("auto", True, True, ("auto", "float32")), ("auto", True, False, ("auto", "bfloat16")),
    ("auto", False, True, ("auto",)), ("float32", True, True, ("float32",)),
])
def test_ours_runs_both_precisions_only_under_auto_with_the_peer(monkeypatch, compute, vs_hf, bf16, measured):
    from llm.bench.train import precisions_to_measure

    monkeypatch.setenv("LLM_CPU_BF16", "1" if bf16 else "0")
    assert precisions_to_measure(tiny_config(f"precision.compute={compute}"), vs_hf) == measured


def test_a_thread_count_far_behind_is_not_probed_again():
    from llm.bench.hf_peer import time_modes

    machine = FakeMachine({("float32", 1): 1.0, ("float32", 2): 10.0})
    figures = time_modes({"float32": machine.step("float32")}, [1, 2], steps=1, warmup=0,
                         set_threads=machine.set_threads, clock=machine.clock, probe_repeats=3)
    assert machine.calls == [("float32", 1), ("float32", 2), ("float32", 1), ("float32", 1), ("float32", 1)]
    assert figures["float32"]["threads"] == 1


def test_our_steps_take_turns_with_the_peers_timed_steps():
    from llm.bench.hf_peer import time_modes

    machine = FakeMachine({("float32", 1): 2.0, ("float32", 2): 3.0, ("ours", 1): 0.5, ("ours", 2): 0.5})
    ours: dict = {}
    time_modes({"float32": machine.step("float32")}, [1, 2], steps=2, warmup=0, set_threads=machine.set_threads,
               clock=machine.clock, probe_repeats=1, also={"ours": machine.step("ours")}, also_step_time=ours)
    assert [m for m, _ in machine.calls] == ["float32"] * 2 + ["float32", "ours"] * 2  # probe, then turns
    assert ours == {"ours": 0.5}


def test_paired_steps_take_turns_one_peer_mode_at_a_time():
    from llm.bench.hf_peer import time_modes

    machine = FakeMachine({("float32", 1): 2.0, ("bfloat16", 1): 1.0, ("ours32", 1): 1.5, ("ours16", 1): 0.5, ("odd", 1): 0.1})
    ours: dict = {}
    time_modes({m: machine.step(m) for m in ("float32", "bfloat16")}, [1], steps=2, warmup=0, set_threads=machine.set_threads,
               clock=machine.clock, probe_repeats=1, also={n: machine.step(n) for n in ("ours16", "ours32", "odd")},
               also_step_time=ours, also_modes={"ours16": "bfloat16", "ours32": "float32", "odd": "int8"})
    timed = [m for m, _ in machine.calls][2:]  # after the probe
    assert timed == ["float32", "ours32", "odd"] * 2 + ["bfloat16", "ours16"] * 2  # "int8" is no peer mode: the first's turn
    assert ours == pytest.approx({"ours16": 0.5, "ours32": 1.5, "odd": 0.1})
