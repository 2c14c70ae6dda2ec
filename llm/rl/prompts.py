"""Prompts for rollouts: a resumable, seeded order over the task's prompt rows, and each prompt
rendered the way `llm sft` rendered its prompts (so an SFT-warmed policy answers in its format).

The order is a permutation per epoch from (seed, epoch); the state is two integers, so a
resumed run draws exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from llm.data.formats import chat_template
from llm.data.pairs import PairEncoder
from llm.data.tokenizer import Tokenizer
from llm.errors import UserError


class PromptStream:
    """Indices into the prompt rows, `take(n)` at a time, epoch after epoch."""

    def __init__(self, n_rows: int, seed: int):
        if n_rows < 1:
            raise UserError("the RL task has no training prompts; check rl.task and its data")
        self.n_rows = n_rows
        self.seed = int(seed)
        self.epoch = 0
        self.index = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order(self.epoch)
            grab = order[self.index : self.index + n - len(out)]
            out += [int(i) for i in grab]
            self.index += len(grab)
            if self.index >= self.n_rows:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def prompt_encoder(tokenizer: Tokenizer, config: ml_collections.ConfigDict) -> PairEncoder:
    d = config.data
    return PairEncoder(tokenizer, chat_template(d.chat_template), d.add_bos, d.add_eos)


def encode_prompt(encoder: PairEncoder, config: ml_collections.ConfigDict, prompt: str | list[dict]) -> np.ndarray:
    """The prompt's token ids, ending where the answer starts: with data.strings_as_chat a string
    is the user turn and the assistant turn's opening follows (add_generation_prompt), else plain
    text after BOS. Longer than rl.max_prompt_tokens: cut from the left, BOS kept (TRL keeps the
    end of a prompt too)."""
    if isinstance(prompt, str) and config.data.strings_as_chat:
        prompt = [{"role": "user", "content": prompt}]
    ids = encoder.side(prompt, "" if isinstance(prompt, str) else [{"role": "assistant", "content": ""}])[0]
    limit = int(config.rl.max_prompt_tokens)
    if len(ids) > limit:
        bos = encoder.bos
        keep = limit - len(bos)
        ids = np.concatenate([np.asarray(bos, np.int32), ids[len(ids) - keep :]]).astype(np.int32)
    return np.asarray(ids, np.int32)


def stop_strings(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """rl.stop_strings, plus the end of the assistant turn when prompts are chat-rendered (a
    tokenizer without EOS, like the byte one, ends an SFT answer only with that)."""
    stops = [s for s in config.rl.stop_strings]
    if config.data.strings_as_chat:
        suffix = chat_template(config.data.chat_template).parts("assistant")[1].strip()
        if suffix and suffix not in stops:
            stops.append(suffix)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise UserError(f"rl.stop_strings has {s!r}; give non-empty strings")
    return tuple(stops)


def stop_token_sequences(tokenizer: Tokenizer, stops: Sequence[str]) -> list[list[int]]:
    """Each stop string as the token ids the sampler matches (its standalone encoding; where a
    tokenizer encodes it differently in context, the text cut after decoding still applies)."""
    return [list(tokenizer.encode(s)) for s in stops if tokenizer.encode(s)]
