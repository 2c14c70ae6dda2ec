"""The CPU bf16 linear-layer route (llm.cpu.matmul): which route a model takes, and that the
FFI weight gradient changes nothing but speed."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close_at_scale, random_batch, tiny_config
from llm.cpu import features, gemm, matmul
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.train.loss import lm_loss_fn

HAS_ENGINE = gemm.engine() is not None
HAS_AMX = gemm.engine() == features.AMX


def test_route_follows_platform_dtype_devices_and_engine(monkeypatch):
    assert matmul.cpu_matmul_route("tpu", jnp.bfloat16, 1, True) == ""
    assert matmul.cpu_matmul_route("cpu", jnp.float32, 1, True) == ""
    assert matmul.cpu_matmul_route("cpu", jnp.bfloat16, 8, True) == "xla"
    assert matmul.cpu_matmul_route("cpu", jnp.bfloat16, 1, False) == "xla"
    assert matmul.cpu_matmul_route("cpu", jnp.bfloat16, 1, True) == ("gemm" if HAS_AMX else "xla")
    for engine in (None, features.AVX512_BF16):  # CPUs without AMX keep XLA's dots
        monkeypatch.setattr(gemm, "engine", lambda: engine)
        assert matmul.cpu_matmul_route("cpu", jnp.bfloat16, 1, True) == "xla"
    monkeypatch.setattr(gemm, "engine", lambda: features.AMX)
    assert matmul.cpu_matmul_route("cpu", jnp.bfloat16, 1, True) == "gemm"


def test_engine_from_cpu_flags():
    assert features.bf16_engine(frozenset({"avx2", "fma"})) is None
    assert features.bf16_engine(frozenset({"avx512f", "avx512bw", "avx512_bf16"})) == features.AVX512_BF16
    assert features.bf16_engine(frozenset({"avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"})) == features.AMX
    assert features.parse_flags("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n") == {"fpu", "avx2", "amx_tile"}


def build(cpu_gemm: bool):
    config = tiny_config("precision.compute=bfloat16", f"model.cpu_gemm={cpu_gemm}")
    spec = model_spec(config, platform="cpu", devices=1)
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(spec, rules, 0)
    return graphdef, params, spec


def test_model_gradients_with_the_kernel_equal_the_xla_route():
    batch = random_batch(256, 2, 32, packed=True)
    results = {}
    for cpu_gemm in (True, False):
        graphdef, params, spec = build(cpu_gemm)
        assert spec.cpu_matmul == ("gemm" if cpu_gemm and HAS_AMX else "xla")
        grad_fn = jax.jit(jax.value_and_grad(lm_loss_fn(graphdef), has_aux=True))
        hlo = grad_fn.lower(params, {}, batch, None).compile().as_text()
        assert (gemm.TRANSPOSE_TARGET in hlo) == (spec.cpu_matmul == "gemm")
        (loss, _), grads = grad_fn(params, {}, batch, None)
        results[cpu_gemm] = (loss, grads)
    # Same forward; weight gradients are the same bf16 products summed in f32 in another order.
    assert float(results[True][0]) == float(results[False][0])
    assert_trees_close_at_scale(results[True][1], results[False][1])


@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_ENGINE, reason="no bf16 engine"))])
def test_bf16_matmul_vjp_equals_float64_products(kernel):
    rng = np.random.default_rng(0)
    bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    x, w = bf16(rng.standard_normal((40, 24))), jnp.asarray(rng.standard_normal((24, 12)), jnp.float32)
    cotangent = bf16(rng.standard_normal((40, 12)))
    y, vjp = jax.vjp(lambda x, w: matmul.bf16_matmul(x, w, kernel), x, w)
    dx, dw = vjp(cotangent)
    as64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)  # noqa: E731
    w16 = as64(bf16(w))
    assert y.dtype == dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32  # dW is not rounded to bf16
    np.testing.assert_allclose(as64(y), as64(x) @ w16, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(as64(dx), as64(cotangent) @ w16.T, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw, np.float64), as64(x).T @ as64(cotangent), rtol=1e-5, atol=1e-5)


MEMORISE = r"""
import json, sys, pathlib
from llm.config.loading import load_config
from llm.train.loop import run_training
tmp = pathlib.Path(sys.argv[1])
text = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs."
data = tmp / "repeat.jsonl"
data.write_text("".join(json.dumps({"text": text}) + "\n" for _ in range(64)))
out = {}
for cpu_gemm in ("true", "false"):
    config = load_config("configs/tiny.py", ["precision.compute=bfloat16", f"model.cpu_gemm={cpu_gemm}",
        "train.steps=60", "train.log_every=60", "train.eval_every=0", "data.source=jsonl", f"data.path={data}"])
    out[cpu_gemm] = run_training(config, tmp / f"run-{cpu_gemm}")["loss"]
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_training_on_the_kernel_memorises_like_the_xla_route(tmp_path):
    """On one CPU device (a subprocess without the suite's 8 simulated devices)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-c", MEMORISE, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={**env, "PYTHONPATH": os.getcwd()})
    assert run.returncode == 0, run.stderr[-2000:]
    losses = json.loads(run.stdout.split("RESULT", 1)[1])
    assert losses["true"] < 0.1 and losses["false"] < 0.1, losses
    assert (f"bf16 GEMM kernel: {gemm.engine()}" if HAS_ENGINE else "bf16 GEMM kernel") in run.stderr
