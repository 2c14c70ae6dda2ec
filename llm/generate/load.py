"""Open a params-only checkpoint (llm.checkpoint.params_io), a training workdir or a Hugging Face
model directory (imported on the fly) for generation: its config (with overrides such as the
mesh), the model placed on the mesh, and its tokenizer."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

import jax
import ml_collections

from llm.checkpoint.params_io import TOKENIZER_DIR, load_config_json, load_params
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.data.tokenizer import Tokenizer, load_tokenizer
from llm.errors import UserError
from llm.generate.generator import Generator
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

log = logging.getLogger("llm")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    generator: Generator


def _is_hf(directory: str | Path) -> bool:
    """A Hugging Face model directory: generation imports it on the fly (as `llm convert from-hf`)."""
    from llm.interop.hf_config import is_hf_model_dir

    return is_hf_model_dir(directory)


def checkpoint_config(directory: str | Path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The checkpoint's stored config with `a.b=value` overrides applied (mesh, precision...);
    for a Hugging Face model directory, the config its import gives (hf_to_config). The
    tokenizer belongs to the checkpoint: an override naming another would be ignored, so it is
    refused."""
    overrides = list(overrides)
    for override in overrides:
        if override.split("=", 1)[0].strip() == "data.tokenizer":
            raise UserError(
                f"--config.{override}: the tokenizer comes with the checkpoint {str(directory)!r} (its tokenizer/ directory); "
                "drop the override, or re-export the model with the tokenizer it was trained with"
            )
    if _is_hf(directory):
        from llm.interop.hf_config import hf_to_config, read_hf_config
        from llm.interop.hf_import import tokenizer_source

        from llm.interop.hf_tokenizer import apply_hf_startup, missing_tokenizer_json

        config = hf_to_config(read_hf_config(directory), overrides=overrides)
        if tokenizer_source(directory) is None or not (Path(directory) / "tokenizer.json").is_file():
            raise missing_tokenizer_json(directory)  # the prompt must be encoded as transformers encodes it
        config.data.tokenizer = str(Path(directory).absolute())
        apply_hf_startup(config, directory)  # data.add_bos as the tokenizer's post-processor does
        return config
    config = load_config_json(directory)
    if overrides:
        config = apply_overrides(config, overrides)
        validate_config(config)
    return config


def checkpoint_tokenizer(directory: str | Path, config: ml_collections.ConfigDict) -> Tokenizer:
    """DIR/tokenizer (a Hugging Face directory: DIR itself), or the byte tokenizer when the model
    was trained on bytes."""
    tok_dir = Path(directory) if _is_hf(directory) else Path(directory) / TOKENIZER_DIR
    if tok_dir.is_dir():
        tokenizer = load_tokenizer(tok_dir)
    elif config.data.tokenizer == "bytes":
        tokenizer = load_tokenizer("bytes")
    else:
        raise UserError(
            f"{str(directory)!r} has no {TOKENIZER_DIR}/ directory; re-export the checkpoint with its tokenizer"
        )
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.model.vocab_size}; "
            "this tokenizer does not belong to the checkpoint"
        )
    return tokenizer


def load_for_generation(directory: str | Path, config: ml_collections.ConfigDict) -> LoadedModel:
    """Restore the params directly into their shardings on the mesh the config describes."""
    graphdef, params = load_model_params(directory, config)
    tokenizer = checkpoint_tokenizer(directory, config)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return LoadedModel(config, tokenizer, Generator(graphdef, params, pad_id=pad))


def load_model_params(directory: str | Path, config: ml_collections.ConfigDict) -> tuple:
    """(graphdef, params) of a checkpoint, workdir or Hugging Face directory, restored directly
    into their shardings on the mesh the config describes (evaluation scores these params)."""
    mesh = build_mesh(config.mesh)
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    spec = model_spec(config, vocab_shards=rules.shards("vocab"))
    graphdef, abstract = abstract_model(spec, rules)
    shardings = param_shardings(abstract, spec, rules)
    if _is_hf(directory):
        from llm.interop.hf_import import load_hf_checkpoint

        log.info("%s is a Hugging Face model directory: importing it for this run (`llm convert from-hf` saves the import)", directory)
        _, graphdef, params = load_hf_checkpoint(directory, rules, base=config)
    elif (Path(directory) / "checkpoints").is_dir() and not (Path(directory) / "params").is_dir():
        from llm.checkpoint.export import restore_params  # a training workdir: its latest valid checkpoint

        _, params, _ = restore_params(directory)
        params = jax.device_put(params, shardings)
    else:
        _, params = load_params(directory, shardings)
    return graphdef, params
