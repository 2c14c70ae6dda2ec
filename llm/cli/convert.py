"""`llm convert`: Hugging Face checkpoints in and out, and the conversion benchmark.

  llm convert from-hf --src HF_DIR --out DIR [--config BASE.py] [--config.a.b=v ...]
  llm convert to-hf --checkpoint DIR --out HF_DIR [--dtype bfloat16] [--model-type mistral]
  llm convert bench [--preset llama-1b] [--dtype float32] [--workdir W] [--json FILE]

DIR is a params-only checkpoint (llm.checkpoint.params_io): what `llm generate --checkpoint`
and training's init_from read.
"""

from __future__ import annotations

import argparse
import time

from llm.cli.bench import add_target_parser
from llm.errors import UserError


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
    t.add_argument("--pad-token-id", type=int, help="reward models: config.json pad_token_id (default: the tokenizer's pad)")
    t.set_defaults(func=run_to_hf)

    add_target_parser(sub, "convert", command="bench")  # the same benchmark as `llm bench convert`


def run_from_hf(args: argparse.Namespace) -> int:
    from llm.config.base import base_config
    from llm.config.loading import load_config_file
    from llm.interop.convert import conversion_rules, from_hf

    overrides = list(args.config_overrides)
    base = load_config_file(args.config) if args.config else None
    mesh_chosen = bool(args.config) or any(o.startswith("mesh.") for o in overrides)
    start = time.perf_counter()
    done = from_hf(args.src, args.out, base, overrides, rules=None if mesh_chosen else conversion_rules(base or base_config()))
    print(
        f"imported {done.config.model.family} ({done.n_params / 1e6:.1f}M params incl. vocab padding, "
        f"{done.config.precision.params}) from {args.src} -> {done.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    from llm.interop.convert import to_hf

    if args.config_overrides:
        raise UserError(f"to-hf takes no --config.* overrides (got {args.config_overrides[0]!r}); the checkpoint's config is used")
    start = time.perf_counter()
    out = to_hf(args.checkpoint, args.out, args.dtype, args.model_type, args.max_shard_size, workdir=args.workdir,
                pad_token_id=args.pad_token_id)
    print(f"exported {args.workdir or args.checkpoint} -> {out} in {time.perf_counter() - start:.1f} s")
    return 0
