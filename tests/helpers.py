"""Small shared fixtures for tests: configs and synthetic batches."""

from __future__ import annotations

import numpy as np

from llm.bench.train import synthetic_batch
from llm.config.loading import load_config


def tiny_config(*overrides: str):
    return load_config("configs/tiny.py", list(overrides))


def random_batch(vocab: int, batch: int, seq_len: int, seed: int = 0, packed: bool = False) -> dict:
    """A batch in the pipeline's format; `packed` puts two documents in each row."""
    out = synthetic_batch(vocab, batch, seq_len, seed)
    if packed:
        cut = seq_len // 3
        out["segment_ids"][:, cut:] = 2
        out["positions"][:, cut:] = np.arange(seq_len - cut)
    return out



F32_EPS = float(np.finfo(np.float32).eps)


def assert_close_at_scale(actual, expected, ulps: float = 32, scale: float | None = None, err_msg: str = "") -> None:
    """Two f32 computations that differ only in summation order (another algorithm, layout or
    instruction set: XLA's AVX2 and AVX-512 code sum in different orders) agree to within `ulps`
    units of f32 rounding *at the scale of the tensor*: |actual - expected| <= ulps * eps * scale
    for every element, scale = max|expected| unless given.

    A sum's rounding error scales with the terms summed, not with the result: a gradient element
    of -6e-4 that cancels out of terms of ~1 carries errors of ~1e-7 each, so an absolute or an
    elementwise-relative tolerance far below the tensor's scale passes or fails by platform. The
    decoder's gradients (xla vs blocked attention) differ by up to ~6 ulps at scale on an AMD
    EPYC (AVX2) and ~13 on an Intel Xeon (AVX-512); the default 32 leaves room for both. Keep
    bit-exact checks for the same program on the same machine (resume tests)."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    if scale is None:
        scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ulps * F32_EPS * scale, err_msg=err_msg)


def assert_trees_close_at_scale(actual, expected, ulps: float = 32, floor: float = 1e-3) -> None:
    """assert_close_at_scale leaf by leaf, naming the leaf that fails. A leaf's scale is its own
    largest magnitude, but at least `floor` times the tree's: a gradient that is analytically
    zero (a key bias: softmax ignores a shift shared by all keys) holds only rounding noise from
    terms at its neighbours' scale, not at its own."""
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(expected)
    others = jax.tree_util.tree_leaves(actual)
    assert len(leaves) == len(others), "the trees differ in structure"
    top = max((float(np.abs(np.asarray(leaf)).max()) for _, leaf in leaves if np.size(leaf)), default=0.0)
    for (path, leaf), other in zip(leaves, others):
        scale = max(float(np.abs(np.asarray(leaf)).max()) if np.size(leaf) else 0.0, floor * top)
        assert_close_at_scale(other, leaf, ulps, scale, err_msg=jax.tree_util.keystr(path))


def ulps_at_scale(actual, expected) -> float:
    """The largest difference in units of f32 rounding at the tensor's scale (to size `ulps`)."""
    expected = np.asarray(expected, np.float64)
    scale = float(np.abs(expected).max())
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / (F32_EPS * scale)) if scale else 0.0
