"""The generation API: validate a batch of token prompts, pad and bucket it, run the compiled
engine (in one call, or in chunks to stream), and return per-row completions.

Used by `llm generate`, evaluation and RL rollouts. Works unchanged with params sharded over a
mesh: the graphdef's axis rules shard the activations and the KV cache, and the batch is padded
to a multiple of the batch shards.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.generate.engine import DecodeState, Engine
from llm.generate.layout import pack_kernels
from llm.generate.sampling import SamplingMode, SamplingOptions

ChunkCallback = Callable[[list[list[int]]], None]


@dataclasses.dataclass(frozen=True)
class Completion:
    """New tokens of one row (ending with the stop token when one ended it), their log-probs
    under the model when asked for, and why generation stopped ("stop" or "length")."""

    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: str


def bucket_length(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= n (and >= minimum): lengths share compiled programs."""
    size = max(int(minimum), 1)
    while size < n:
        size *= 2
    return size


def _per_row(value: Any, batch: int, name: str) -> list:
    if isinstance(value, (int, np.integer)):
        return [int(value)] * batch
    value = list(value)
    if len(value) != batch:
        raise UserError(f"{name} has {len(value)} entries for {batch} prompts; give one per prompt or a single value")
    return [int(v) for v in value]


def _stop_lists(stop_tokens: Sequence, batch: int) -> list[list[int]]:
    """One shared list of stop ids, or one list per row."""
    stop_tokens = list(stop_tokens)
    if stop_tokens and isinstance(stop_tokens[0], (list, tuple, np.ndarray)):
        if len(stop_tokens) != batch:
            raise UserError(f"stop_tokens has {len(stop_tokens)} lists for {batch} prompts; give one list per prompt or one shared list")
        return [[int(t) for t in row] for row in stop_tokens]
    return [[int(t) for t in stop_tokens] for _ in range(batch)]


def cast_params(params: Any, dtype) -> Any:
    """Floating leaves cast to `dtype` on their devices (shardings kept); same tree if no leaf
    needs it."""
    leaves = jax.tree_util.tree_leaves(params)
    if all(not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype for x in leaves):
        return params
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.jit(lambda p: jax.tree_util.tree_map(cast, p))(params)


class Generator:
    """Generation for one model: `generate(prompts, ...)` -> list[Completion]."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: Any,
        *,
        pad_id: int = 0,
        min_bucket: int = 16,
        cast_to_compute: bool = True,
        pack_for_cpu: bool = True,
    ):
        """cast_to_compute: keep a copy of the weights in the compute dtype (bf16 on
        accelerators), so each decode step reads half the bytes of f32 weights; a no-op when the
        dtypes already agree (f32 on CPU). pack_for_cpu: on CPU keep the layers' matrices and an
        untied LM head packed for the CPU decode kernel (llm.generate.layout). RL rollouts turn
        both off and pass the training arrays to each `generate` call (`params=`), so decoding
        holds no second copy of the base."""
        model = nnx.merge(graphdef, params)
        self.graphdef = graphdef
        self.spec = model.spec
        self.rules = model.rules
        self.params = cast_params(params, self.spec.compute_dtype) if cast_to_compute else params
        if pack_for_cpu and jax.default_backend() == "cpu":
            self.params = pack_kernels(model, self.params)
        self.pad_id = int(pad_id)
        self.min_bucket = min_bucket
        self.engine = Engine(graphdef, self.pad_id)

    def _validate(self, prompts: Sequence[Sequence[int]], max_new: list[int], stops: list[list[int]]) -> None:
        vocab, context = self.spec.vocab_size, self.spec.max_seq_len
        if not len(prompts):
            raise UserError("no prompts given; pass at least one prompt")
        for i, (prompt, new) in enumerate(zip(prompts, max_new)):
            n = len(prompt)
            if n == 0:
                raise UserError(f"prompt {i} is empty; give at least one token")
            if n >= context:
                raise UserError(f"prompt {i} has {n} tokens but the context holds {context}; shorten it below {context} tokens")
            if new < 1:
                raise UserError(f"max_new_tokens={new} for prompt {i} must be >= 1")
            if n + new > context:
                raise UserError(
                    f"prompt {i} ({n} tokens) + max_new_tokens={new} exceeds the context of {context}; "
                    f"lower max_new_tokens to <= {context - n}"
                )
            bad = [t for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise UserError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab}); check the tokenizer")
        for row in stops:
            for sequence in row:
                if not sequence:
                    raise UserError("an empty stop sequence; give at least one token id")
                for t in sequence:
                    if not 0 <= t < vocab:
                        raise UserError(f"unknown stop token id {t}; the vocabulary has ids 0..{vocab - 1}")

    def _inputs(self, prompts, max_new, stops, pad_batch_to: int = 0):
        """Left-padded numpy arrays; the batch is padded with inert rows to `pad_batch_to` and to
        a multiple of the batch shards."""
        batch = max(len(prompts), pad_batch_to)
        shards = self.rules.shards("batch")
        padded_batch = -(-batch // shards) * shards
        p = bucket_length(max(len(x) for x in prompts), self.min_bucket)
        n = bucket_length(max(max_new), self.min_bucket)
        k = max(1, max(len(row) for row in stops))
        m = max([1] + [len(sequence) for row in stops for sequence in row])
        tokens = np.full((padded_batch, p), self.pad_id, np.int32)
        lens = np.ones((padded_batch,), np.int32)
        new = np.zeros((padded_batch,), np.int32)  # padding rows are done from the start
        stop_ids = np.full((padded_batch, k, m), -1, np.int32)  # right-aligned sequences
        for i, prompt in enumerate(prompts):
            tokens[i, p - len(prompt) :] = np.asarray(prompt, np.int32)
            lens[i] = len(prompt)
            new[i] = max_new[i]
            for j, sequence in enumerate(stops[i]):
                stop_ids[i, j, m - len(sequence) :] = sequence
        return tokens, lens, new, stop_ids, n

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | Sequence[int],
        options: SamplingOptions = SamplingOptions(),
        stop_tokens: Sequence[int] | Sequence[Sequence[int]] = (),
        stop_sequences: Sequence[Sequence[int]] = (),
        seed: int = 0,
        return_logprobs: bool = False,
        on_chunk: ChunkCallback | None = None,
        chunk_tokens: int = 8,
        pad_batch_to: int = 0,
        params: Any = None,
        logprobs_at_temperature: bool = False,
    ) -> list[Completion]:
        """Complete each prompt (a list of token ids).

        max_new_tokens and stop_tokens may be per row; stop_sequences (token-id sequences, e.g. a
        tokenized stop string) end every row whose new tokens end with one. With `on_chunk`, decoding runs
        `chunk_tokens` steps per call and on_chunk gets each row's new tokens after every chunk
        (streaming); without it the whole decode is one compiled loop. pad_batch_to: fill the
        batch with inert rows up to this size, so a short last batch reuses the compiled program.
        params: decode these weights (same tree and layout as the constructor's) instead of the
        generator's own: RL rollouts decode each step's policy with one compiled program.
        logprobs_at_temperature: return log-probs of logits / temperature (what an RL training
        forward at the sampling temperature computes) instead of the model's own distribution.
        """
        params = self.params if params is None else params
        batch = len(prompts)
        max_new = _per_row(max_new_tokens, batch, "max_new_tokens")
        stops = [[(t,) for t in row] + [tuple(int(t) for t in q) for q in stop_sequences] for row in _stop_lists(stop_tokens, batch)]
        options.validate(self.spec.vocab_size)
        self._validate(prompts, max_new, stops)
        tokens, lens, new, stop_ids, n = self._inputs(prompts, max_new, stops, pad_batch_to)
        temperature = np.float32(options.temperature if not options.greedy else 1.0)
        state = self.engine.prefill(
            params,
            tokens,
            lens,
            new,
            stop_ids,
            jax.random.PRNGKey(seed),
            temperature,
            np.float32(options.top_p),
            temperature if logprobs_at_temperature else np.float32(1.0),
            mode=options.mode(),
            new_tokens=n,
            return_logprobs=return_logprobs,
        )
        if on_chunk is None:
            state = self.engine.decode(params, state, np.int32(n), mode=options.mode())
        else:
            state = self._stream(params, state, n, options.mode(), batch, on_chunk, max(1, int(chunk_tokens)))
        return self._completions(state, batch, stops)

    def _stream(self, params: Any, state: DecodeState, n: int, mode: SamplingMode, batch: int, on_chunk: ChunkCallback, chunk: int) -> DecodeState:
        sent = 0
        while True:
            step, done, tokens, lengths = jax.device_get((state.step, state.done, state.tokens, state.lengths))
            step = int(step)
            on_chunk([tokens[i, sent : min(step, lengths[i])].tolist() if sent < lengths[i] else [] for i in range(batch)])
            sent = step
            if step >= n or bool(np.all(done)):
                return state
            state = self.engine.decode(params, state, np.int32(step + chunk), mode=mode)

    def _completions(self, state: DecodeState, batch: int, stops: list[list[tuple]]) -> list[Completion]:
        tokens, lengths, logprobs = jax.device_get((state.tokens, state.lengths, state.logprobs))
        out = []
        for i in range(batch):
            row = tokens[i, : lengths[i]].tolist()
            reason = "stop" if any(len(row) >= len(q) and tuple(row[-len(q):]) == q for q in stops[i]) else "length"
            lp = logprobs[i, : lengths[i]].tolist() if logprobs.shape[1] else None
            out.append(Completion(tokens=row, logprobs=lp, finish_reason=reason))
        return out
