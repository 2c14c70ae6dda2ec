"""Score texts with a trained reward model (`llm rm score`, and later PPO / GRPO rewards).

A reward model is a params checkpoint plus reward_head.safetensors: what a finished `llm rm`
run leaves in <workdir>/merged (or `llm export` / `llm convert from-hf` of one). Each text is
tokenized exactly as the model's training sequences were (llm.data.pairs.encode_prompt_answer)
and scored the way training reads rewards (llm.finetune.reward.segment_rewards): the final
hidden state at its last token times the head's kernel.

Rows, one JSON object per line:
  {"prompt": P, "completion": A}  P and A strings or message lists ("response" or "chosen" may
                                  stand for "completion"; the prompt key is data.prompt_field)
  {"text": T}                     a whole sequence as plain text: [BOS] T [EOS], no chat template

Sequences are scored longest first, one per row of fixed-shape padded batches whose length is
a power of two (so a few programs are compiled whatever the lengths); results come back in
input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm.errors import UserError
from llm.interop.hf_reward import REWARD_HEAD_FILE, check_kernel, read_head_file

ANSWER_FIELDS = ("completion", "response", "chosen")
MIN_LENGTH = 16  # the shortest padded length: shorter buckets save nothing worth a compile


def reward_model_dir(workdir: str | Path) -> Path:
    """W/merged of a finished `llm rm` run, or W itself when it is a reward params checkpoint."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {str(workdir)!r} does not exist; pass the --workdir of an `llm rm` run")
    for directory in (workdir / "merged", workdir):
        if (directory / "params").is_dir() and (directory / "config.json").is_file():
            if not (directory / REWARD_HEAD_FILE).is_file():
                raise UserError(f"{directory} has no {REWARD_HEAD_FILE}, so it is not a reward model; "
                                "pass the --workdir of an `llm rm` run (not `llm sft` / `llm train`)")
            return directory
    raise UserError(f"{str(workdir)!r} has no merged/ reward model; let its `llm rm` run finish "
                    "(with finetune.export_merged=true, the default), then score")


def _bucket(n: int, cap: int) -> int:
    size = MIN_LENGTH
    while size < n:
        size *= 2
    return min(size, cap)


class RewardScorer:
    """A reward model opened for scoring. The tokenizer and config load at once (so rows can be
    checked first); the weights load on the first `score`."""

    def __init__(self, workdir: str | Path, overrides: Iterable[str] = (), devices: Sequence[jax.Device] | None = None):
        from llm.finetune.start import copy_config
        from llm.generate.load import checkpoint_config, checkpoint_tokenizer

        self.directory = reward_model_dir(workdir)
        self.config = checkpoint_config(self.directory, overrides)
        self.tokenizer = checkpoint_tokenizer(self.directory, self.config)
        kernel = read_head_file(self.directory)
        self.kernel = check_kernel(kernel, int(self.config.model.d_model), str(self.directory / REWARD_HEAD_FILE))
        self._plain = copy_config(self.config)
        self._plain.data.strings_as_chat = False  # {"text"} rows: plain text, no chat template
        self.devices = devices
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        self._loaded: tuple | None = None

    # -- rows -> token ids -------------------------------------------------------------------
    def encode(self, record: Any, where: str) -> np.ndarray:
        """One row's token ids (int32), or a one-line UserError naming `where` and the fix."""
        from llm.data.pairs import encode_prompt_answer

        prompt_field = self.config.data.prompt_field
        if not isinstance(record, dict):
            raise UserError(f"{where} is a {type(record).__name__}; each row must be a JSON object with "
                            f"{prompt_field!r} and 'completion', or 'text'")
        answer_field = next((f for f in ANSWER_FIELDS if f in record), None)
        if "text" in record and answer_field is None and prompt_field not in record:
            if not isinstance(record["text"], str) or not record["text"]:
                raise UserError(f"{where}: 'text' must be a non-empty string")
            config, prompt, answer = self._plain, "", record["text"]
        elif answer_field is not None and prompt_field in record:
            config, prompt, answer = self.config, record[prompt_field], record[answer_field]
            for name, value in ((prompt_field, prompt), (answer_field, answer)):
                if not isinstance(value, (str, list)):
                    raise UserError(f"{where}: {name!r} is a {type(value).__name__}; give a string or a message list")
        else:
            has = ", ".join(map(repr, sorted(record)[:6])) or "no fields"
            raise UserError(f"{where} has {has}; each row needs {prompt_field!r} and one of "
                            f"{', '.join(map(repr, ANSWER_FIELDS))}, or 'text' alone")
        try:
            prompt_ids, answer_ids = encode_prompt_answer(self.tokenizer, config, prompt, answer)
        except UserError as err:
            raise UserError(f"{where}: {str(err).splitlines()[0]}") from None
        tokens = np.concatenate([prompt_ids, answer_ids]).astype(np.int32)
        limit = int(self.config.model.max_seq_len)
        if not len(tokens):
            raise UserError(f"{where} has no tokens to score; give it some text")
        if len(tokens) > limit:
            raise UserError(f"{where} has {len(tokens)} tokens, more than the model's max_seq_len={limit}; shorten it")
        return tokens

    # -- the model ---------------------------------------------------------------------------
    def _load(self) -> tuple:
        if self._loaded is None:
            from llm.checkpoint.params_io import load_params
            from llm.finetune.reward import segment_rewards
            from llm.model.build import abstract_model, param_shardings
            from llm.model.spec import model_spec
            from llm.parallel.mesh import build_mesh
            from llm.parallel.rules import AxisRules

            config = self.config
            mesh = build_mesh(config.mesh, devices=self.devices)
            rules = AxisRules.from_config(config.mesh.rules, mesh)
            spec = model_spec(config, vocab_shards=rules.shards("vocab"))
            graphdef, abstract = abstract_model(spec, rules)
            _, params = load_params(self.directory, param_shardings(abstract, spec, rules))
            replicated = NamedSharding(mesh, PartitionSpec())
            head = {"kernel": jax.device_put(jnp.asarray(self.kernel), replicated)}
            rows = NamedSharding(mesh, rules.spec(("batch", None)))
            shards = int(np.prod([mesh.shape[a] for a in rules.axes_for("batch")]))

            @jax.jit
            def rewards(params, head, batch):
                return segment_rewards(graphdef, params, head, batch, 1)[:, 0]

            self._loaded = (params, head, rows, shards, rewards)
        return self._loaded

    def _batch(self, sequences: list[np.ndarray], rows: int, length: int) -> dict[str, np.ndarray]:
        batch = {
            "inputs": np.full((rows, length), self.pad_id, np.int32),
            "positions": np.zeros((rows, length), np.int32),
            "segment_ids": np.zeros((rows, length), np.int32),
            "loss_mask": np.zeros((rows, length), np.float32),
        }
        for r, seq in enumerate(sequences):
            n = len(seq)
            batch["inputs"][r, :n] = seq
            batch["positions"][r, :n] = np.arange(n)
            batch["segment_ids"][r, :n] = 1
            batch["loss_mask"][r, n - 1] = 1.0
        return batch

    def score(self, sequences: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """(N,) float32 rewards of token sequences (each as `encode` returns them), in order."""
        if batch_size < 1:
            raise UserError(f"--batch-size={batch_size} must be at least 1")
        params, head, row_sharding, shards, rewards = self._load()
        rows = -(-batch_size // shards) * shards  # every data-parallel shard gets rows
        cap = int(self.config.model.max_seq_len)
        out = np.zeros(len(sequences), np.float32)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), rows):
            chunk = order[start : start + rows]
            members = [np.asarray(sequences[i], np.int32) for i in chunk]
            length = _bucket(max(len(s) for s in members), cap)
            batch = jax.device_put(self._batch(members, rows, length), row_sharding)
            values = np.asarray(jax.device_get(rewards(params, head, batch)))
            out[chunk] = values[: len(chunk)]
        return out

    def score_rows(self, records: Sequence[Any], batch_size: int = 8) -> np.ndarray:
        """Rewards of row dicts (see the module docstring), in order."""
        return self.score([self.encode(r, f"row {i + 1}") for i, r in enumerate(records)], batch_size)

