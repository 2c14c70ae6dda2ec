"""Every save site checks the pending step for NaN/Inf first: a loss that goes NaN right before
a SIGTERM must not become the latest checkpoint."""

import os
import signal

import numpy as np
import pytest

from helpers import tiny_config
from llm.checkpoint.manager import Checkpointer
from llm.train.loop import NonFiniteError, RunHooks, _default_batches, run_training

POISON_STEP = 5


def poisoned_batches(config, split, process_index, process_count):
    """The synthetic stream, except batch POISON_STEP: NaN loss weights, and a SIGTERM to
    ourselves while it is fetched (the loop saves at the next step boundary)."""
    for index, batch in enumerate(_default_batches(config, split, process_index, process_count), start=1):
        if index == POISON_STEP:
            batch = {**batch, "loss_mask": np.full_like(batch["loss_mask"], np.nan)}
            os.kill(os.getpid(), signal.SIGTERM)
        yield batch


@pytest.mark.slow  # one in-process run of tiny: ~40 s on 2 shared cores
def test_nan_right_before_sigterm_keeps_the_last_good_checkpoint(tmp_path):
    # log_every > steps: the loop checks a step's finiteness one step late, which is the window
    # the preemption save used to slip through.
    config = tiny_config("data.source=synthetic", "data.seq_len=32", "train.steps=10", "train.log_every=100",
                         "train.eval_every=0", "train.measure_peak=false", "checkpoint.every_steps=2",
                         "checkpoint.async_save=false")
    with pytest.raises(NonFiniteError, match=f"at step {POISON_STEP}; stopped without saving it"):
        run_training(config, tmp_path / "run", hooks=RunHooks(make_batches=poisoned_batches))
    assert Checkpointer(tmp_path / "run", config, read_only=True).steps() == [2, 4]
