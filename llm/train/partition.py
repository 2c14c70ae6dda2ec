"""The trainable/frozen split a fine-tuning run hands to the loop (pretraining has none).

train never imports peft: a recipe (SFT with LoRA, a classification head, partial freezing)
describes its split as plain functions, and the loop applies them to whatever weights the run
starts from (fresh init, `init_from`, a Hugging Face import).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

# (graphdef of the base model, full params on the mesh) -> (graphdef the losses merge with, trainable, frozen)
ApplyFn = Callable[[nnx.GraphDef, Any], tuple[nnx.GraphDef, Any, Any]]


@dataclasses.dataclass(frozen=True)
class Partition:
    """`apply` is a pure function of the loaded weights (adds adapters or heads, quantizes,
    freezes): the loop calls it after initialisation and again after loading the start weights,
    so a resumed run re-derives its frozen part instead of checkpointing it. The optimizer and
    the checkpoints see only `trainable`; `frozen` reaches the step as a separate argument that
    is neither differentiated nor donated.

    loss_fn(graphdef) / eval_loss_fn(graphdef) build the losses over the transformed model
    (eval defaults to the training loss; a recipe with dropout passes a deterministic one).
    """

    apply: ApplyFn
    loss_fn: Callable[[nnx.GraphDef], Callable]
    eval_loss_fn: Callable[[nnx.GraphDef], Callable] | None = None
    # (trainable, frozen) -> the whole tree the transformed graphdef merges with for inference
    # (in-training task eval); None: the union of the two
    model_params: Callable[[Any, Any], Any] | None = None
