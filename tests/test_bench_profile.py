"""`llm bench --profile`: a trace jax's own reader opens, and an op table read from it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

from llm.bench.profile import format_table, hlo_ops, op_table, trace_steps
from llm.bench.train import run_train_bench
from tests.helpers import tiny_config


def test_hlo_ops_name_what_each_fusion_computes():
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0))
    a = jnp.ones((64, 32), jnp.float32)
    ops = hlo_ops(f.lower(a, a.T).compile().as_text())
    kinds = {kind.split()[0] for kind in ops.values()}
    assert any(k in ("dot", "fusion:dot") for k in kinds), ops  # the matmul, fused or not
    assert all(" " in kind for kind in ops.values())  # every op has its shape


def test_op_table_reads_the_ops_of_a_traced_function(tmp_path):
    f = jax.jit(lambda a: jnp.sin(a @ a).sum())
    a = jnp.ones((256, 256), jnp.float32)
    f(a).block_until_ready()
    xplane, seconds = trace_steps(lambda: f(a).block_until_ready(), 2, tmp_path)
    rows = op_table(xplane, f.lower(a).compile().as_text(), 2, seconds)
    assert rows and all(r["ms_per_step"] > 0 and r["calls_per_step"] >= 0.5 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["ms_per_step"])
    assert "share" in format_table(rows, 5, seconds)


def test_bench_profile_writes_a_trace_and_prints_the_table(tmp_path, capsys):
    config = tiny_config("data.batch_size=8", "data.seq_len=32", "mesh.data=8")
    figures = run_train_bench(config, steps=2, vs_hf=False, profile=str(tmp_path))
    profile = figures["profile"]
    planes = [plane.name for plane in ProfileData.from_file(profile["trace"]).planes]
    assert any(name.startswith(("/host:", "/device:")) for name in planes)
    top = profile["top_ops"]
    assert top and sum(r["share"] for r in top) > 0.2  # the ops found cover a real part of the step
    printed = capsys.readouterr().out
    assert "share" in printed and top[0]["name"] in printed and "by kind:" in printed
