"""Import a Hugging Face model directory: config.json -> our config, safetensors -> params.

Tensors are read one at a time and each is placed directly into its target sharding, largest
first: the transient host copies of a tensor (read, cast, padded) then happen while little
else is resident, so peak host memory stays near one copy of the weights.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.interop.hf_config import hf_to_config, read_hf_config
from llm.interop.safetensors_io import SafetensorsReader
from llm.interop.weight_map import Rule, ignorable, weight_rules
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import ModelSpec, model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.pytree import get_path, path_str, set_path

log = logging.getLogger("llm")
_COLLECT_BYTES = 32 * 2**20


def place(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Put a host array on the devices of `sharding`, each device receiving only its slice
    (works in multi-process jobs: a process only touches its addressable devices).

    JAX's transfer path leaves a reference cycle holding the host array; collecting it after a
    big transfer lets the array be freed as soon as the caller drops it, instead of at some
    later garbage collection while the next tensors are already loaded.
    """
    out = jax.make_array_from_callback(array.shape, sharding, lambda index: array[index]).block_until_ready()
    if array.nbytes >= _COLLECT_BYTES:
        gc.collect()
    return out


def _scanned(path: tuple) -> tuple:
    """Our path in the scan_layers=True tree: the layer index moves into the array."""
    return ("blocks", *path[2:]) if path[0] == "blocks" else path


def check_names(reader: SafetensorsReader, rules: list[Rule], spec: ModelSpec) -> None:
    """Every rule has its tensor with the expected shape; no tensor is left unused."""
    wanted = {r.hf: r for r in rules}
    missing = [name for name in wanted if name not in reader.tensors]
    if missing:
        raise UserError(
            f"{reader.src} lacks tensor {missing[0]!r} ({len(missing)} missing) that its config.json implies; "
            "the checkpoint does not match its config"
        )
    unused = [n for n in reader.names() if n not in wanted and not ignorable(n, spec)]
    if unused:
        raise UserError(
            f"{reader.src} has tensor {unused[0]!r} ({len(unused)} unused) that this {spec.family} model has no place for; "
            "the architecture is not supported as configured"
        )
    for name, rule in wanted.items():
        shape = reader.tensors[name].shape
        if shape != rule.hf_shape:
            raise UserError(f"tensor {name!r} has shape {shape}, but config.json implies {rule.hf_shape}")
        if reader.tensors[name].dtype not in ("F32", "BF16", "F16", "F64"):
            raise UserError(f"tensor {name!r} has dtype {reader.tensors[name].dtype}; only float checkpoints can be imported")


def _read(reader: SafetensorsReader, rule: Rule, dtype) -> tuple[np.ndarray, ...]:
    return rule.to_ours(reader.read(rule.hf).astype(dtype, copy=False))


def _check_shape(path: tuple, array: np.ndarray, expected: tuple) -> None:
    if tuple(array.shape) != tuple(expected):
        raise UserError(f"param {path_str(path)}: the checkpoint gives shape {array.shape}, the model expects {tuple(expected)}")


def _import_one(reader: SafetensorsReader, rule: Rule, shardings: Any, shapes: Any, params: dict) -> None:
    """One Hugging Face tensor -> its param(s), placed. A function, so every host copy is
    dropped on return rather than lingering in a loop variable into the next tensor."""
    dtype = get_path(shapes, rule.ours[0]).dtype
    for path, array in zip(rule.ours, _read(reader, rule, dtype)):
        _check_shape(path, array, get_path(shapes, path).shape)
        set_path(params, path, place(array, get_path(shardings, path)))


def _import_stacked(reader: SafetensorsReader, group: list[Rule], shardings: Any, shapes: Any, params: dict) -> None:
    """One per-layer rule across all layers -> stacked (layers, ...) params for scan_layers."""
    targets = [_scanned(p) for p in group[0].ours]
    buffers = [np.empty(get_path(shapes, t).shape, get_path(shapes, t).dtype) for t in targets]
    for rule in sorted(group, key=lambda r: r.layer):
        for path, buf, array in zip(rule.ours, buffers, _read(reader, rule, buffers[0].dtype)):
            _check_shape(path, array, buf.shape[1:])
            buf[rule.layer] = array
    for target, buf in zip(targets, buffers):
        set_path(params, target, place(buf, get_path(shardings, target)))


def import_params(reader: SafetensorsReader, spec: ModelSpec, shardings: Any, shapes: Any) -> dict:
    """Our param pure dict, every leaf placed with its sharding from `shardings`.

    `shapes` is the matching tree of ShapeDtypeStructs (the abstract model); its dtypes are the
    target parameter dtypes. Largest first: the transient host copies of the big tensors then
    coexist with few placed params.
    """
    rules = weight_rules(spec, reader.names())
    check_names(reader, rules, spec)
    params: dict = {}
    if not spec.scan_layers:
        for rule in sorted(rules, key=lambda r: -reader.tensors[r.hf].nbytes):
            _import_one(reader, rule, shardings, shapes, params)
        return params
    groups: dict[tuple, list[Rule]] = defaultdict(list)
    for rule in rules:
        groups[rule.kind].append(rule)
    for group in sorted(groups.values(), key=lambda g: -sum(reader.tensors[r.hf].nbytes for r in g)):
        if group[0].layer is None:
            _import_one(reader, group[0], shardings, shapes, params)
        else:
            _import_stacked(reader, group, shardings, shapes, params)
    return params


def tokenizer_source(src: str | Path) -> Path | None:
    """The directory's tokenizer, if it has one (tokenizer.json or a sentencepiece model)."""
    src = Path(src)
    if (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file():
        return src
    return None


def load_hf_checkpoint(
    src_dir: str | Path,
    rules: AxisRules | None = None,
    base: ml_collections.ConfigDict | None = None,
    overrides: Iterable[str] = (),
    seed: int = 0,
) -> tuple[ml_collections.ConfigDict, nnx.GraphDef, dict]:
    """(config, graphdef, params) for a Hugging Face model directory.

    `base` supplies everything but the architecture (the training config, for the init_from_hf
    start-up source); `rules` (with a mesh) decide the shardings, by default a mesh built from
    the resulting config. When `base` still uses the byte tokenizer and the directory has a
    tokenizer, data.tokenizer points at it.
    """
    hf = read_hf_config(src_dir)
    reader = SafetensorsReader(src_dir)  # refuses .bin-only directories before any work
    config = hf_to_config(hf, base, overrides)
    tok = tokenizer_source(src_dir)
    if tok is not None and config.data.tokenizer == "bytes":
        config.data.tokenizer = str(Path(tok).absolute())
    elif tok is None:
        log.warning("%s has no tokenizer.json or tokenizer.model; set data.tokenizer to the model's tokenizer", src_dir)
    from llm.interop.hf_tokenizer import apply_hf_startup

    apply_hf_startup(config, src_dir)  # BOS/EOS as transformers' tokenizer adds them (when data.tokenizer is src_dir)
    if rules is None:
        rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh))
    spec = model_spec(config, vocab_shards=rules.shards("vocab"))
    graphdef, abstract = abstract_model(spec, rules, seed)
    shardings = param_shardings(abstract, spec, rules)
    params = import_params(reader, spec, shardings, nnx.to_pure_dict(abstract))
    return config, graphdef, params
