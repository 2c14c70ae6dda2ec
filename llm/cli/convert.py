"""`llm convert`: Hugging Face checkpoints in and out, and the conversion benchmark.

  llm convert from-hf --src HF_DIR --out DIR [--config BASE.py] [--config.a.b=v ...]
  llm convert to-hf --checkpoint DIR --out HF_DIR [--dtype bfloat16] [--model-type mistral]
  llm convert bench [--preset llama-1b] [--dtype float32] [--workdir W] [--json FILE]

DIR is a params-only checkpoint (llm.checkpoint.params_io): what `llm generate --checkpoint`
and training's init_from read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ml_collections

from llm.cli.bench import add_target_parser
from llm.errors import UserError

SOURCE_HF_CONFIG = "hf_config.json"  # the imported model's config.json, kept for a faithful export


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="import / export Hugging Face checkpoints",
        description="Hugging Face model directories (config.json + safetensors + tokenizer) in and out of "
        "params checkpoints (DIR/params, DIR/config.json, DIR/tokenizer/).",
    )
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION")
    sub.required = True

    f = sub.add_parser(
        "from-hf", help="a Hugging Face model directory -> a params checkpoint",
        description="Llama (2, 3, 3.1/3.2), Mistral, Qwen2/2.5 and GPT-2. Tensors are read one at a time and "
        "placed fully sharded over the devices (unless --config or --config.mesh.* choose a mesh). "
        "Example: --config.precision.params=bfloat16 keeps a bf16 checkpoint in bf16.",
    )
    f.add_argument("--src", required=True, help="directory with config.json and *.safetensors")
    f.add_argument("--out", required=True, help="new params checkpoint directory")
    f.add_argument("--config", help="configs/*.py supplying everything but the architecture (default: base config)")
    f.set_defaults(func=run_from_hf)

    t = sub.add_parser("to-hf", help="a params checkpoint -> a Hugging Face model directory")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="params checkpoint directory (llm export / llm convert from-hf)")
    src.add_argument("--workdir", help="a training workdir: its latest valid checkpoint")
    t.add_argument("--out", required=True, help="new Hugging Face model directory")
    t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="tensor dtype (default: the params')")
    t.add_argument("--model-type", choices=("llama", "mistral", "qwen2", "gpt2"), help="transformers model_type")
    t.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB")
    t.set_defaults(func=run_to_hf)

    add_target_parser(sub, "convert", command="bench")  # the same benchmark as `llm bench convert`


def _conversion_rules(base: ml_collections.ConfigDict):
    """A fully sharded (fsdp over every device) mesh: a conversion keeps one copy of the weights
    spread over the devices instead of one per device."""
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    mesh_cfg = ml_collections.ConfigDict(base.mesh.to_dict())
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = 1, -1, 1
    return AxisRules.from_config(base.mesh.rules, build_mesh(mesh_cfg))


def from_hf(src: str | Path, out: str | Path, base: ml_collections.ConfigDict | None = None,
            overrides: list[str] | tuple = (), rules=None) -> Path:
    """Import `src` and save it as a params checkpoint in `out`; returns `out`."""
    from llm.checkpoint.params_io import TOKENIZER_DIR, save_params
    from llm.interop.hf_config import read_hf_config
    from llm.interop.hf_import import load_hf_checkpoint, tokenizer_source
    from llm.model.build import count_params

    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new directory")
    start = time.perf_counter()
    config, _, params = load_hf_checkpoint(src, rules=rules, base=base, overrides=overrides)
    tok = tokenizer_source(src)
    if tok is not None:
        config.data.tokenizer = str(out / TOKENIZER_DIR)
    save_params(out, params, config, tokenizer_dir=tok)
    (out / SOURCE_HF_CONFIG).write_text(json.dumps(read_hf_config(src), indent=2) + "\n")
    print(
        f"imported {config.model.family} ({count_params(params) / 1e6:.1f}M params incl. vocab padding, "
        f"{config.precision.params}) from {src} -> {out} in {time.perf_counter() - start:.1f} s"
    )
    return out


def run_from_hf(args: argparse.Namespace) -> int:
    from llm.config.base import base_config
    from llm.config.loading import load_config_file

    overrides = list(args.config_overrides)
    base = load_config_file(args.config) if args.config else None
    mesh_chosen = bool(args.config) or any(o.startswith("mesh.") for o in overrides)
    from_hf(args.src, args.out, base, overrides, rules=None if mesh_chosen else _conversion_rules(base or base_config()))
    return 0


def to_hf(checkpoint: str | Path | None, out: str | Path, dtype: str | None = None, model_type: str | None = None,
          max_shard_size: str = "5GB", workdir: str | Path | None = None) -> Path:
    """Export a params checkpoint directory (or a workdir's latest checkpoint) as a Hugging Face model."""
    from llm.checkpoint.export import restore_params
    from llm.checkpoint.params_io import TOKENIZER_DIR, load_params
    from llm.interop.hf_export import export_hf, parse_size

    max_bytes = parse_size(max_shard_size)
    start = time.perf_counter()
    if workdir is not None:
        checkpoint = Path(workdir)
        config, params, _ = restore_params(workdir)
    else:
        checkpoint = Path(checkpoint)
        config, params = load_params(checkpoint)
    source = checkpoint / SOURCE_HF_CONFIG
    tokenizer = checkpoint / TOKENIZER_DIR
    export_hf(
        config, params, out, tokenizer if tokenizer.is_dir() else None, dtype=dtype, model_type=model_type,
        source_hf_config=json.loads(source.read_text()) if source.is_file() else None, max_shard_bytes=max_bytes,
    )
    print(f"exported {checkpoint} -> {out} in {time.perf_counter() - start:.1f} s")
    return Path(out)


def run_to_hf(args: argparse.Namespace) -> int:
    if args.config_overrides:
        raise UserError(f"to-hf takes no --config.* overrides (got {args.config_overrides[0]!r}); the checkpoint's config is used")
    to_hf(args.checkpoint, args.out, args.dtype, args.model_type, args.max_shard_size, workdir=args.workdir)
    return 0

