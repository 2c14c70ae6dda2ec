"""`llm bench data`: tokens/s of the input pipeline (read, tokenize, pack, batch) on real text.

A config whose data source is synthetic (the `small` preset) is measured on the built-in text
with its tokenizer, so the figure is about the real pipeline, not the random-token stand-in.
A sentencepiece model with the model's vocabulary size (capped at 8192) is also trained on a
slice of the built-in text and measured, since tokenization is where real pipelines spend time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import ml_collections

from llm.config.loading import load_config
from llm.data.pipeline import make_batches

WARMUP_BATCHES = 3


def measure(config: ml_collections.ConfigDict, min_seconds: float = 3.0, max_batches: int = 2000) -> dict[str, float]:
    """Real tokens per second after a short warm-up, plus padding share. A real token is a
    position holding a document's token (segment id > 0), whether or not it carries loss."""
    it = make_batches(config)
    try:
        for _ in range(WARMUP_BATCHES):
            next(it)
        real = slots = batches = 0
        start = time.perf_counter()
        while batches < max_batches:
            b = next(it)
            real += int((b["segment_ids"] > 0).sum())
            slots += b["segment_ids"].size
            batches += 1
            if time.perf_counter() - start >= min_seconds:
                break
        seconds = time.perf_counter() - start
    finally:
        it.close()
    return {"tokens_per_s": real / seconds, "batches_per_s": batches / seconds, "padding_fraction": 1 - real / slots,
            "tokens": real, "slots": slots, "batches": batches, "seconds": seconds}


def _bench_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.data.source == "synthetic":
        config.data.source = "text"
        config.data.path = ""
    return config


def _sentencepiece_config(config: ml_collections.ConfigDict, directory: Path) -> tuple[ml_collections.ConfigDict, float]:
    from llm.data.texts import iter_texts
    from llm.data.tokenizer import train_sentencepiece

    vocab = min(int(config.model.vocab_size), 8192)
    start = time.perf_counter()
    tokenizer = train_sentencepiece(iter_texts(config, "train", 3_000_000), vocab)
    train_seconds = time.perf_counter() - start
    path = tokenizer.save(directory)
    sp = ml_collections.ConfigDict(config.to_dict())
    sp.data.tokenizer = str(path)
    return sp, train_seconds


def run_data_bench(config: ml_collections.ConfigDict, *, min_seconds: float = 3.0) -> dict[str, Any]:
    """Measure and print the pipeline throughput; returns the figures."""
    import tempfile

    bench = _bench_config(config)
    d = bench.data
    result: dict[str, Any] = {
        "source": d.source,
        "path": d.path or "builtin",
        "tokenizer": d.tokenizer,
        "seq_len": d.seq_len,
        "batch_size": d.batch_size,
        "packing": d.packing,
        "num_workers": d.num_workers,
    }
    main = measure(bench, min_seconds)
    result.update(main)
    with tempfile.TemporaryDirectory() as tmp:
        sp_config, train_seconds = _sentencepiece_config(bench, Path(tmp))
        sp = measure(sp_config, min_seconds)
    result["sentencepiece"] = {"vocab_size": min(int(config.model.vocab_size), 8192), "train_seconds": train_seconds, **sp}
    result["tokens_per_s_sentencepiece"] = sp["tokens_per_s"]
    line = (
        f"data pipeline: {result['tokens_per_s']:,.0f} tokens/s ({d.tokenizer}), "
        f"{sp['tokens_per_s']:,.0f} tokens/s (sentencepiece {result['sentencepiece']['vocab_size']}), "
        f"padding {main['padding_fraction']:.1%}, batch {d.batch_size}x{d.seq_len}, workers {d.num_workers}"
    )
    print(line)
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["data"])."""
    return run_data_bench(load_config(args.config, args.config_overrides))
