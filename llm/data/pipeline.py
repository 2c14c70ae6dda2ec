"""The training input pipeline: documents -> seeded global shuffle -> per-process shard ->
tokenize (Grain worker processes) -> bad-input policy -> chunk -> pack -> batch -> prefetch.

Batch k is a pure function of (config.data, k): the document order comes from an index
shuffle seeded by data.seed (reshuffled each epoch), process p of P takes global documents
p, p+P, p+2P, ..., and the worker count does not change the order (Grain's multiprocess
prefetch reads round-robin). The iterator state is a JSON-serializable dict for checkpoints.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from llm.data.batch import as_batch
from llm.data.encode import Encoded, PretrainEncoder
from llm.data.mixture import mixture_sources, parse_mixture
from llm.data.sources import BadRecord
from llm.data.shuffle import endless_shuffle
from llm.data.split import is_validation
from llm.data.tokenizer import Tokenizer, load_tokenizer
from llm.errors import ConfigError, UserError

log = logging.getLogger(__name__)

_FEATURES = ("inputs", "targets", "weights")
STATE_VERSION = 1


class _Indexed:
    """A source restricted to some of its records; yields (record, where) so errors can name a line."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        return self.source[i], self.source.where(i)


def split_indices(source, split: str, fraction: float) -> np.ndarray:
    """Record indices of `split` when validation is a held-out fraction of the keys."""
    held_out = np.fromiter((is_validation(source.key(i), fraction) for i in range(len(source))), bool, len(source))
    return np.flatnonzero(held_out if split == "validation" else ~held_out)


def _documents(config: ml_collections.ConfigDict, split: str) -> list[tuple[_Indexed, float, str]]:
    """(records of this split, weight, name) per source: one, or several for a mixture."""
    d = config.data
    if split not in ("train", "validation"):
        raise UserError(f"split={split!r}; use 'train' or 'validation'")
    entries = parse_mixture(d.mixture) if d.mixture else None
    out = []
    for source, weight, name, explicit in mixture_sources(config, split, entries):
        if explicit:
            indices = np.arange(len(source))
        else:
            indices = split_indices(source, split, d.eval_fraction)
        if len(indices) == 0:
            where = getattr(source, "root", "") or name
            raise UserError(
                f"the {split} split of data source {name!r} ({where}) is empty "
                f"({len(source)} records, data.eval_fraction={d.eval_fraction}); set data.eval_path or add documents"
            )
        out.append((_Indexed(source, indices), weight, name))
    return out


class TooLong(BadRecord):
    """An example over the length limit; data.long_documents decides (skip/fail) or, for SFT
    with long_documents=split, data.bad_input."""


class _EncodeStage:
    """Runs in the workers: (record, where) -> Encoded | BadRecord."""

    def __init__(self, encoder, max_tokens: int | None):
        self.encoder = encoder
        self.max_tokens = max_tokens

    def __call__(self, item):
        record, where = item
        out = self.encoder(record, where)
        if self.max_tokens is not None and not isinstance(out, BadRecord) and _length(out) > self.max_tokens:
            return TooLong(f"example longer than data.seq_len+1={self.max_tokens} tokens", where)
        return out


def _length(encoded) -> int:
    if isinstance(encoded, Encoded):
        return len(encoded.tokens)
    return max(len(encoded.chosen.tokens), len(encoded.rejected.tokens))


class PolicyStage:
    """Applies data.bad_input (skip | fail) in the main process, so the counts are complete."""

    def __init__(self, policy: str, long_policy: str, records: int):
        self.policy = policy
        self.long_policy = long_policy
        # More bad records in a row than the source holds means every record is bad: stop
        # instead of skipping forever.
        self.records = records
        self.bad_in_a_row = 0
        self.skipped: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def __call__(self, element):
        if not isinstance(element, BadRecord):
            self.bad_in_a_row = 0
            return element
        self.bad_in_a_row += 1
        if self.bad_in_a_row > self.records:
            counts = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
            raise UserError(f"the data source yielded no usable records ({counts}; first at {next(iter(self.first.values()), element.where)}); fix the data or its settings")
        policy = self.long_policy if isinstance(element, TooLong) else self.policy
        if policy == "fail":
            setting = "data.long_documents" if isinstance(element, TooLong) else "data.bad_input"
            raise UserError(f"bad input at {element.where}: {element.reason}; fix the data or set {setting}=skip")
        if element.reason not in self.skipped:
            self.first[element.reason] = element.where
            log.warning("skipping bad input at %s: %s (counted in the data report)", element.where, element.reason)
        self.skipped[element.reason] = self.skipped.get(element.reason, 0) + 1
        return None

    def report(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "first": dict(self.first)}


class _Chunk(grain.experimental.FlatMapTransform):
    """Split a document into (inputs, targets) pieces of at most seq_len: every token is a
    target exactly once, pieces never cross documents (data.long_documents=split), or keep only
    the first piece (truncate)."""

    def __init__(self, seq_len: int, truncate: bool):
        self.seq_len = seq_len
        self.truncate = truncate

    def flat_map(self, element: Encoded) -> Sequence[dict]:
        tokens, weights = element.tokens, element.weights
        n = len(tokens) - 1
        starts = range(0, n, self.seq_len)
        if self.truncate:
            starts = starts[:1]
        out = []
        for s in starts:
            e = min(s + self.seq_len, n)
            w = weights[s + 1 : e + 1]
            if not w.any():
                continue
            out.append({"inputs": tokens[s:e], "targets": tokens[s + 1 : e + 1], "weights": w})
        return out


def _finish(packed: dict) -> dict:
    """Grain's packed features -> the batch contract (int32 ids, float32 loss mask)."""
    segment_ids = packed["inputs_segment_ids"]
    return as_batch({
        "inputs": packed["inputs"],
        "targets": packed["targets"],
        "segment_ids": segment_ids,
        "positions": packed["inputs_positions"],
        "loss_mask": packed["weights"] * (segment_ids > 0),
    })


def _absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; outside an absl app nobody parsed them, so
    accept the defaults (the call is idempotent)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def build_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    tokenizer = load_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} ids but model.vocab_size={config.model.vocab_size}; "
            f"set model.vocab_size={tokenizer.vocab_size}"
        )
    return tokenizer


def _encoder(config: ml_collections.ConfigDict, tokenizer: Tokenizer):
    d = config.data
    if d.format == "pretrain":
        return PretrainEncoder(tokenizer, d.text_field, d.add_bos, d.add_eos)
    if d.format == "sft":
        from llm.data import formats

        return formats.SftEncoder(tokenizer, formats.chat_template(d.chat_template), d.prompt_field, d.response_field)
    if d.format == "preference":
        raise ConfigError("data.format='preference' yields chosen/rejected pairs: use llm.data.preference.make_preference_batches")
    raise ConfigError(f"data.format={d.format!r} is not one of 'pretrain', 'sft', 'preference'")


def check_batching(config: ml_collections.ConfigDict, process_index: int, process_count: int) -> int:
    d = config.data
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} is outside 0..{process_count - 1}")
    if d.batch_size % process_count:
        raise ConfigError(f"data.batch_size={d.batch_size} is not divisible by the {process_count} processes; pick a multiple")
    if d.seq_len < 1:
        raise ConfigError(f"data.seq_len={d.seq_len} must be positive")
    for key, allowed in (("bad_input", ("skip", "fail")), ("long_documents", ("split", "truncate", "skip", "fail")), ("packing", ("first_fit", "concat"))):
        if d[key] not in allowed:
            raise ConfigError(f"data.{key}={d[key]!r} is not one of {', '.join(map(repr, allowed))}")
    return d.batch_size // process_count


def synthetic_dataset(config: ml_collections.ConfigDict, rows: int, process_index: int, process_count: int) -> grain.IterDataset:
    """Random full-length rows of the model's vocabulary: no I/O, for benchmarks."""
    d = config.data
    seed, seq_len, vocab = d.seed, d.seq_len, config.model.vocab_size

    def row(index: int) -> dict:
        tokens = np.random.default_rng([seed, index]).integers(0, vocab, seq_len + 1, dtype=np.int32)
        return as_batch({
            "inputs": tokens[:-1],
            "targets": tokens[1:],
            "segment_ids": np.ones(seq_len),
            "positions": np.arange(seq_len),
            "loss_mask": np.ones(seq_len),
        })

    ds = grain.MapDataset.range(np.iinfo(np.int64).max // 2)[process_index::process_count].map(row)
    return ds.batch(rows, drop_remainder=True).to_iter_dataset()


def encoded_stream(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int, encoder, max_tokens: int | None
) -> tuple[grain.IterDataset, PolicyStage]:
    """Shuffled, sharded, encoded (in workers) records with bad input removed by the policy."""
    d = config.data
    encode = _EncodeStage(encoder, max_tokens)
    parts, records = [], 0
    for j, (docs, weight, _name) in enumerate(_documents(config, split)):
        parts.append((endless_shuffle(grain.MapDataset.source(docs), d.seed + 7919 * j), weight))
        records += len(docs)
    if len(parts) == 1:
        ds = parts[0][0]
    else:
        ds = grain.MapDataset.mix([p[0] for p in parts], weights=[p[1] for p in parts])
    ds = ds[process_index::process_count].map(encode)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=max(d.read_threads * 4, 1)))
    if d.num_workers > 0:
        _absl_flags_ready()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers, per_worker_buffer_size=d.worker_buffer_size))
    long_policy = d.long_documents if d.long_documents in ("skip", "fail") else d.bad_input
    policy = PolicyStage(d.bad_input, long_policy, records)
    return it.map(policy).filter(lambda x: x is not None), policy


def build_dataset(
    config: ml_collections.ConfigDict, split: str = "train", process_index: int = 0, process_count: int = 1
) -> tuple[grain.IterDataset, PolicyStage | None]:
    """The Grain dataset of batches for one process, and its policy stage (for skip counts)."""
    rows = check_batching(config, process_index, process_count)
    d = config.data
    if d.source == "synthetic":
        return synthetic_dataset(config, rows, process_index, process_count), None
    tokenizer = build_tokenizer(config)
    sft = d.format != "pretrain"
    limited = d.long_documents in ("skip", "fail") or (sft and d.long_documents == "split")
    it, policy = encoded_stream(config, split, process_index, process_count, _encoder(config, tokenizer), d.seq_len + 1 if limited else None)
    it = grain.experimental.FlatMapIterDataset(it, _Chunk(d.seq_len, truncate=d.long_documents == "truncate"))
    lengths = {k: d.seq_len for k in _FEATURES}
    if d.packing == "first_fit":
        it = grain.experimental.FirstFitPackIterDataset(it, length_struct=lengths, num_packing_bins=rows, shuffle_bins=False)
    else:
        it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct=lengths)
    it = it.map(_finish).batch(rows, drop_remainder=True)
    if d.prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=d.prefetch)
    return it, policy


class DataIterator:
    """Iterator of numpy batch dicts with JSON-serializable `get_state` / `set_state`."""

    def __init__(self, dataset: grain.IterDataset, policy: PolicyStage | None, meta: dict):
        # The grain iterator lives in a one-slot holder that the finalizer empties, so prefetch
        # threads and worker processes stop at exit before the interpreter tears modules down.
        self._holder = [iter(dataset)]
        self._finalizer = weakref.finalize(self, _close, self._holder)
        self.policy = policy
        self.meta = meta
        self.batches = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._holder[0])
        self.batches += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "batches": self.batches, "meta": self.meta, "grain": self._holder[0].get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise UserError(f"data iterator state version {state.get('version')!r} is not {STATE_VERSION}; restart the data from scratch")
        if state.get("meta") != self.meta:
            diff = sorted(k for k in set(self.meta) | set(state.get("meta", {})) if self.meta.get(k) != state.get("meta", {}).get(k))
            raise UserError(f"data iterator state was saved with different data settings ({', '.join(diff)}); restore with the same config")
        self._holder[0].set_state(state["grain"])
        self.batches = int(state["batches"])

    def report(self) -> dict[str, Any]:
        return self.policy.report() if self.policy else {"skipped": {}, "first": {}}

    def close(self) -> None:
        self._finalizer()


def _close(holder: list) -> None:
    if holder:
        iterator = holder.pop()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        del iterator


def iterator_meta(config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int) -> dict:
    d = config.data
    keys = ("source", "path", "eval_path", "eval_fraction", "mixture", "tokenizer", "seq_len", "batch_size", "packing", "seed", "format", "num_workers")
    meta = {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in keys}
    meta.update(split=split, process_index=process_index, process_count=process_count)
    return meta


def make_batches(
    config: ml_collections.ConfigDict, split: str = "train", process_index: int = 0, process_count: int = 1
) -> DataIterator:
    """Batches for this process: dicts of numpy arrays `inputs`, `targets`, `segment_ids`,
    `positions` (int32) and `loss_mask` (float32), each (data.batch_size // process_count, data.seq_len)."""
    dataset, policy = build_dataset(config, split, process_index, process_count)
    return DataIterator(dataset, policy, iterator_meta(config, split, process_index, process_count))
