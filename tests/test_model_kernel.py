"""llm.model.kernel: a weight stored as a Kernel multiplies itself in every Dense layer and the
LM head; and llm.model imports nothing from the packages built on it."""

import ast
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import random_batch, tiny_config
from llm.model.build import init_params
from llm.model.kernel import Kernel, flat_matmul
from llm.model.layers import Dense
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

LLM = Path(__file__).resolve().parents[1] / "llm"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WrappedKernel(Kernel):
    """A plain array behind the Kernel interface that refuses to be read as an array, so a
    layer that bypasses `matmul` fails."""

    w: jax.Array
    n_in: int = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.w.shape

    def matmul(self, x, n_in, compute_dtype):
        assert n_in == self.n_in, (n_in, self.n_in)
        return flat_matmul(x.astype(compute_dtype), self.w.astype(compute_dtype), n_in)

    def __getitem__(self, index):
        raise AssertionError("a Kernel must be multiplied through its matmul")


def test_a_kernel_without_matmul_cannot_be_made():
    class NoMatmul(Kernel):
        def __getitem__(self, index):
            return None

    with pytest.raises(TypeError, match="matmul"):
        NoMatmul()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_dense_layer_and_the_head_multiply_through_the_kernel(family):
    kv = "model.n_kv_heads=4" if family == "gpt2" else "model.n_kv_heads=2"
    config = tiny_config(f"model.family={family}", kv, "model.tie_embeddings=false", "model.n_layers=1")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    module = nnx.merge(graphdef, params)
    n_ins = {path: layer.n_in for path, layer in nnx.iter_modules(module) if isinstance(layer, Dense)}
    assert len(n_ins) == (6 if family == "gpt2" else 7)  # q, k, v, o, up, (gate,) down

    def wrap(path, leaf):
        keys = tuple(getattr(k, "key", k) for k in path)
        if keys == ("head",):
            return WrappedKernel(leaf, 1)
        if keys[-1] == "kernel":
            return WrappedKernel(leaf, n_ins[keys[:-1]])
        return leaf

    wrapped = jax.tree_util.tree_map_with_path(wrap, params)
    assert sum(isinstance(x, WrappedKernel) for x in jax.tree_util.tree_leaves(wrapped, is_leaf=lambda x: isinstance(x, Kernel))) == len(n_ins) + 1
    batch = random_batch(256, 2, 16)
    run = jax.jit(lambda p: nnx.merge(graphdef, p)(batch["inputs"], batch["positions"], batch["segment_ids"]))
    plain, through_kernels = np.asarray(run(params)), np.asarray(run(wrapped))
    np.testing.assert_allclose(through_kernels, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())


def _imported_packages(path: Path) -> set[str]:
    """The `llm.<name>` modules or packages a source file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[1] for name in names if name.startswith("llm.") and name.count(".") >= 1}


def test_the_model_imports_only_parallel_and_leaf_modules():
    """DESIGN.md's dependency direction: generate -> model and peft -> model, never back.
    llm.model may use llm.parallel, llm.cpu (CPU kernels: a leaf that imports nothing of llm but
    itself) and top-level helper modules (llm/errors.py, ...)."""
    helpers = {p.stem for p in LLM.glob("*.py")}
    for source in sorted((LLM / "model").glob("*.py")):
        outside = _imported_packages(source) - {"model", "parallel", "cpu"} - helpers
        assert not outside, f"{source.name} imports llm.{sorted(outside)}"
    for source in sorted((LLM / "cpu").glob("*.py")):
        assert _imported_packages(source) <= {"cpu"}, f"llm/cpu/{source.name} imports beyond llm.cpu"
