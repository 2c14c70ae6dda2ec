"""Params-only checkpoints: the one on-disk format for finished weights.

    DIRECTORY/params       Orbax PyTree checkpoint of the parameter pure dict
    DIRECTORY/config.json  the full ml-collections config, as JSON
    DIRECTORY/tokenizer/   the tokenizer files (optional)

`llm export`, `llm generate --checkpoint DIR` and `llm convert` all read and write this. Arrays
are stored uncompressed: compressing random-looking float weights saves almost nothing, and
Orbax's compressing writer holds a second host copy of every array while it works, which is
what a conversion of a model that barely fits in memory cannot afford.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from llm.checkpoint.abandoned_reads import quiet_abandoned_reads
from llm.config.base import base_config
from llm.errors import UserError
from llm.pytree import with_shardings

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"

# Files that make up a tokenizer (Hugging Face and ours); anything else in a model directory
# (weights, configs) is not copied. `*.model` (sentencepiece) is matched separately.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "bytes_tokenizer.json",
)

_DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The tokenizer files present in `directory` (possibly none)."""
    directory = Path(directory)
    found = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    found += sorted(p for p in directory.glob("*.model") if p.is_file())
    return found


def _require_tokenizer_files(src: str | Path) -> list[Path]:
    files = tokenizer_files(src)
    if not files:
        raise UserError(
            f"{str(src)!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])} or *.model); "
            "pass the directory that contains the tokenizer"
        )
    return files


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files of `src` into `dst`; an error if there are none."""
    files = _require_tokenizer_files(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dst / f.name)
    return [f.name for f in files]


# Restores run in groups of leaves of about this many bytes (a larger leaf is a group of its
# own): Orbax reads each array into a host buffer before placing it, so the bytes in flight are
# the transient memory on top of the params.
RESTORE_GROUP_BYTES = 256 * 2**20


def _nbytes(x: Any) -> int:
    return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def _handler(in_flight_bytes: int = 0) -> ocp.PyTreeCheckpointHandler:
    """Orbax refuses an array larger than its concurrency budget, so size it to the largest."""
    gb = max(4, math.ceil(in_flight_bytes / 1e9))
    return ocp.PyTreeCheckpointHandler(use_compression=False, save_concurrent_gb=gb, restore_concurrent_gb=gb)


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def _overlay(dst: ml_collections.ConfigDict, src: dict, prefix: str, where: str) -> None:
    """Set `src` values onto the schema `dst`, restoring tuple/float types lost in JSON."""
    for key, value in src.items():
        dotted = prefix + key
        if key not in dst:
            if prefix == "mesh.rules.":  # custom logical-axis rules are legitimate extra keys
                with dst.unlocked():
                    dst[key] = tuple(value)
                continue
            raise UserError(f"{where} has unknown config key {dotted!r}; it was written by another llm version")
        current = dst[key]
        if isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise UserError(f"{where}: config key {dotted!r} should be a section, got {value!r}")
            _overlay(current, value, dotted + ".", where)
        else:
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            try:
                dst[key] = value
            except TypeError:
                raise UserError(f"{where}: config key {dotted!r} has {value!r}, of the wrong type for this llm version") from None


def config_from_json(text: str, where: str = "config.json") -> ml_collections.ConfigDict:
    """The inverse of `config_to_json`: a locked config on today's schema."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where} is not valid JSON ({err}); the checkpoint is damaged") from None
    config = base_config()
    with config.unlocked():
        _overlay(config, data, "", where)
    config.lock()
    return config


def load_config_json(directory: str | Path) -> ml_collections.ConfigDict:
    """The config stored next to a params checkpoint."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise UserError(f"checkpoint directory {str(directory)!r} does not exist; pass a directory written by `llm export` or `llm convert`")
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; {str(directory)!r} is not a complete params checkpoint")
    return config_from_json(path.read_text(), str(path))


def save_params(
    directory: str | Path,
    params: Any,
    config: ml_collections.ConfigDict,
    tokenizer_dir: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Write params (cast to `dtype` while serialising, if given), config and tokenizer.

    Every process must call this (Orbax writes shards collectively); only process 0 writes the
    JSON and tokenizer files.
    """
    directory = Path(directory).absolute()
    if (directory / PARAMS_DIR).exists():
        raise UserError(f"{str(directory)!r} already holds a params checkpoint; choose a new directory or delete it")
    if dtype is not None and dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if tokenizer_dir is not None:
        _require_tokenizer_files(tokenizer_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config = ml_collections.ConfigDict(config.to_dict())
    stored = {np.dtype(x.dtype).name for x in jax.tree_util.tree_leaves(params)}
    if dtype is None and len(stored) == 1 and stored <= set(_DTYPES):
        config.precision.params = stored.pop()  # the config describes what is on disk
    if dtype is not None:
        config.precision.params = dtype
        save_args = jax.tree_util.tree_map(lambda _: ocp.SaveArgs(dtype=np.dtype(_DTYPES[dtype])), params)
    else:
        save_args = None
    largest = max((_nbytes(x) for x in jax.tree_util.tree_leaves(params)), default=0)
    checkpointer = ocp.Checkpointer(_handler(largest))
    checkpointer.save(directory / PARAMS_DIR, args=ocp.args.PyTreeSave(params, save_args=save_args))
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(config_to_json(config))
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, directory / TOKENIZER_DIR)
    return directory


def int_keys(tree: Any) -> Any:
    """Orbax stores dict keys as strings; our layer lists use int keys."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): int_keys(v) for k, v in tree.items()}
    return tree


def _paths(tree: Any) -> list[str]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: not isinstance(x, dict))
    return sorted(jax.tree_util.keystr(p) for p, _ in leaves)


def stored_shapes(directory: str | Path) -> Any:
    """Pure dict of jax.ShapeDtypeStruct (no sharding) describing the stored params."""
    path = Path(directory) / PARAMS_DIR
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is missing; {str(directory)!r} is not a complete params checkpoint")
    try:
        meta = ocp.Checkpointer(_handler()).metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for damaged files
        raise UserError(f"{str(path)!r} is damaged or truncated ({type(err).__name__}); re-export it".splitlines()[0]) from err
    return int_keys(jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree))


def load_params(directory: str | Path, shardings: Any = None) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, params) with each array restored directly into its sharding.

    `shardings` is a pure dict of jax.sharding.Sharding matching the params tree (e.g. from
    llm.model.build.param_shardings); None puts every array on the default device.
    """
    directory = Path(directory).absolute()
    config = load_config_json(directory)
    shapes = stored_shapes(directory)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, shapes)
    elif _paths(shardings) != _paths(shapes):
        missing = sorted(set(_paths(shardings)) - set(_paths(shapes)))
        extra = sorted(set(_paths(shapes)) - set(_paths(shardings)))
        raise UserError(
            f"params in {str(directory)!r} do not match the model: missing {missing[:3]}, unexpected {extra[:3]}; "
            "use the config stored with the checkpoint"
        )
    target = with_shardings(shapes, shardings)
    restored: dict = {}
    for group in _restore_groups(target):
        try:
            with quiet_abandoned_reads():
                part = ocp.Checkpointer(_handler(sum(_nbytes(x) for x in jax.tree_util.tree_leaves(group)))).restore(
                    directory / PARAMS_DIR,
                    args=ocp.args.PyTreeRestore(
                        item=group, restore_args=ocp.checkpoint_utils.construct_restore_args(group), partial_restore=True
                    ),
                )
        except Exception as err:  # noqa: BLE001 - Orbax raises many types for damaged files
            first = str(err).splitlines()[0] if str(err) else ""
            raise UserError(
                f"{str(directory / PARAMS_DIR)!r} cannot be restored ({type(err).__name__}: {first[:200]}); "
                "it is truncated, damaged or does not match the requested shardings"
            ) from err
        _merge(restored, int_keys(part))
    return config, restored


def _restore_groups(target: Any) -> list[dict]:
    """Sub-trees of `target`, largest leaves first, each about RESTORE_GROUP_BYTES."""
    leaves = jax.tree_util.tree_leaves_with_path(target)
    leaves.sort(key=lambda kv: -_nbytes(kv[1]))
    groups: list[dict] = []
    size = RESTORE_GROUP_BYTES
    for path, leaf in leaves:
        if size + _nbytes(leaf) > RESTORE_GROUP_BYTES:
            groups.append({})
            size = 0
        node = groups[-1]
        keys = [str(k.key) for k in path]  # Orbax matches partial restores by string keys
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
        size += _nbytes(leaf)
    return groups


def _merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict):
            _merge(dst.setdefault(key, {}), value)
        else:
            dst[key] = value
