"""The preference pairs of a reward-model or DPO run, loaded once and batched by the loop.

Both splits are tokenized up front (llm.data.pairs), so the loop's `make_batches` hook is a
cheap constructor and batch k is a pure function of (seed, k) (llm.data.pair_packing).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from llm.config.validate import validate_config
from llm.data.pair_packing import PairBatches
from llm.data.pairs import PairStats, TokenPair, load_pairs
from llm.data.pipeline import build_tokenizer
from llm.errors import ConfigError
from llm.finetune.start import copy_config
from llm.train.metrics import plot_metric

log = logging.getLogger("llm")


@dataclasses.dataclass
class PairData:
    """Train and validation pairs and how they are packed. `values[split]` holds extra
    per-sequence arrays (name -> (n_pairs, 2) f32) the batches carry, e.g. reference log-probs."""

    config: ml_collections.ConfigDict
    train: list[TokenPair]
    validation: list[TokenPair]
    stats: dict[str, PairStats]
    layout: str
    max_pairs: int
    pad_id: int
    with_margin: bool = False
    values: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=lambda: {"train": {}, "validation": {}})

    def pairs(self, split: str) -> list[TokenPair]:
        return self.train if split == "train" else self.validation

    def batches(self, split: str, process_index: int = 0, process_count: int = 1, *, train: bool | None = None) -> PairBatches:
        d = self.config.data
        return PairBatches(
            self.pairs(split), rows=d.batch_size, seq_len=d.seq_len, max_pairs=self.max_pairs, layout=self.layout,
            seed=d.seed, train=(split == "train") if train is None else train, pad_id=self.pad_id,
            process_index=process_index, process_count=process_count, values=self.values[split],
            with_margin=self.with_margin,
        )

    def make_batches(self, config, split: str, process_index: int, process_count: int) -> PairBatches:
        """The loop's make_batches hook."""
        return self.batches(split, process_index, process_count)


def load_pair_data(config: ml_collections.ConfigDict, layout: str, max_pairs: int, with_margin: bool = False) -> PairData:
    """Tokenize both splits. Reward rows are unshifted (a sequence of n tokens takes n positions,
    not n - 1), so their pairs are fitted to data.seq_len - 2."""
    fit = config
    if layout == "reward":
        fit = copy_config(config)
        fit.data.seq_len = config.data.seq_len - 2
    train, train_stats = load_pairs(fit, "train")
    valid, valid_stats = load_pairs(fit, "validation")
    pad_id = build_tokenizer(config).pad_id
    log.info("preference pairs: %d train, %d validation", len(train), len(valid))
    return PairData(config, train, valid, {"train": train_stats, "validation": valid_stats}, layout, max_pairs,
                    0 if pad_id is None else pad_id, with_margin)


def gather(x: Any) -> np.ndarray:
    """A step output on the host, whole (all processes' rows)."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else jax.device_get(x))


def per_pair(data: PairData, split: str, setup, fn, params, frozen) -> np.ndarray:
    """(n_pairs, 2) f32: `fn(params, frozen, batch) -> (rows, 2 * max_pairs)` per-segment values
    over one in-order pass of `split`, put back in pair order."""
    pairs = data.pairs(split)
    out = np.full((len(pairs), 2), np.nan, np.float32)
    batches = data.batches(split, jax.process_index(), jax.process_count(), train=False)
    whole = data.batches(split, train=False)  # the global row plan (every process's rows)
    procs = jax.process_count()
    local = data.config.data.batch_size // procs
    for k, batch in enumerate(batches):
        values = gather(fn(params, frozen, setup.shard_batch(batch)))  # process 0's rows, then process 1's, ...
        plan = whole.global_rows(k)
        for j in range(values.shape[0]):
            members = plan[(j % local) * procs + j // local]  # each process holds global rows p, p + P, ...
            for slot, i in enumerate(members):
                out[i] = values[j, 2 * slot : 2 * slot + 2]
    if np.isnan(out).any():
        raise RuntimeError(f"{int(np.isnan(out).any(axis=1).sum())} {split} pairs got no value")  # a packing bug, not bad input
    return out


def pairs_of(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(rows, 2 * pairs) per-segment values -> chosen and rejected, each (rows * pairs,)."""
    return x[:, 0::2].reshape(-1), x[:, 1::2].reshape(-1)


def heldout_metrics(data: PairData, config: ml_collections.ConfigDict, workdir: Path, margin_key: str):
    """The task's final_metrics: the loss's metrics over the whole validation split, and the
    margin plot."""

    def run(setup, trainable, frozen) -> dict:
        from llm.train.loop import evaluate

        batches = data.make_batches(config, "validation", jax.process_index(), jax.process_count())
        result = evaluate(setup, trainable, frozen, batches, 1 << 30)
        metrics_path = workdir / "metrics.jsonl"
        if jax.process_index() == 0 and metrics_path.is_file():
            plot_metric(metrics_path, workdir / "margins.png", margin_key, f"{margin_key} (chosen - rejected)")
        return {f"heldout_{k[len('eval_'):]}": v for k, v in result.items() if k != "eval_tokens"} | {
            "heldout_pairs": len(data.validation)}

    return run


def check_pair_config(config: ml_collections.ConfigDict, task: str, command: str) -> None:
    """What `llm rm` (task "rm" -> finetune.task=reward) and `llm dpo` share: the task, the
    preference data format and the pairs per row of config[section]."""
    validate_config(config)
    want = "reward" if task == "rm" else task
    if config.finetune.task != want:
        raise ConfigError(f"finetune.task={config.finetune.task!r}; `{command}` runs finetune.task={want}")
    if config.data.format != "preference":
        raise ConfigError(f"data.format={config.data.format!r}; `{command}` reads data.format=preference ({{prompt, chosen, rejected}} records)")
    per_row = config[task].max_pairs_per_row
    if int(per_row) < 1:
        raise ConfigError(f"{task}.max_pairs_per_row={per_row} must be at least 1")
