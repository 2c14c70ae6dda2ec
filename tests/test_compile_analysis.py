"""llm.compile.analysis: XLA's figures for a compiled function, read the same way everywhere."""

import jax
import jax.numpy as jnp

from llm.compile.analysis import compiled_figures


def test_figures_of_a_matmul():
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    y = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    f = compiled_figures(jax.jit(lambda a, b: a @ b).lower(x, y).compile())
    assert f.argument_bytes == (64 * 32 + 32 * 16) * 4
    assert f.total_bytes >= f.argument_bytes + 64 * 16 * 4  # arguments + the output, nothing donated
    assert f.temp_bytes >= 0 and f.total_bytes - f.temp_bytes <= f.argument_bytes + 64 * 16 * 4
    assert f.flops == 2 * 64 * 32 * 16
