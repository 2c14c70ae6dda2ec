"""Sequence classification: a linear head on the decoder's final hidden state at the last real
(non-pad) token, trained with cross entropy, fully, with a frozen backbone or with LoRA.

Records are {data.text_field: str, finetune.label_field: int}, from JSONL or the
classification split of `llm data builtin` (which standard-library package a function is
from). Batches use the pipeline's keys: `loss_mask` is 1 at each row's last real token and
`targets` holds the label there, so the loop, sharding and checkpoints need nothing new.
Examples are tokenized once and kept in memory; batch k is a pure function of (seed, k).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from llm.config.validate import validate_config
from llm.data.batch import empty_batch
from llm.data.builtin import manifest_file, manifest_path_for
from llm.data.jsonl import read_jsonl
from llm.data.pipeline import build_tokenizer
from llm.data.split import is_validation
from llm.errors import ConfigError, UserError
from llm.finetune.recipe import Runtime, Task, full_tree, run_finetune
from llm.peft.abstract import call, is_abstract
from llm.peft.lora import abstract_module
from llm.peft.split import combine

log = logging.getLogger("llm")

HEAD = "cls_head"
STATE_VERSION = 1


def _read_jsonl(paths: list[str]) -> list[dict]:
    return [record for path in paths for _, record in read_jsonl(path)]


def read_split(config: ml_collections.ConfigDict, split: str) -> list[dict]:
    """The records of a split: the manifest's classification files, data.eval_path, or a hashed
    fraction of data.path."""
    d = config.data
    manifest = manifest_path_for(d.path) if d.path else None
    if manifest is not None:
        return _read_jsonl([manifest_file(manifest, "classification", split)])
    if split == "validation" and d.eval_path:
        return _read_jsonl(sorted(str(p) for p in Path().glob(d.eval_path)) if "*" in d.eval_path else [d.eval_path])
    paths = sorted(str(p) for p in Path().glob(d.path)) if "*" in d.path else [d.path]
    records = _read_jsonl(paths)
    if d.eval_path:
        return records
    text_field = d.text_field
    held = [is_validation(str(r.get(text_field, "")), d.eval_fraction) for r in records]
    return [r for r, h in zip(records, held) if h == (split == "validation")]


def label_names(config: ml_collections.ConfigDict) -> list[str] | None:
    manifest = manifest_path_for(config.data.path) if config.data.path else None
    if manifest is None:
        return None
    return json.loads(manifest.read_text()).get("labels")


def num_labels(config: ml_collections.ConfigDict, train: list[dict]) -> int:
    if config.finetune.num_labels:
        return int(config.finetune.num_labels)
    names = label_names(config)
    if names:
        return len(names)
    return max(int(r[config.finetune.label_field]) for r in train) + 1


def encode_examples(config: ml_collections.ConfigDict, records: list[dict], n_labels: int, where: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Token ids (BOS + text, cut to data.seq_len) and labels; a bad record is a one-line error."""
    tokenizer = build_tokenizer(config)
    text_field, label_field = config.data.text_field, config.finetune.label_field
    tokens, labels = [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get(text_field), str) or label_field not in r:
            raise UserError(f"{where} record {i + 1} needs a string {text_field!r} and an integer {label_field!r}; fix the data or set data.text_field / finetune.label_field")
        label = r[label_field]
        if not isinstance(label, int) or not 0 <= label < n_labels:
            raise UserError(f"{where} record {i + 1} has label {label!r}, outside 0..{n_labels - 1}; set finetune.num_labels")
        ids = tokenizer.encode(r[text_field])
        if config.data.add_bos and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id] + ids
        ids = ids[: config.data.seq_len]
        if not ids:
            raise UserError(f"{where} record {i + 1} has empty text; remove it")
        tokens.append(np.asarray(ids, np.int32))
        labels.append(label)
    return tokens, np.asarray(labels, np.int32)


def make_rows(tokens: list[np.ndarray], labels: np.ndarray, indices: np.ndarray, seq_len: int, pad_id: int) -> dict:
    """A batch in the pipeline's format; index -1 is an empty row (no loss)."""
    n = len(indices)
    batch = empty_batch((n, seq_len))
    batch["inputs"][:] = pad_id
    batch["positions"][:] = np.arange(seq_len)
    for row, i in enumerate(indices):
        if i < 0:
            continue
        ids = tokens[i]
        last = len(ids) - 1
        batch["inputs"][row, : len(ids)] = ids
        batch["segment_ids"][row, : len(ids)] = 1
        batch["loss_mask"][row, last] = 1.0
        batch["targets"][row, last] = labels[i]
    return batch


class ClassificationBatches:
    """Training: endless, reshuffled each epoch by (seed, epoch). Validation: one pass in order,
    the last batch filled with empty rows. Each process takes rows p, p+P, ... of the global batch."""

    def __init__(self, tokens, labels, batch_size: int, seq_len: int, pad_id: int, seed: int, train: bool,
                 process_index: int = 0, process_count: int = 1):
        self.tokens, self.labels = tokens, labels
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.seed, self.train = seed, train
        self.process_index, self.process_count = process_index, process_count
        self.batches = 0

    def _global_indices(self, k: int) -> np.ndarray:
        n, b = len(self.labels), self.batch_size
        if not self.train:
            idx = np.arange(k * b, (k + 1) * b)
            return np.where(idx < n, idx, -1)
        positions = np.arange(k * b, (k + 1) * b)
        epochs, offsets = positions // n, positions % n
        out = np.empty(b, np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            out[epochs == epoch] = order[offsets[epochs == epoch]]
        return out

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if not self.train and self.batches * self.batch_size >= len(self.labels):
            raise StopIteration
        indices = self._global_indices(self.batches)[self.process_index :: self.process_count]
        self.batches += 1
        return make_rows(self.tokens, self.labels, indices, self.seq_len, self.pad_id)

    def get_state(self) -> dict:
        return {"version": STATE_VERSION, "batches": self.batches, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("seed") != self.seed:
            raise UserError("the data state in this checkpoint is from other classification data settings; use a fresh --workdir")
        self.batches = int(state["batches"])


def classification_loss(n_labels: int):
    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            tree = full_tree(trainable, frozen, runtime(rng if train else None))
            head = tree.pop(HEAD)
            logits, mask = head_logits(graphdef, tree, head, batch)
            labels = jnp.sum(batch["targets"] * batch["loss_mask"], axis=1).astype(jnp.int32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            nll = (lse - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]) * mask
            correct = (jnp.argmax(logits, axis=-1) == labels) * mask
            return nll.sum(), {"tokens": mask.sum(), "nll_sum": nll.sum(), "accuracy_sum": correct.sum()}

        return loss_fn

    return build


def head_logits(graphdef, backbone: Any, head: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(B, n_labels) f32 logits from the hidden state at each row's last real token, and the
    row mask (0 for empty rows)."""
    model = nnx.merge(graphdef, backbone)
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    pooled = jnp.einsum("btd,bt->bd", hidden.astype(jnp.float32), batch["loss_mask"])
    logits = pooled @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)
    return logits, batch["loss_mask"].sum(axis=1)


def init_head(n_labels: int):
    """The head, N(0, init_std) kernel and zero bias, replicated on the model's mesh (only
    described when the params are abstract: `llm compile`)."""

    def make(graphdef, params, seed: int) -> dict:
        module = abstract_module(graphdef, params)
        d, std = module.spec.d_model, module.spec.init_std
        mesh = module.rules.mesh
        sharding = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None

        def create():
            key = jax.random.fold_in(jax.random.key(seed), 7_777)
            return {"kernel": std * jax.random.normal(key, (d, n_labels), jnp.float32), "bias": jnp.zeros((n_labels,), jnp.float32)}

        return {HEAD: call(jax.jit(create, out_shardings=sharding), abstract=is_abstract(params))}

    return make


def macro_f1(pred: np.ndarray, true: np.ndarray, n_labels: int) -> float:
    """Mean F1 over the labels present in the truth or the predictions."""
    scores = []
    for c in range(n_labels):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def final_metrics(tokens, labels, train_labels, n_labels: int, config: ml_collections.ConfigDict, pad_id: int):
    """Accuracy and macro-F1 on the whole validation split, with the constant-prediction baselines."""

    def run(setup, trainable, frozen) -> dict:
        @jax.jit
        def predict(trainable, frozen, batch):
            tree = combine(trainable, frozen)
            head = tree.pop(HEAD)
            return jnp.argmax(head_logits(setup.graphdef, tree, head, batch)[0], axis=-1)

        batches = ClassificationBatches(tokens, labels, config.data.batch_size, config.data.seq_len, pad_id, 0, train=False,
                                        process_index=jax.process_index(), process_count=jax.process_count())
        preds = []
        for batch in batches:
            out = predict(trainable, frozen, setup.shard_batch(batch))
            out = multihost_utils.process_allgather(out, tiled=True) if jax.process_count() > 1 else jax.device_get(out)
            preds.append(np.asarray(out))
        order = np.concatenate([ClassificationBatches(tokens, labels, config.data.batch_size, config.data.seq_len, pad_id, 0, False)
                                ._global_indices(k) for k in range(len(preds))])
        pred = np.concatenate(preds)[order >= 0]
        true = labels[order[order >= 0]]
        train_majority = int(np.bincount(train_labels, minlength=n_labels).argmax())
        return {
            "accuracy": float(np.mean(pred == true)),
            "macro_f1": macro_f1(pred, true, n_labels),
            "majority_accuracy": float(np.max(np.bincount(true, minlength=n_labels)) / len(true)),
            "train_majority_accuracy": float(np.mean(true == train_majority)),
            "eval_examples": int(len(true)),
        }

    return run


def check_classification_config(config: ml_collections.ConfigDict) -> None:
    validate_config(config)
    if config.finetune.task != "classification":
        raise ConfigError(f"finetune.task={config.finetune.task!r}; `llm classify` runs finetune.task=classification")


def classification_task(config: ml_collections.ConfigDict) -> Task:
    train = read_split(config, "train")
    valid = read_split(config, "validation")
    for name, records in (("train", train), ("validation", valid)):
        if not records:
            raise UserError(f"the classification {name} split of {config.data.path!r} is empty; add records or set data.eval_path")
    n_labels = num_labels(config, train)
    tr_tokens, tr_labels = encode_examples(config, train, n_labels, "train")
    va_tokens, va_labels = encode_examples(config, valid, n_labels, "validation")
    pad_id = build_tokenizer(config).pad_id
    pad_id = 0 if pad_id is None else pad_id
    log.info("classification: %d labels, %d train / %d validation examples", n_labels, len(tr_labels), len(va_labels))
    d = config.data

    def make_batches(cfg, split, process_index, process_count):
        tokens, labels = (tr_tokens, tr_labels) if split == "train" else (va_tokens, va_labels)
        return ClassificationBatches(tokens, labels, d.batch_size, d.seq_len, pad_id, d.seed, split == "train", process_index, process_count)

    return Task(
        name="classification",
        loss_fn=classification_loss(n_labels),
        head=init_head(n_labels),
        make_batches=make_batches,
        final_metrics=final_metrics(va_tokens, va_labels, tr_labels, n_labels, config, pad_id),
        head_key=HEAD,
    )


def run_classification(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    check_classification_config(config)
    return run_finetune(config, workdir, classification_task(config), overwrite=overwrite)
