"""LoRA as a transform of (graphdef, params): chosen Dense layers gain `lora_a` (*in, r) and
`lora_b` (r, *out) leaves and compute y = x W + s (x A) B (llm.model.layers.Dense), so the
kernel W is never rewritten and, when frozen, never gets a weight-gradient matmul.

Init as in the LoRA paper (PEFT's default): A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0, so
the adapted model starts exactly equal to the base. s = alpha / r (alpha / sqrt(r) with rsLoRA).
Scanned layers (a leading layer axis on every block leaf) get per-layer adapters the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.model.layers import Dense
from llm.peft.abstract import is_abstract
from llm.peft.spec import PeftSpec
from llm.pytree import get_path, merge_trees, path_keys, path_str, set_path

ADAPTER_KEYS = ("lora_a", "lora_b")


class LoRADropoutKey(nnx.Variable):
    """Raw PRNG key data for one layer's adapter dropout; supplied per step, never trained."""


class LoRADropoutRate(nnx.Variable):
    """The dropout rate as data, so evaluation runs the same graph with rate 0 (the identity)."""


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    path: tuple  # the Dense module, e.g. ("blocks", 0, "attn", "q")
    lead: tuple[int, ...]  # (n_layers,) for scanned blocks, else ()
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int
    scale: float

    @property
    def name(self) -> str:
        return path_str(self.path)


@dataclasses.dataclass(frozen=True)
class LoraInfo:
    """What add_lora did: needed to merge, to save adapters and to feed dropout."""

    targets: tuple[LoraTarget, ...]
    dropout: float


def abstract_module(graphdef: nnx.GraphDef, params: Any) -> nnx.Module:
    """The module with ShapeDtypeStruct values (no memory): for inspecting and re-wiring."""
    return nnx.eval_shape(lambda: nnx.merge(graphdef, params))


def _dense_layers(module: nnx.Module) -> list[tuple[tuple, Dense]]:
    return [(tuple(p), m) for p, m in nnx.iter_modules(module) if isinstance(m, Dense)]


def find_targets(module: nnx.Module, spec: PeftSpec, ranks: dict[str, int] | None = None,
                 scales: dict[str, float] | None = None) -> tuple[LoraTarget, ...]:
    """The Dense layers whose kernel path matches spec.lora_targets, with their shapes.

    `ranks` / `scales` (by module name) override the spec per layer (PEFT rank_pattern imports).
    """
    pattern = re.compile(spec.lora_targets)
    dense = _dense_layers(module)
    targets = []
    for path, layer in dense:
        kernel_path = path_str(path) + "/kernel"
        if not pattern.search(kernel_path):
            continue
        axes = layer.kernel.get_metadata()["logical_axes"]
        shape = tuple(layer.kernel.shape)
        lead = shape[: len(shape) - len(axes)]
        body = shape[len(lead):]
        in_shape, out_shape = body[: layer.n_in], body[layer.n_in:]
        name = path_str(path)
        rank = (ranks or {}).get(name, spec.lora_rank)
        limit = min(math.prod(in_shape), math.prod(out_shape))
        if rank > limit:
            raise UserError(
                f"peft.lora_rank={rank} exceeds the smaller side ({limit}) of {kernel_path} (in {in_shape}, out {out_shape}); "
                f"use a rank <= {limit}"
            )
        scale = (scales or {}).get(name, spec.scale(rank))
        targets.append(LoraTarget(path, lead, in_shape, out_shape, rank, float(scale)))
    if not targets:
        examples = ", ".join(path_str(p) + "/kernel" for p, _ in dense[:4])
        raise UserError(
            f"peft.lora_targets={spec.lora_targets!r} matches no linear layer; kernels are named like {examples} "
            "(or use attention, mlp, all_linear)"
        )
    return tuple(targets)


def _axes(layer: Dense) -> tuple[tuple, tuple]:
    axes = layer.kernel.get_metadata()["logical_axes"]
    return tuple(axes[: layer.n_in]), tuple(axes[layer.n_in:])


def _wire(module: nnx.Module, targets: tuple[LoraTarget, ...], dropout: float, dtype) -> None:
    """Set the adapter attributes on the (abstract) module, in place."""
    by_path = dict(_dense_layers(module))
    for t in targets:
        layer = by_path[t.path]
        in_axes, out_axes = _axes(layer)
        layer.lora_a = nnx.LoRAParam(jax.ShapeDtypeStruct((*t.lead, *t.in_shape, t.rank), dtype), logical_axes=(*in_axes, None))
        layer.lora_b = nnx.LoRAParam(jax.ShapeDtypeStruct((*t.lead, t.rank, *t.out_shape), dtype), logical_axes=(None, *out_axes))
        layer.lora_scale = t.scale
        if dropout > 0:
            layer.lora_dropout_key = LoRADropoutKey(jax.ShapeDtypeStruct((*t.lead, 2), jnp.uint32))
            layer.lora_dropout_rate = LoRADropoutRate(jax.ShapeDtypeStruct(t.lead, jnp.float32))


def adapter_shardings(module: nnx.Module, targets: tuple[LoraTarget, ...]) -> dict:
    """NamedShardings of A and B: they follow the kernel's in / out logical axes."""
    rules = module.rules
    by_path = dict(_dense_layers(module))
    out: dict = {}
    for t in targets:
        in_axes, out_axes = _axes(by_path[t.path])
        lead = ("layers",) * len(t.lead)
        a = rules.sharding((*lead, *in_axes, None), (*t.lead, *t.in_shape, t.rank))
        b = rules.sharding((*lead, None, *out_axes), (*t.lead, t.rank, *t.out_shape))
        set_path(out, (*t.path, "lora_a"), a)
        set_path(out, (*t.path, "lora_b"), b)
    return out


def place(array: np.ndarray, sharding) -> jax.Array:
    """A host array on the devices of `sharding` (each device gets only its slice)."""
    if sharding is None:
        return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def init_adapters(targets: tuple[LoraTarget, ...], seed: int, dtype, shardings: dict | None = None,
                  abstract: bool = False) -> dict:
    """{path: {lora_a, lora_b}} with A uniform in +-1/sqrt(fan_in) and B = 0, placed on the mesh.

    Drawn on the host with numpy (adapters are small): the same values on every platform and
    process, and no random-number kernels to compile. `abstract`: ShapeDtypeStructs with the
    shardings instead (llm.peft.abstract: `llm compile` builds the partition without data)."""
    out: dict = {}
    for i, t in enumerate(targets):
        if abstract:
            for key, shape in (("lora_a", (*t.lead, *t.in_shape, t.rank)), ("lora_b", (*t.lead, t.rank, *t.out_shape))):
                sharding = get_path(shardings, (*t.path, key)) if shardings is not None else None
                set_path(out, (*t.path, key), jax.ShapeDtypeStruct(shape, dtype, sharding=sharding))
            continue
        bound = 1.0 / math.sqrt(math.prod(t.in_shape))
        a = np.random.default_rng([seed, i]).uniform(-bound, bound, (*t.lead, *t.in_shape, t.rank)).astype(dtype)
        b = np.zeros((*t.lead, t.rank, *t.out_shape), dtype)
        for key, value in (("lora_a", a), ("lora_b", b)):
            sharding = get_path(shardings, (*t.path, key)) if shardings is not None else None
            set_path(out, (*t.path, key), place(value, sharding))
    return out


def add_lora(graphdef: nnx.GraphDef, params: Any, spec: PeftSpec, seed: int,
             ranks: dict[str, int] | None = None, scales: dict[str, float] | None = None) -> tuple[nnx.GraphDef, dict, LoraInfo]:
    """(graphdef with adapters, params + fresh adapters, info). The base leaves are shared, not copied."""
    module = abstract_module(graphdef, params)
    targets = find_targets(module, spec, ranks, scales)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
    shardings = adapter_shardings(module, targets) if module.rules.mesh is not None else None
    _wire(module, targets, spec.lora_dropout, dtype)
    new_graphdef, _ = nnx.split(module)
    adapters = init_adapters(targets, seed, dtype, shardings, abstract=is_abstract(params))
    return new_graphdef, merge_trees(params, adapters), LoraInfo(targets, spec.lora_dropout)


def unmerge(params: Any) -> tuple[dict, dict]:
    """(base, adapters): the adapted tree taken apart. The base comes back bit for bit because
    adapters are never folded into it during training; subtracting s*A@B from merged f32
    weights (PEFT's unmerge_adapter) cannot promise that, since rounding W + dW drops low bits
    of W wherever dW is comparable in size."""
    base, adapters = {}, {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_quantized):
        keys = path_keys(path)
        set_path(adapters if keys[-1] in ADAPTER_KEYS else base, keys, leaf)
    return base, adapters


def _is_quantized(x: Any) -> bool:
    from llm.peft.quant import QTensor

    return isinstance(x, QTensor)


def delta(a: jax.Array, b: jax.Array, target: LoraTarget) -> jax.Array:
    """s * A @ B in the kernel's layout (*lead, *in, *out), computed in f32."""
    a2 = a.reshape(*target.lead, math.prod(target.in_shape), target.rank).astype(jnp.float32)
    b2 = b.reshape(*target.lead, target.rank, math.prod(target.out_shape)).astype(jnp.float32)
    d = jnp.einsum("...ir,...ro->...io", a2, b2, precision=jax.lax.Precision.HIGHEST)
    return (target.scale * d).reshape(*target.lead, *target.in_shape, *target.out_shape)


def merge(params: Any, info: LoraInfo) -> dict:
    """The base-structured tree with every adapter folded in: W + s A B (a quantized base is
    dequantized first). Loads with the base graphdef; logits match the adapted model."""
    return _merge_jit(params, info)


@functools.partial(jax.jit, static_argnums=1)
def _merge_jit(params: Any, info: LoraInfo) -> dict:
    from llm.peft.quant import QTensor

    base, adapters = unmerge(params)
    for t in info.targets:
        node = get_path(base, t.path)
        kernel = node["kernel"]
        w = kernel.dequantize() if isinstance(kernel, QTensor) else kernel
        a = get_path(adapters, (*t.path, "lora_a"))
        b = get_path(adapters, (*t.path, "lora_b"))
        node["kernel"] = (w.astype(jnp.float32) + delta(a, b, t)).astype(w.dtype)
    return base


def dropout_leaves(info: LoraInfo, rng: jax.Array | None) -> dict:
    """The per-step dropout inputs for a graphdef built with dropout: fresh keys per layer and
    the rate, or rate 0 (the identity) when rng is None (evaluation, inference)."""
    out: dict = {}
    rate = jnp.asarray(info.dropout if rng is not None else 0.0, jnp.float32)
    for i, t in enumerate(info.targets):
        key = jax.random.fold_in(rng if rng is not None else jax.random.key(0), i)
        if t.lead:
            data = jax.random.key_data(jax.random.split(key, t.lead[0]))
        else:
            data = jax.random.key_data(key)
        set_path(out, (*t.path, "lora_dropout_key"), data)
        set_path(out, (*t.path, "lora_dropout_rate"), jnp.broadcast_to(rate, t.lead))
    return out


def with_runtime_leaves(params: Any, info: LoraInfo, rng: jax.Array | None) -> Any:
    """params plus the dropout leaves when the adapters were built with dropout."""
    if info.dropout <= 0:
        return params
    return merge_trees(params, dropout_leaves(info, rng))
