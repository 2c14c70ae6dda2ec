"""Whole-checkpoint conversion between Hugging Face model directories and params checkpoints
(llm.checkpoint.params_io: what `llm generate --checkpoint` and training's init_from read).
`llm convert` parses the arguments and prints; everything else is here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import ml_collections

from llm.errors import UserError

SOURCE_HF_CONFIG = "hf_config.json"  # the imported model's config.json, kept for a faithful export
SOURCE_GENERATION_CONFIG = "hf_generation_config.json"  # and its generation_config.json (sampling defaults)


def conversion_rules(base: ml_collections.ConfigDict):
    """A fully sharded (fsdp over every device) mesh: a conversion keeps one copy of the weights
    spread over the devices instead of one per device."""
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    mesh_cfg = ml_collections.ConfigDict(base.mesh.to_dict())
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = 1, -1, 1
    return AxisRules.from_config(base.mesh.rules, build_mesh(mesh_cfg))


@dataclasses.dataclass(frozen=True)
class Imported:
    out: Path
    config: ml_collections.ConfigDict  # the checkpoint's config (architecture from the HF config.json)
    n_params: int  # including vocab padding


def from_hf(src: str | Path, out: str | Path, base: ml_collections.ConfigDict | None = None,
            overrides: list[str] | tuple = (), rules=None) -> Imported:
    """Import `src` and save it as a params checkpoint in `out` (with its tokenizer and the source
    config.json, which to_hf uses for a faithful export)."""
    from llm.checkpoint.params_io import TOKENIZER_DIR, save_params
    from llm.interop.hf_config import read_hf_config
    from llm.interop.hf_import import load_hf_checkpoint, tokenizer_source
    from llm.model.build import count_params

    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new directory")
    from llm.interop.hf_reward import read_reward_head, write_head_file

    reward_head = read_reward_head(src)  # a num_labels=1 sequence classifier keeps its score head
    config, _, params = load_hf_checkpoint(src, rules=rules, base=base, overrides=overrides)
    tok = tokenizer_source(src)
    if tok is not None:
        config.data.tokenizer = str(out / TOKENIZER_DIR)
    save_params(out, params, config, tokenizer_dir=tok)
    if reward_head is not None:
        write_head_file(out, reward_head)
    (out / SOURCE_HF_CONFIG).write_text(json.dumps(read_hf_config(src), indent=2) + "\n")
    if (Path(src) / "generation_config.json").is_file():
        from llm.interop.hf_generation import read_generation_config

        read_generation_config(src)  # a malformed file stops here, naming it
        (out / SOURCE_GENERATION_CONFIG).write_bytes((Path(src) / "generation_config.json").read_bytes())
    return Imported(out, config, count_params(params))


def to_hf(checkpoint: str | Path | None, out: str | Path, dtype: str | None = None, model_type: str | None = None,
          max_shard_size: str = "5GB", workdir: str | Path | None = None, pad_token_id: int | None = None) -> Path:
    """Export a params checkpoint directory (or a workdir's latest checkpoint) as a Hugging Face
    model directory; returns `out`. A reward model (reward_head.safetensors beside the params,
    or in a workdir's merged/) becomes a num_labels=1 `*ForSequenceClassification`."""
    from llm.checkpoint.export import restore_params
    from llm.checkpoint.params_io import TOKENIZER_DIR, load_params
    from llm.interop.hf_export import export_hf, parse_size
    from llm.interop.hf_reward import read_head_file

    max_bytes = parse_size(max_shard_size)
    if workdir is not None:
        checkpoint = Path(workdir)
        config, params, _ = restore_params(workdir)
    else:
        checkpoint = Path(checkpoint)
        config, params = load_params(checkpoint)
    source = checkpoint / SOURCE_HF_CONFIG
    tokenizer = checkpoint / TOKENIZER_DIR
    reward_head = read_head_file(checkpoint / "merged" if workdir is not None else checkpoint)
    if pad_token_id is not None and reward_head is None:
        raise UserError(f"--pad-token-id is for reward models, but {str(checkpoint)!r} has no reward_head.safetensors; drop it")
    export_hf(
        config, params, out, tokenizer if tokenizer.is_dir() else None, dtype=dtype, model_type=model_type,
        source_hf_config=json.loads(source.read_text()) if source.is_file() else None, max_shard_bytes=max_bytes,
        reward_head=reward_head, pad_token_id=pad_token_id,
        source_generation_config=json.loads(gen.read_text()) if (gen := checkpoint / SOURCE_GENERATION_CONFIG).is_file() else None,
    )
    return Path(out)
