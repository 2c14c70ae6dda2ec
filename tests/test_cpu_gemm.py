"""The bf16 GEMM FFI kernel (llm.cpu.gemm) against a float64 reference, on each engine this CPU has."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.cpu import features, gemm

# AMX hosts (Sapphire Rapids and later) also have AVX-512 BF16: both engines are tested there.
ENGINES = {features.AMX: [features.AMX, features.AVX512_BF16], features.AVX512_BF16: [features.AVX512_BF16], None: []}[
    gemm.engine()
]
needs_engine = pytest.mark.skipif(gemm.engine() is None, reason="this CPU has no bf16 engine (test_cpu_matmul shows the fallback)")


def reference(a, b, trans_a, trans_b):
    a = np.asarray(a.astype(jnp.float32), np.float64)
    b = np.asarray(b.astype(jnp.float32), np.float64)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def operands(m, k, n, trans_a, trans_b, seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.standard_normal((k, m) if trans_a else (m, k)), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal((n, k) if trans_b else (k, n)), jnp.bfloat16)
    return a, b


@needs_engine
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 33, 18), (64, 96, 48), (4097, 45, 17), (31, 1000, 33)])
def test_gemm_equals_float64_reference(engine, trans_a, trans_b, m, k, n):
    a, b = operands(m, k, n, trans_a, trans_b)
    out = jax.jit(lambda a, b: gemm.gemm(a, b, trans_a, trans_b, on=engine))(a, b)
    assert out.shape == (m, n) and out.dtype == jnp.float32
    # Exact bf16 products summed in f32: error bound ~ k * eps_f32 * sum |a||b|.
    bound = k * 2.0**-23 * reference(abs(a), abs(b), trans_a, trans_b) + 1e-30
    np.testing.assert_array_less(np.abs(np.asarray(out, np.float64) - reference(a, b, trans_a, trans_b)), 4 * bound + 1e-6)


@needs_engine
@pytest.mark.parametrize("m,k,n", [(0, 5, 7), (4, 0, 3), (4, 6, 0)])
def test_gemm_zero_size_inputs(m, k, n):
    a, b = operands(m, k, n, False, False)
    out = np.asarray(jax.jit(gemm.gemm)(a, b))
    assert out.shape == (m, n) and not out.any()


def test_a_compiler_that_fails_names_itself_and_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="'false'"):
        gemm.compile_kernel(compiler="false", directory=tmp_path)
    with pytest.raises(RuntimeError, match="no-such-compiler"):
        gemm.compile_kernel(compiler=str(tmp_path / "no-such-compiler"), directory=tmp_path)
    assert not list(tmp_path.iterdir())


def test_without_a_compiler_the_kernel_is_not_used(tmp_path, caplog):
    if features.host_bf16_engine() is None:
        assert gemm.load_engine(compiler="false", directory=tmp_path) is None
        return
    with caplog.at_level("WARNING", logger="llm"):
        assert gemm.load_engine(compiler="false", directory=tmp_path) is None
    assert "'false'" in caplog.text and "XLA's dots" in caplog.text
    assert not list(tmp_path.iterdir())


@needs_engine
@pytest.mark.parametrize("m,k", [(1, 1), (3, 70), (65, 129), (2048, 512), (0, 5), (5, 0)])
def test_transpose_is_exact(m, k):
    a = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.bfloat16)
    out = jax.jit(gemm.transpose)(a)
    assert out.shape == (k, m) and out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), np.asarray(a.astype(jnp.float32)).T)
