"""Instruction and preference data: chat messages, a configurable chat template, and token
weights that put the loss on assistant tokens only.

Accepted records (JSONL / Parquet / ... rows):
  SFT:        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
              or {"prompt": str, "response": str} (field names from data.prompt_field / response_field)
  Preference: {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
              (TRL's standard and conversational forms)
A template maps each role to a (prefix, suffix) pair; an assistant turn's content and suffix
carry loss, everything else (prefixes, system and user turns) is context.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm.data.encode import Encoded, encode_array
from llm.data.sources import BadRecord
from llm.data.tokenizer import Tokenizer
from llm.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """role -> (prefix, suffix); `generation_prefix` opens the assistant turn to be generated."""

    roles: tuple[tuple[str, tuple[str, str]], ...]

    def parts(self, role: str) -> tuple[str, str]:
        for name, pair in self.roles:
            if name == role:
                return pair
        raise KeyError(role)

    def render(self, messages: Sequence[dict]) -> list[tuple[str, bool]]:
        """(text, carries_loss) pieces whose concatenation is the formatted conversation."""
        pieces = []
        for m in messages:
            prefix, suffix = self.parts(m["role"])
            train = m["role"] == "assistant"
            pieces += [(prefix, False), (m["content"], train), (suffix, train)]
        return [(t, w) for t, w in pieces if t]

    def text(self, messages: Sequence[dict]) -> str:
        return "".join(t for t, _ in self.render(messages))

    def generation_prompt(self, messages: Sequence[dict]) -> str:
        """The conversation so far plus the opening of the assistant turn (for sampling)."""
        return self.text(messages) + self.parts("assistant")[0]


TEMPLATES = {
    "default": ChatTemplate(
        (
            ("system", ("<|system|>\n", "<|end|>\n")),
            ("user", ("<|user|>\n", "<|end|>\n")),
            ("assistant", ("<|assistant|>\n", "<|end|>\n")),
        )
    ),
    "chatml": ChatTemplate(
        (
            ("system", ("<|im_start|>system\n", "<|im_end|>\n")),
            ("user", ("<|im_start|>user\n", "<|im_end|>\n")),
            ("assistant", ("<|im_start|>assistant\n", "<|im_end|>\n")),
        )
    ),
    # Gemma 2/3's turns (the model's role is "model"). Gemma has no system turn: Gemma 3's own
    # template folds a system message into the first user turn, which prefix/suffix pairs cannot
    # express, so here a system message is a user turn of its own.
    "gemma": ChatTemplate(
        (
            ("system", ("<start_of_turn>user\n", "<end_of_turn>\n")),
            ("user", ("<start_of_turn>user\n", "<end_of_turn>\n")),
            ("assistant", ("<start_of_turn>model\n", "<end_of_turn>\n")),
        )
    ),
}


def chat_template(spec: str) -> ChatTemplate:
    """A named template, or a JSON file {"system": [prefix, suffix], "user": [...], "assistant": [...]}."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"data.chat_template={spec!r} is neither {', '.join(TEMPLATES)} nor a JSON file")
    try:
        raw = json.loads(path.read_text())
        roles = tuple((role, (str(raw[role][0]), str(raw[role][1]))) for role in ROLES)
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise UserError(f"chat template {spec!r} must map each of {', '.join(ROLES)} to [prefix, suffix] ({err})") from None
    return ChatTemplate(roles)


def _as_messages(value: Any, default_role: str, where: str, name: str) -> list[dict] | BadRecord:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        return BadRecord(f"field {name!r} must be a string or a non-empty list of messages", where)
    out = []
    for m in value:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return BadRecord(f"field {name!r}: each message needs 'role' and 'content'", where)
        if m["role"] not in ROLES:
            return BadRecord(f"field {name!r}: unknown role {m['role']!r} (use {', '.join(ROLES)})", where)
        if not isinstance(m["content"], str):
            return BadRecord(f"field {name!r}: message content must be a string", where)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def sft_messages(record: Any, prompt_field: str, response_field: str, where: str) -> list[dict] | BadRecord:
    """The conversation of an SFT record (chat or prompt/response form)."""
    if isinstance(record, BadRecord):
        return record
    if not isinstance(record, dict):
        return BadRecord("SFT records must be JSON objects", where)
    if "messages" in record:
        messages = _as_messages(record["messages"], "user", where, "messages")
    elif prompt_field in record and response_field in record:
        prompt = _as_messages(record[prompt_field], "user", where, prompt_field)
        if isinstance(prompt, BadRecord):
            return prompt
        response = _as_messages(record[response_field], "assistant", where, response_field)
        if isinstance(response, BadRecord):
            return response
        messages = prompt + response
    else:
        return BadRecord(f"missing field 'messages' or {prompt_field!r}/{response_field!r}", where)
    if isinstance(messages, BadRecord):
        return messages
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        return BadRecord("no assistant turn with content", where)
    return messages


def encode_chat(tokenizer: Tokenizer, template: ChatTemplate, messages: Sequence[dict], add_bos: bool = True, add_eos: bool = True) -> Encoded:
    """Tokens of the rendered conversation; weight 1 on assistant content/suffix tokens (and EOS)."""
    tokens, weights = [], []
    if add_bos and tokenizer.bos_id is not None:
        tokens.append(np.asarray([tokenizer.bos_id], np.int32))
        weights.append(np.zeros(1, np.float32))
    for text, train in template.render(messages):
        ids = encode_array(tokenizer, text)
        tokens.append(ids)
        weights.append(np.full(len(ids), 1.0 if train else 0.0, np.float32))
    if add_eos and tokenizer.eos_id is not None:
        tokens.append(np.asarray([tokenizer.eos_id], np.int32))
        weights.append(np.ones(1, np.float32))
    return Encoded(np.concatenate(tokens).astype(np.int32), np.concatenate(weights))


class SftEncoder:
    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, prompt_field: str = "prompt", response_field: str = "response"):
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_field = prompt_field
        self.response_field = response_field

    def __call__(self, record: Any, where: str) -> Encoded | BadRecord:
        messages = sft_messages(record, self.prompt_field, self.response_field, where)
        if isinstance(messages, BadRecord):
            return messages
        return encode_chat(self.tokenizer, self.template, messages)


@dataclasses.dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded


class PreferenceEncoder:
    """{prompt, chosen, rejected} -> two encoded conversations sharing the prompt."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, prompt_field: str = "prompt"):
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_field = prompt_field

    def __call__(self, record: Any, where: str) -> EncodedPair | BadRecord:
        if isinstance(record, BadRecord):
            return record
        if not isinstance(record, dict):
            return BadRecord("preference records must be JSON objects", where)
        for key in (self.prompt_field, "chosen", "rejected"):
            if key not in record:
                return BadRecord(f"missing field {key!r} (preference records need {self.prompt_field}/chosen/rejected)", where)
        prompt = _as_messages(record[self.prompt_field], "user", where, self.prompt_field)
        if isinstance(prompt, BadRecord):
            return prompt
        sides = []
        for key in ("chosen", "rejected"):
            answer = _as_messages(record[key], "assistant", where, key)
            if isinstance(answer, BadRecord):
                return answer
            if not any(m["role"] == "assistant" and m["content"] for m in answer):
                return BadRecord(f"field {key!r} has no assistant content", where)
            sides.append(encode_chat(self.tokenizer, self.template, prompt + answer))
        return EncodedPair(*sides)
