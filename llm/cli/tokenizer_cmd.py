"""`llm tokenizer train|encode|decode`: train a sentencepiece BPE model on the configured data
and inspect what a tokenizer does to text."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a sentencepiece tokenizer; encode / decode with one")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train a sentencepiece BPE model on the config's data source")
    t.add_argument("--config", required=True, help="a configs/*.py file; data.source / data.path name the text")
    t.add_argument("--workdir", default=None, help="also save the tokenizer as WORKDIR/tokenizer/tokenizer.model")
    t.add_argument("--out", default=None, help="output .model file or directory (default: WORKDIR/tokenizer)")
    t.add_argument("--vocab-size", type=int, default=0, help="vocabulary size (default: model.vocab_size)")
    t.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    t.add_argument("--no-byte-fallback", action="store_true", help="map unknown characters to <unk> instead of bytes")
    t.add_argument("--special", action="append", default=[], help="an extra special token (repeatable)")
    t.add_argument("--max-mb", type=float, default=64.0, help="read at most this many MB of text")
    t.set_defaults(func=run_train)

    for name, helptext in (("encode", "print token ids and pieces of text"), ("decode", "print the text of token ids")):
        e = sub.add_parser(name, help=helptext)
        e.add_argument("items", nargs="*", help="texts (encode) or ids (decode); stdin when absent")
        e.add_argument("--tokenizer", default=None, help="'bytes', a .model file or a tokenizer directory")
        e.add_argument("--config", default=None, help="use this config's data.tokenizer")
        e.set_defaults(func=run_encode if name == "encode" else run_decode)


def _output_path(args: argparse.Namespace) -> Path:
    if args.out:
        out = Path(args.out)
        return out if out.suffix == ".model" else out / "tokenizer.model"
    if args.workdir:
        return Path(args.workdir) / "tokenizer" / "tokenizer.model"
    raise UserError("llm tokenizer train needs --out PATH or --workdir DIR")


def run_train(args: argparse.Namespace) -> int:
    from llm.config.loading import load_config
    from llm.data.texts import iter_texts
    from llm.data.tokenizer import train_sentencepiece

    config = load_config(args.config, args.config_overrides)
    vocab = args.vocab_size or config.model.vocab_size
    out = _output_path(args)
    texts = iter_texts(config, "train", int(args.max_mb * 1e6))
    tokenizer = train_sentencepiece(texts, vocab, model_type=args.model_type, byte_fallback=not args.no_byte_fallback, user_symbols=args.special)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(tokenizer.model_bytes)
    if args.workdir and out.parent != Path(args.workdir) / "tokenizer":
        tokenizer.save(Path(args.workdir) / "tokenizer")
    sample = "".join(iter_texts(config, "validation", 200_000)) if config.data.eval_fraction > 0 or config.data.eval_path else ""
    summary = {"path": str(out), "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint}
    if sample:
        summary["bytes_per_token_validation"] = round(len(sample.encode()) / max(1, len(tokenizer.encode(sample))), 3)
    print(json.dumps(summary))
    return 0


def _tokenizer(args: argparse.Namespace):
    from llm.data.tokenizer import load_tokenizer

    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    if args.config:
        from llm.config.loading import load_config

        return load_tokenizer(load_config(args.config, args.config_overrides).data.tokenizer)
    raise UserError("pass --tokenizer SPEC or --config FILE")


def run_encode(args: argparse.Namespace) -> int:
    tokenizer = _tokenizer(args)
    texts = args.items or [sys.stdin.read()]
    for text in texts:
        ids = tokenizer.encode(text)
        piece = getattr(tokenizer, "id_to_piece", None)
        record = {"ids": ids, "count": len(ids)}
        if piece is not None:
            record["pieces"] = [piece(i) for i in ids]
        print(json.dumps(record, ensure_ascii=False))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    tokenizer = _tokenizer(args)
    raw = args.items or sys.stdin.read().replace(",", " ").replace("[", " ").replace("]", " ").split()
    try:
        ids = [int(x) for x in raw]
    except ValueError as err:
        raise UserError(f"decode takes integer ids ({err})") from None
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise UserError(f"ids {bad[:5]} are outside the vocabulary 0..{tokenizer.vocab_size - 1}")
    print(tokenizer.decode(ids))
    return 0
