"""Reward models (`llm rm`): a scalar head on the decoder's final hidden state at each
sequence's last token, trained on preference pairs with the Bradley-Terry loss
(llm.rl.reward_loss), fully, with a frozen backbone or with LoRA.

The head is {"kernel": (d_model, 1)} without a bias, as Hugging Face's `*ForSequenceClassification`
`score` layer is, so a trained model exports to one (llm.interop) and a Hugging Face reward model
starts one here. Pairs are packed like DPO's (llm.data.pair_packing, layout "reward"): the
chosen and rejected sequences of a pair share a row as two segments.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llm.errors import ConfigError
from llm.finetune.pair_data import check_pair_config, heldout_metrics, load_pair_data, pairs_of
from llm.finetune.recipe import Runtime, Task, full_tree, run_finetune
from llm.interop.hf_reward import REWARD_HEAD_FILE, read_reward_head
from llm.peft.abstract import call, is_abstract
from llm.peft.lora import abstract_module
from llm.rl.logprobs import segment_sums
from llm.rl.reward_loss import reward_loss

log = logging.getLogger("llm")

HEAD = "rm_head"
_SUMMABLE = ("accuracy", "margin", "mean_reward", "rewards/chosen", "rewards/rejected")  # means over pairs


def segment_rewards(graphdef: nnx.GraphDef, backbone: Any, head: dict, batch: dict, max_segments: int) -> jax.Array:
    """(rows, max_segments) f32 rewards: the hidden state at each segment's loss_mask position
    (its last token) times the head's kernel. Empty segments read 0."""
    return _rewards_and_counts(graphdef, backbone, head, batch, max_segments)[0]


def _rewards_and_counts(graphdef, backbone, head: dict, batch: dict, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """segment_rewards and, per segment, how many positions were read (0: an empty segment)."""
    model = nnx.merge(graphdef, backbone)
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    scores = jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), head["kernel"][:, 0].astype(jnp.float32))
    return segment_sums(scores, batch["loss_mask"], batch["segment_ids"], max_segments)


def reward_loss_builder(config: ml_collections.ConfigDict):
    """(graphdef, runtime, train) -> loss_fn(trainable, frozen, batch, rng), the Task contract."""
    max_segments = 2 * int(config.rm.max_pairs_per_row)
    center = float(config.rm.center_rewards_coefficient) or None
    with_margin = bool(config.rm.margin_field)

    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            tree = full_tree(trainable, frozen, runtime(rng if train else None))
            head = tree.pop(HEAD)
            rewards, counts = _rewards_and_counts(graphdef, tree, head, batch, max_segments)
            seg = batch["segment_ids"]
            chosen, rejected = pairs_of(rewards)
            mask = pairs_of(counts)[0] > 0
            margin = None
            if with_margin:
                margin = pairs_of(segment_sums(batch["margin"], batch["loss_mask"], seg, max_segments)[0])[0]
            loss, metrics = reward_loss(chosen, rejected, margin=margin, center_rewards_coefficient=center, pair_mask=mask)
            n = jnp.sum(mask).astype(jnp.float32)
            return loss * n, {"tokens": n, **{f"{k}_sum": metrics[k] * n for k in _SUMMABLE}}

        return loss_fn

    return build


def init_reward_head(config: ml_collections.ConfigDict):
    """The head: a Hugging Face reward model's own `score` when the run starts from one, else
    N(0, init_std) (as transformers initialises `score`); replicated on the mesh."""
    start = config.checkpoint.init_from_hf

    def make(graphdef, params, seed: int) -> dict:
        module = abstract_module(graphdef, params)
        d, std = module.spec.d_model, module.spec.init_std
        mesh = module.rules.mesh
        sharding = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
        kernel = _hf_score(start, d) if start and not is_abstract(params) else None

        def create():
            if kernel is not None:
                return {"kernel": jnp.asarray(kernel, jnp.float32)}
            key = jax.random.fold_in(jax.random.key(seed), 7_778)
            return {"kernel": std * jax.random.normal(key, (d, 1), jnp.float32)}

        return {HEAD: call(jax.jit(create, out_shardings=sharding), abstract=is_abstract(params))}

    return make


def _hf_score(hf_dir: str, d_model: int) -> np.ndarray | None:
    """The (d_model, 1) score kernel of a Hugging Face num_labels=1 sequence classifier, else None."""
    kernel = read_reward_head(Path(hf_dir))
    if kernel is not None:
        log.info("reward head from %s (its score layer)", hf_dir)
        if kernel.shape != (d_model, 1):
            raise ConfigError(f"{hf_dir}'s score layer is {kernel.shape}, not ({d_model}, 1)")
    return kernel


def check_reward_config(config: ml_collections.ConfigDict) -> None:
    check_pair_config(config, "rm", "llm rm")
    c = float(config.rm.center_rewards_coefficient)
    if not (np.isfinite(c) and c >= 0):
        raise ConfigError(f"rm.center_rewards_coefficient={c} must be a finite number >= 0 (TRL suggests 0.01)")


def reward_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    data = load_pair_data(config, "reward", int(config.rm.max_pairs_per_row), with_margin=bool(config.rm.margin_field))
    return Task(
        name="reward",
        loss_fn=reward_loss_builder(config),
        head=init_reward_head(config),
        make_batches=data.make_batches,
        final_metrics=heldout_metrics(data, config, workdir, "margin"),
        head_key=HEAD,
        head_file=REWARD_HEAD_FILE,
    )


def run_reward(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    check_reward_config(config)
    workdir = Path(workdir)
    return run_finetune(config, workdir, reward_task(config, workdir), overwrite=overwrite)
