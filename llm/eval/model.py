"""lm-eval's LM interface (loglikelihood, loglikelihood_rolling, generate_until) over our
Decoder in JAX, with the Hugging Face backend's (HFLM) semantics: its tokenization, truncation,
rolling windows, stop strings and greedy decoding, so per-item scores match `lm_eval --model hf`.

Speed: requests are packed into rows of a few bucketed lengths (llm.eval.windows), the choices
of a multiple-choice question share one forward of their context (a tree mask), each row
length runs one compiled forward, and the LM head runs only at the scored positions, in chunks,
never materialising (batch, length, vocab) logits. Generation runs llm.generate's compiled
KV-cache engine.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.eval.windows import HFEncoding, Piece, bucket_length, pack, piece, rolling_windows, row_arrays
from llm.model.layers import softcap

log = logging.getLogger("llm")

MAX_GEN_TOKS = 256  # lm-eval's default max_gen_toks
HEAD_CHUNK = 512  # scored positions per LM-head matmul
_GEN_KEYS = {"until", "max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens", "do_sample", "temperature", "top_p", "top_k"}


def _hidden_states(graphdef: nnx.GraphDef, params: Any, tokens, positions, units, branches) -> jax.Array:
    """Final-norm hidden states of packed rows: a token sees the earlier tokens of its own unit
    that are in the shared prefix (branch 0) or in its own branch."""
    model = nnx.merge(graphdef, params)
    mask = None  # one sequence per row, right-padded (rolling windows): causal attention alone
    if units is not None:
        same_unit = units[:, :, None] == units[:, None, :]
        visible = (branches[:, None, :] == 0) | (branches[:, :, None] == branches[:, None, :])
        t = tokens.shape[1]
        mask = (jnp.tril(jnp.ones((t, t), bool))[None] & same_unit & visible)[:, None]
    return model.run_blocks(model.embed_tokens(tokens, positions), positions, mask)


def _slot_scores(graphdef: nnx.GraphDef, params: Any, hidden: jax.Array, flat: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log-prob of each target, whether it is the argmax) at the flat (row * length + position)
    indices, HEAD_CHUNK positions per head matmul."""
    model = nnx.merge(graphdef, params)
    spec = model.spec
    cd = spec.compute_dtype
    w = (model.embed[...].T if model.head is None else model.head[...]).astype(cd)
    h = hidden.reshape(-1, hidden.shape[-1])[flat].astype(cd)
    n = h.shape[0]
    chunk = min(n, HEAD_CHUNK)

    def body(_, xs):
        h_c, y_c = xs
        logits = softcap(jnp.einsum("nd,dv->nv", h_c, w, preferred_element_type=jnp.float32), spec.final_softcap)
        if w.shape[1] != spec.vocab_size:
            logits = jnp.where(jnp.arange(w.shape[1]) < spec.vocab_size, logits, -1e30)
        picked = jnp.take_along_axis(logits, y_c[:, None], axis=-1)[:, 0]
        return None, (picked - jax.nn.logsumexp(logits, axis=-1), jnp.argmax(logits, axis=-1) == y_c)

    _, (lp, greedy) = jax.lax.scan(body, None, (h.reshape(n // chunk, chunk, -1), targets.reshape(n // chunk, chunk)))
    return lp.reshape(n), greedy.reshape(n)


class _Compiled:
    """What EvalModels of one model graph share: the jitted forward and head (compiled per
    shape), and the generator used with per-call weights (with_params)."""

    def __init__(self, graphdef: nnx.GraphDef):
        self.graphdef = graphdef
        self.hidden = jax.jit(functools.partial(_hidden_states, graphdef))
        self.scores = jax.jit(functools.partial(_slot_scores, graphdef))
        self.shared_generator = None


def _gen_options(kwargs: dict) -> tuple[list[str] | None, int, Any]:
    """(until, max_gen_toks, SamplingOptions) from a task's generation_kwargs, as lm-eval's
    normalize_gen_kwargs reads them."""
    from llm.generate.sampling import SamplingOptions

    if not isinstance(kwargs, dict):
        raise UserError(f"generation kwargs must be a dict, got {kwargs!r}")
    unknown = sorted(set(kwargs) - _GEN_KEYS)
    if unknown:
        raise UserError(f"generation kwarg {unknown[0]!r} is not supported; use {', '.join(sorted(_GEN_KEYS))}")
    until = kwargs.get("until")
    if isinstance(until, str):
        until = [until]
    elif until is not None and not isinstance(until, (list, tuple)):
        raise UserError(f"generation kwarg until={until!r} must be a string or a list of strings")
    max_gen = next((kwargs[k] for k in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens") if kwargs.get(k) is not None), MAX_GEN_TOKS)
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    do_sample = kwargs.get("do_sample")
    if do_sample is None:
        do_sample = temperature > 0.0
    if do_sample and "temperature" not in kwargs:
        temperature = 1.0  # transformers' default when sampling
    if not do_sample:
        temperature = 0.0
    options = SamplingOptions(temperature=temperature, top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0))
    return (None if until is None else list(until)), int(max_gen), options


def _cut(text: str, until: Sequence[str]) -> str:
    """lm-eval's postprocess_generated_text: the text before the first stop string."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


def samples(kwargs: dict) -> bool:
    """Whether these generation_kwargs sample (so `repeats` copies differ) rather than decode greedily."""
    return _gen_options(kwargs)[2].temperature > 0.0


class EvalModel:
    """lm-eval's LM API over one model: `loglikelihood`, `loglikelihood_rolling`,
    `generate_until`; `max_length`, `eot_token_id`, `prefix_token_id`, `tokenizer` as HFLM has
    them. batch_size: packed rows per forward (and prompts per generation batch)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: Any,
        config: ml_collections.ConfigDict,
        tokenizer,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        _compiled: _Compiled | None = None,
    ):
        self.graphdef, self.params, self.config, self.tokenizer = graphdef, params, config, tokenizer
        model = nnx.merge(graphdef, params)
        self.spec, self.rules = model.spec, model.rules
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be >= 1")
        self.batch_size = int(batch_size)
        context = self.spec.max_seq_len
        self.max_length = int(max_length or context)
        if not 1 <= self.max_length <= context:
            raise UserError(f"max_length={max_length} must be in [1, {context}] (the model's context, model.max_seq_len)")
        self.encoding = HFEncoding(tokenizer, bool(config.data.add_bos))
        self.eot_token_id = self.encoding.eot_token_id
        self.prefix_token_id = self.encoding.prefix_token_id
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self._compiled = _compiled or _Compiled(graphdef)
        self._own = _compiled is None  # may keep its own generator (weights packed for decoding)
        self._generator = None

    def with_params(self, params: Any) -> "EvalModel":
        """The same model with other weights (in-training eval): the compiled functions are reused."""
        return EvalModel(
            self.graphdef, params, self.config, self.tokenizer,
            batch_size=self.batch_size, max_length=self.max_length, _compiled=self._compiled,
        )

    # ---- log-likelihoods ----

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether every continuation token is the argmax)."""
        pieces = [piece(*self.encoding.loglikelihood_pair(*_pair(r)), self.max_length) for r in requests]
        return self.score_pieces(pieces)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-likelihood of each whole text over lm-eval's disjoint rolling windows."""
        if self.prefix_token_id is None:
            raise UserError(
                f"rolling log-likelihood (loglikelihood_rolling tasks, e.g. builtin_perplexity) needs a BOS or EOS token to start "
                f"the first window, as lm-eval does; this model's tokenizer ({self.config.data.tokenizer}) has neither: "
                "leave those tasks out, or train with a sentencepiece / Hugging Face tokenizer"
            )
        pieces, owners = [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"loglikelihood_rolling request {i} is {type(text).__name__}, not a string")
            for ctx, pred in rolling_windows(self.encoding.encode(text), self.prefix_token_id, self.max_length):
                pieces.append(piece(ctx, pred, self.max_length))
                owners.append(i)
        totals = [0.0] * len(texts)
        for i, (lp, _) in zip(owners, self.score_pieces(pieces)):
            totals[i] += lp
        return totals

    def score_pieces(self, pieces: Sequence[Piece]) -> list[tuple[float, bool]]:
        """Score token-level requests (llm.eval.windows.piece); identical ones are computed once."""
        if not pieces:
            return []
        distinct: dict[Piece, int] = {}
        index = [distinct.setdefault(p, len(distinct)) for p in pieces]
        unique = list(distinct)
        sums = np.zeros(len(unique), np.float64)
        greedy = np.ones(len(unique), bool)
        rows = pack(unique, self.max_length)
        by_length: dict[int, list] = {}
        for row in rows:
            by_length.setdefault(row[0], []).append(row)
        shards = self.rules.shards("batch")
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                batch = self.batch_size if len(group) > self.batch_size else bucket_length(len(chunk), 1)
                batch = -(-batch // shards) * shards
                arrays = row_arrays(chunk, unique, batch, self.pad_id)
                lp, hit = self._score_rows(arrays, length)
                np.add.at(sums, arrays.owners, lp)
                np.logical_and.at(greedy, arrays.owners, hit)
        return [(float(sums[i]), bool(greedy[i])) for i in index]

    def _score_rows(self, a, length: int) -> tuple[np.ndarray, np.ndarray]:
        plain = bool((a.units.max(axis=1) <= 1).all()) and not a.branches.any()  # no row holds two units or a branch
        if plain:
            hidden = self._compiled.hidden(self.params, a.tokens, a.positions, None, None)
        else:
            hidden = self._compiled.hidden(self.params, a.tokens, a.positions, a.units, a.branches)
        n = len(a.slots)
        size = bucket_length(n, 64)
        if size > HEAD_CHUNK:
            size = -(-n // HEAD_CHUNK) * HEAD_CHUNK
        flat = np.zeros(size, np.int32)
        targets = np.zeros(size, np.int32)
        flat[:n] = a.slots[:, 0] * length + a.slots[:, 1]
        targets[:n] = a.slots[:, 2]
        lp, hit = jax.device_get(self._compiled.scores(self.params, hidden, flat, targets))
        return np.asarray(lp[:n], np.float64), np.asarray(hit[:n])

    # ---- generation ----

    def _generate_with(self):
        """(generator, params to pass): the model's own generator (weights cast and packed for
        decoding) when it was built directly; the shared one, given these weights per call, for
        with_params copies."""
        from llm.generate.generator import Generator

        if self._own:
            if self._generator is None:
                self._generator = Generator(self.graphdef, self.params, pad_id=self.pad_id)
            return self._generator, None
        if self._compiled.shared_generator is None:
            self._compiled.shared_generator = Generator(
                self.graphdef, self.params, pad_id=self.pad_id, cast_to_compute=False, pack_for_cpu=False
            )
        return self._compiled.shared_generator, self.params

    def generate_until(self, requests: Sequence[tuple[str, dict]]) -> list[str]:
        """Complete each context until a stop string (`until`, plus the end-of-text token as
        lm-eval adds it), at most max_gen_toks tokens (default 256), the context left-truncated
        to max_length - max_gen_toks; the text is cut at the first stop string."""
        eos = self.encoding.eos_text()
        groups: dict[tuple, list[int]] = {}
        parsed = []
        for i, request in enumerate(requests):
            context, kwargs = _pair(request, "generate_until")
            until, max_gen, options = _gen_options(kwargs)
            until = list(until or [])
            if eos is not None and eos not in until:
                until.append(eos)
            room = self.max_length - max_gen
            if room <= 0:
                raise UserError(f"max_gen_toks={max_gen} leaves no room for the context within max_length={self.max_length}; lower max_gen_toks")
            ids = self.encoding.encode(context)[-room:]
            if not ids:
                raise UserError(f"generate_until request {i}: the context {context!r} encodes to no tokens; give a non-empty context")
            parsed.append((ids, until, max_gen, options))
            groups.setdefault((tuple(until), options), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for (until, options), members in groups.items():
            members = sorted(members, key=lambda i: -len(parsed[i][0]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                texts = self._generate_batch([parsed[i][0] for i in chunk], [parsed[i][2] for i in chunk], list(until), options, seed=start)
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out  # type: ignore[return-value]

    def _stop_sequences(self, until: list[str]) -> list[list[int]]:
        """Token forms of the stop strings that decode back to themselves: generation may end
        as soon as one is produced (an early exit only; the text is cut by strings)."""
        sequences = []
        for term in until:
            if not term or term == self.encoding.eos_text():
                continue
            ids = self.encoding.encode(term, add_special_tokens=False)
            if ids and self.tokenizer.decode(ids) == term:
                sequences.append(ids)
        return sequences

    def _generate_batch(self, prompts: list[list[int]], max_new: list[int], until: list[str], options, seed: int) -> list[str]:
        generator, params = self._generate_with()
        stop_tokens = [self.eot_token_id] if self.eot_token_id is not None else []
        kwargs = dict(max_new_tokens=max_new, options=options, stop_tokens=stop_tokens, seed=seed, pad_batch_to=self.batch_size, params=params)
        done = generator.generate(prompts, stop_sequences=self._stop_sequences(until), **kwargs)
        texts = [self.encoding.decode(c.tokens) for c in done]
        # A row stopped by a stop sequence whose text lacks every stop string (a tokenization
        # that decodes differently in context): run it again without the early exit.
        again = [
            i for i, c in enumerate(done)
            if c.finish_reason == "stop" and not (c.tokens and c.tokens[-1] in stop_tokens) and not any(t and t in texts[i] for t in until)
        ]
        if again:
            redo = generator.generate([prompts[i] for i in again], **dict(kwargs, max_new_tokens=[max_new[i] for i in again]))
            for i, c in zip(again, redo):
                texts[i] = self.encoding.decode(c.tokens)
        return [_cut(t, until) for t in texts]


def _pair(request: Any, kind: str = "loglikelihood") -> tuple:
    if not (isinstance(request, (tuple, list)) and len(request) == 2 and isinstance(request[0], str)):
        raise UserError(f"a {kind} request must be a (context, {'continuation' if kind == 'loglikelihood' else 'gen_kwargs'}) pair, got {request!r}")
    return tuple(request)


def load_eval_model(
    source: str | Path, overrides: Sequence[str] = (), *, batch_size: int = 16, max_length: int | None = None
) -> EvalModel:
    """An EvalModel for a training / fine-tuning workdir (its latest checkpoint; LoRA and partial
    runs: their merged weights), an `llm export` directory or a Hugging Face model directory, as
    `llm generate` opens them; params sharded on the config's mesh after `overrides`."""
    from llm.generate.load import checkpoint_config, checkpoint_tokenizer, load_model_params

    if not Path(source).is_dir():
        raise UserError(f"model {str(source)!r} does not exist; pass a workdir, an `llm export` directory or a Hugging Face model directory")
    overrides = list(overrides)
    if jax.default_backend() == "cpu" and not any(o.split("=", 1)[0].strip() == "model.attention_impl" for o in overrides):
        overrides.append("model.attention_impl=blocked")  # the fastest on CPU (llm.model.attention); same values
    config = checkpoint_config(source, overrides)
    tokenizer = checkpoint_tokenizer(source, config)
    graphdef, params = load_model_params(source, config)
    return EvalModel(graphdef, params, config, tokenizer, batch_size=batch_size, max_length=max_length)
