"""`precision.compute=auto` on a CPU (llm.cpu.precision): bf16 where its matmul beats f32, decided
once per machine (cached), by the CPU flags, or forced by $LLM_CPU_BF16; and the MFU peak
measured with the f32-accumulating dot that bf16 matrix engines run."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import pytest

from llm.cpu import precision
from llm.cpu.precision import Choice, choose, decide, machine_key, measured_choice


def test_bf16_only_when_clearly_faster():
    assert choose(f32_s=1.0, bf16_s=0.2)
    assert not choose(f32_s=1.0, bf16_s=0.9)  # a tie within noise keeps f32
    assert not choose(f32_s=1.0, bf16_s=3.0)  # bf16 without a matrix engine (upcasts)


def never(*_):
    raise AssertionError("must not measure")


@pytest.mark.parametrize("env, bf16", [("1", True), ("0", False), (" 1 ", True)])
def test_env_override_wins_without_measuring(env, bf16):
    choice = decide(env, "amx", 1, never)
    assert choice.bf16 is bf16 and "LLM_CPU_BF16" in choice.reason


def test_env_override_must_be_0_or_1():
    with pytest.raises(ValueError, match="LLM_CPU_BF16"):
        decide("yes", "amx", 1, never)


def test_no_bf16_engine_means_f32_without_measuring():
    assert decide(None, None, 1, never) == Choice(False, "no bf16 matrix engine in the CPU flags")


def test_multi_process_jobs_decide_by_flags_so_all_processes_agree():
    assert decide(None, "amx", 4, never).bf16
    assert not decide(None, "avx512_bf16", 4, never).bf16


def test_single_process_with_an_engine_measures():
    assert decide(None, "avx512_bf16", 1, lambda: Choice(True, "measured")) == Choice(True, "measured")


def test_measurement_is_cached_and_read_back(tmp_path):
    path = tmp_path / "sub" / "cpu-precision-key.json"
    calls = []

    def measure():
        calls.append(1)
        return 1.0, 0.25

    first = measured_choice(path, measure)
    assert first.bf16 and "measured now" in first.reason and "4.00x" in first.reason
    record = json.loads(path.read_text())
    assert (record["f32_s"], record["bf16_s"]) == (1.0, 0.25)
    second = measured_choice(path, never)  # read from the file: no second measurement
    assert second.bf16 and "cached" in second.reason and calls == [1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_an_unreadable_cache_is_measured_again(tmp_path):
    path = tmp_path / "cpu-precision-key.json"
    path.write_text("{not json")
    assert not measured_choice(path, lambda: (1.0, 1.1)).bf16
    assert json.loads(path.read_text())["bf16_s"] == 1.1


def test_the_cache_key_covers_the_cpu_model_and_flags():
    flags = frozenset({"avx2", "amx_tile", "amx_bf16"})
    assert machine_key("Xeon", flags) == machine_key("Xeon", frozenset(sorted(flags)))
    assert machine_key("Xeon", flags) != machine_key("EPYC", flags)
    assert machine_key("Xeon", flags) != machine_key("Xeon", flags - {"amx_bf16"})


def test_auto_resolves_by_the_choice_on_cpu_and_bf16_elsewhere(monkeypatch):
    from llm.model.spec import resolve_compute_dtype

    monkeypatch.setenv("LLM_CPU_BF16", "1")
    assert resolve_compute_dtype("auto", "cpu") == jnp.bfloat16
    monkeypatch.setenv("LLM_CPU_BF16", "0")
    assert resolve_compute_dtype("auto", "cpu") == jnp.float32
    assert resolve_compute_dtype("auto", "gpu") == jnp.bfloat16
    assert resolve_compute_dtype("float32", "gpu") == jnp.float32


def test_the_suite_runs_auto_in_f32():
    """conftest forces f32: the suite's tolerances against HF and float64 references are f32's."""
    from helpers import tiny_config
    from llm.model.spec import model_spec

    assert model_spec(tiny_config(), platform="cpu").compute_dtype == jnp.float32


def test_the_precision_log_line_says_why(monkeypatch):
    from helpers import tiny_config
    from llm.model.spec import model_spec
    from llm.train.setup import precision_summary

    monkeypatch.setenv("LLM_CPU_BF16", "1")
    config = tiny_config()
    line = precision_summary(config, model_spec(config, platform="cpu"), "cpu")
    assert "compute bfloat16 (config: auto: LLM_CPU_BF16=1)" in line
    f32 = tiny_config("precision.compute=float32")
    assert "(config: float32)" in precision_summary(f32, model_spec(f32, platform="cpu"), "cpu")


def test_the_matmul_timing_runs_both_precisions():
    f32_s, bf16_s = precision.time_matmuls((64, 32, 48), repeats=1)
    assert all(0 < t < 10 and math.isfinite(t) for t in (f32_s, bf16_s))


def test_the_peak_is_measured_with_the_f32_accumulating_dot(monkeypatch):
    """A bf16 dot with a bf16 result runs at f32 speed on XLA:CPU; the bf16 peak is the dot that
    takes bf16 operands and accumulates (and returns) f32."""
    from llm.train import flops

    seen = []
    original = flops.matmul_f32_accumulate

    def recording(x, y):
        out = original(x, y)
        seen.append((x.dtype, y.dtype, out.dtype))
        return out

    monkeypatch.setattr(flops, "matmul_f32_accumulate", recording)
    assert flops.measure_matmul_peak(jnp.bfloat16, size=32, repeats=1) > 0
    assert seen == [(jnp.bfloat16, jnp.bfloat16, jnp.float32)]
