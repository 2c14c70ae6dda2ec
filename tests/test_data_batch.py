"""llm.data.batch: the one batch contract, and the pipeline's batches agree with it."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from helpers import tiny_config
from llm.data.batch import BATCH_DTYPES, abstract_batch, as_batch, empty_batch
from llm.data.pipeline import make_batches


def test_the_pipeline_yields_what_the_abstract_batch_describes():
    config = tiny_config("data.source=synthetic", "data.batch_size=4", "data.seq_len=16")
    batch = next(make_batches(config))
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("data",)), PartitionSpec("data"))
    abstract = abstract_batch(4, 16, sharding)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (v.shape, v.dtype) for k, v in abstract.items()}
    assert all(v.sharding == sharding for v in abstract.values())
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32  # what the step expects


def test_as_batch_casts_to_the_contract_and_copies():
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    batch = as_batch({"inputs": ids, "targets": ids, "segment_ids": ids, "positions": ids, "loss_mask": ids > 2, "extra": ids})
    assert {k: v.dtype for k, v in batch.items()} == BATCH_DTYPES  # `extra` is not part of the contract
    batch["inputs"][0, 0] = 99
    assert ids[0, 0] == 0
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0], [1, 1, 1]])


def test_empty_batch_is_all_padding():
    batch = empty_batch((3,))
    assert {k: v.dtype for k, v in batch.items()} == BATCH_DTYPES
    assert all(v.shape == (3,) and not v.any() for v in batch.values())
