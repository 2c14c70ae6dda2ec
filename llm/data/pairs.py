"""Preference pairs as token ids, for reward models and the DPO family.

Records are TRL's preference formats: {prompt, chosen, rejected} with strings or with
conversational message lists, or the implicit-prompt form {chosen, rejected} whose shared
leading part is the prompt (trl.data_utils.extract_prompt). They come from the "preference"
split of an `llm data builtin` manifest, data.eval_path (validation), or a hashed held-out
fraction of data.path.

Tokenization is trl.DPOTrainer's (1.16 `_prepare_dataset`): the prompt alone and prompt+answer
are tokenized; the prompt is the tokens they share (the shorter of the two sides' common
prefixes), each answer the rest. Plain text (data.strings_as_chat=False): [BOS] + prompt and
[BOS] + prompt + answer + [EOS]; otherwise through data.chat_template with the assistant turn's
prefix in the prompt and its content, suffix and EOS in the answer (as `llm sft` renders it).

A pair must fit one packed row of data.seq_len positions (a sequence of n tokens takes n - 1):
2*len(prompt) + len(chosen) + len(rejected) - 2 <= data.seq_len. A longer prompt loses its
start (a leading BOS stays); answers are never cut, a pair whose answers alone do not fit is
bad input. Every pair dropped is counted and the counts are logged.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
from typing import Any, Sequence

import ml_collections
import numpy as np

from llm.data.builtin import manifest_file, manifest_path_for
from llm.data.encode import encode_array
from llm.data.formats import ChatTemplate, _as_messages, chat_template, encode_chat
from llm.data.jsonl import read_jsonl
from llm.data.pipeline import build_tokenizer
from llm.data.sources import BadRecord
from llm.data.split import is_validation
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, UserError

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class TokenPair:
    prompt: np.ndarray  # int32: the shared prefix, BOS included where the run adds one
    chosen: np.ndarray  # int32: chosen answer ids after the prompt (EOS included where added)
    rejected: np.ndarray  # int32
    margin: float = 0.0  # the record's rm.margin_field value, when set
    index: int = 0  # position of the record in its split (stable id for reference log-probs)


@dataclasses.dataclass
class PairStats:
    """Counts of one split: read = kept + identical + too_long + bad."""

    read: int = 0
    kept: int = 0
    identical: int = 0  # chosen and rejected tokenize the same: nothing to prefer (skipped)
    prompts_cut: int = 0  # pairs whose prompt lost its start to fit data.seq_len
    prompt_tokens_cut: int = 0
    too_long: int = 0  # answers alone do not fit data.seq_len (data.bad_input=skip)
    bad: int = 0  # malformed records skipped (data.bad_input=skip)


# ---------------------------------------------------------------------------------------------
# Reading a split


def _expand(path: str, key: str) -> list[str]:
    if "*" not in path:
        return [path]
    paths = sorted(glob.glob(path))
    if not paths:
        raise UserError(f"{key}={path!r} matches no files; check the pattern")
    return paths


def _read(paths: list[str], label: str) -> list[tuple[str, Any]]:
    return [(f"{path}:{n}", record) for path in paths for n, record in read_jsonl(path, label)]


def record_key(record: Any, prompt_field: str = "prompt") -> str:
    """The text that decides a record's train/validation side: its prompt and chosen answer."""
    if isinstance(record, dict):
        record = [record.get(prompt_field), record.get("chosen")]
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def _check_fields(records: list[tuple[str, Any]], prompt_field: str, margin_field: str) -> None:
    """Missing answers (or margins) mean the data is in the wrong format: always an error."""
    for where, record in records:
        if not isinstance(record, dict):
            continue
        for field in SIDES:
            if field not in record:
                has = ", ".join(map(repr, sorted(record)[:6])) or "no fields"
                raise UserError(
                    f"preference record at {where} has no {field!r} field (it has {has}); each row needs "
                    f"'chosen' and 'rejected' (and optionally {prompt_field!r}): convert the data to TRL's preference format"
                )
        if margin_field and margin_field not in record:
            raise UserError(f"preference record at {where} has no margin field {margin_field!r}; add it to every row or set rm.margin_field=''")


def split_records(config: ml_collections.ConfigDict, split: str) -> list[tuple[str, Any]]:
    """(file:line, record) of a split, in file order."""
    d = config.data
    if split not in ("train", "validation"):
        raise UserError(f"split={split!r}; use 'train' or 'validation'")
    if not d.path:
        raise ConfigError("data.path is empty; point it at preference JSONL or a corpus manifest (`llm data builtin --out DIR`)")
    manifest = manifest_path_for(d.path)
    if manifest is not None:
        records = _read([manifest_file(manifest, "preference", split)], "preference file")
    elif split == "validation" and d.eval_path:
        records = _read(_expand(d.eval_path, "data.eval_path"), "data.eval_path")
    else:
        records = _read(_expand(d.path, "data.path"), "data.path")
    # Checked before holding out a fraction, so both splits of a file fail alike.
    _check_fields(records, d.prompt_field, config.rm.margin_field)
    if manifest is None and not d.eval_path:
        held = [is_validation(record_key(r, d.prompt_field), d.eval_fraction) for _, r in records]
        records = [wr for wr, h in zip(records, held) if h == (split == "validation")]
    return records


# ---------------------------------------------------------------------------------------------
# Record -> prompt and answers (strings or messages)


def implicit_prompt(chosen: Sequence, rejected: Sequence) -> tuple[Sequence, Sequence, Sequence]:
    """(prompt, chosen, rejected) from two completions sharing a prefix, by TRL 1.16's
    extract_prompt: the longest common prefix (of messages or characters), a space before the
    first difference left to the answers; when one is a prefix of the other the last shared
    element stays in the answers. (TRL also moves the prompt back a character when the two
    differ at their first character and chosen ends in a space; that is a quirk we skip.)"""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _parts(record: Any, where: str, prompt_field: str, as_chat: bool):
    """(prompt, chosen, rejected): three strings (plain-text form) or three message lists."""
    if not isinstance(record, dict):
        return BadRecord(f"preference records must be JSON objects, not {type(record).__name__}", where)
    if prompt_field in record:
        prompt, chosen, rejected = record[prompt_field], record["chosen"], record["rejected"]
    else:
        chosen, rejected = record["chosen"], record["rejected"]
        if isinstance(chosen, str) != isinstance(rejected, str):
            return BadRecord("'chosen' and 'rejected' must both be strings or both message lists", where)
        if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)):
            return BadRecord("'chosen' and 'rejected' must be strings or message lists", where)
        prompt, chosen, rejected = implicit_prompt(chosen, rejected)
    values = (prompt, chosen, rejected)
    if not as_chat and all(isinstance(v, str) for v in values):
        return values
    out = []
    for name, value, role in ((prompt_field, prompt, "user"), ("chosen", chosen, "assistant"), ("rejected", rejected, "assistant")):
        if name == prompt_field and value in ("", []):
            out.append([])  # no prompt (implicit form whose completions differ from the start)
            continue
        messages = _as_messages(value, role, where, name)
        if isinstance(messages, BadRecord):
            return messages
        out.append(messages)
    for name, messages in zip(SIDES, out[1:]):
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            return BadRecord(f"field {name!r} has no assistant content", where)
    return tuple(out)


def _margin(record: Any, field: str, where: str) -> float | BadRecord:
    if not field:
        return 0.0
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return BadRecord(f"margin field {field!r} is {value!r}, not a finite number", where)
    return float(value)


# ---------------------------------------------------------------------------------------------
# Tokenization


class PairEncoder:
    """(prompt, answer) -> (prompt ids, prompt+answer ids), both as TRL's tokenize_fn builds them."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, add_bos: bool = True, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.template = template
        self.bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.eos = tokenizer.eos_id if add_eos else None
        self.add_bos, self.add_eos = add_bos, add_eos

    def _ids(self, ids: np.ndarray, eos: bool) -> np.ndarray:
        parts = [np.asarray(self.bos, np.int32), np.asarray(ids, np.int32)]
        # TRL appends the EOS string unless the text already ends with it.
        if eos and self.eos is not None and not (len(ids) and ids[-1] == self.eos):
            parts.append(np.asarray([self.eos], np.int32))
        return np.concatenate(parts)

    def side(self, prompt: str | list[dict], answer: str | list[dict]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(prompt, str):
            prompt_ids = self._ids(encode_array(self.tokenizer, prompt), eos=False)
            return prompt_ids, self._ids(encode_array(self.tokenizer, prompt + answer), eos=True)
        # add_generation_prompt=True: the assistant turn's opening belongs to the prompt.
        opening = encode_array(self.tokenizer, self.template.parts("assistant")[0])
        rendered = encode_chat(self.tokenizer, self.template, prompt, self.add_bos, False).tokens if prompt else np.asarray(self.bos, np.int32)
        prompt_ids = np.concatenate([rendered, opening]).astype(np.int32)
        full = encode_chat(self.tokenizer, self.template, prompt + answer, self.add_bos, self.add_eos).tokens
        return prompt_ids, full.astype(np.int32)


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def encode_prompt_answer(tokenizer: Tokenizer, config: ml_collections.ConfigDict, prompt: str | list[dict], answer: str | list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """One (prompt, answer) -> (prompt ids, answer ids) exactly as a pair's chosen side (for
    scoring texts with a reward model). Strings or message lists, as in the records."""
    d = config.data
    parts = _parts({d.prompt_field: prompt, "chosen": answer, "rejected": answer}, "the input", d.prompt_field, d.strings_as_chat)
    if isinstance(parts, BadRecord):
        raise UserError(f"{parts.reason}; pass a prompt and an answer as strings or message lists")
    encoder = PairEncoder(tokenizer, chat_template(d.chat_template), d.add_bos, d.add_eos)
    prompt_ids, full = encoder.side(parts[0], parts[1])
    n = common_prefix_length(prompt_ids, full)
    return full[:n].copy(), full[n:].copy()


def fit_prompt(prompt: np.ndarray, chosen: int, rejected: int, seq_len: int, keep_first: bool) -> np.ndarray | None:
    """The prompt cut from its start so the pair fits data.seq_len (its first token kept when
    `keep_first`), or None when the answers leave no room even for a one-token prompt."""
    budget = (seq_len + 2 - chosen - rejected) // 2
    if len(prompt) <= budget:
        return prompt
    if budget < 1:
        return None
    if keep_first:
        return np.concatenate([prompt[:1], prompt[len(prompt) - budget + 1 :]])
    return prompt[len(prompt) - budget :]


# ---------------------------------------------------------------------------------------------
# The split's pairs


def _encode_pair(encoder: PairEncoder, parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prompt = parts[0]
    (p_c, full_c), (p_r, full_r) = encoder.side(prompt, parts[1]), encoder.side(prompt, parts[2])
    n = min(common_prefix_length(p_c, full_c), common_prefix_length(p_r, full_r))
    return full_c[:n], full_c[n:], full_r[n:]


class _Policy:
    """data.bad_input for malformed records: fail with one line, or skip, count and warn once per reason."""

    def __init__(self, policy: str):
        if policy not in ("skip", "fail"):
            raise ConfigError(f"data.bad_input={policy!r} is not one of 'skip', 'fail'")
        self.policy = policy
        self.reasons: dict[str, int] = {}

    def bad(self, reason: str, where: str, fix: str = "fix the data") -> None:
        if self.policy == "fail":
            raise UserError(f"bad input at {where}: {reason}; {fix} or set data.bad_input=skip")
        if reason not in self.reasons:
            log.warning("skipping bad preference record at %s: %s (counted)", where, reason)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def load_pairs(config: ml_collections.ConfigDict, split: str) -> tuple[list[TokenPair], PairStats]:
    """The split's preference pairs as token ids, in record order, and what was dropped or cut."""
    d = config.data
    policy = _Policy(d.bad_input)
    records = split_records(config, split)
    tokenizer = build_tokenizer(config)
    encoder = PairEncoder(tokenizer, chat_template(d.chat_template), d.add_bos, d.add_eos)
    bos = tokenizer.bos_id if d.add_bos else None
    stats = PairStats(read=len(records))
    pairs: list[TokenPair] = []
    first_identical = ""
    for index, (where, record) in enumerate(records):
        parts = _parts(record, where, d.prompt_field, d.strings_as_chat)
        margin = parts if isinstance(parts, BadRecord) else _margin(record, config.rm.margin_field, where)
        if isinstance(margin, BadRecord):
            stats.bad += 1
            policy.bad(margin.reason, where)
            continue
        prompt, chosen, rejected = _encode_pair(encoder, parts)
        if np.array_equal(chosen, rejected):
            stats.identical += 1
            first_identical = first_identical or where
            continue
        if min(len(chosen), len(rejected)) == 0 or len(prompt) + min(len(chosen), len(rejected)) < 2:
            stats.bad += 1
            policy.bad("an answer has no token to train on", where)
            continue
        fitted = fit_prompt(prompt, len(chosen), len(rejected), d.seq_len, bos is not None and len(prompt) > 0 and prompt[0] == bos)
        if fitted is None:
            need = len(chosen) + len(rejected) + 2 * min(len(prompt), 1) - 2
            reason = (f"the pair leaves no room for the answer at data.seq_len={d.seq_len} (chosen {len(chosen)} + rejected "
                      f"{len(rejected)} tokens take {need} positions even with a one-token prompt)")
            stats.too_long += 1
            policy.bad(reason if policy.policy == "fail" else "the pair leaves no room for the answer at data.seq_len", where,
                       f"raise data.seq_len to at least {need}")
            continue
        if len(fitted) < len(prompt):
            stats.prompts_cut += 1
            stats.prompt_tokens_cut += len(prompt) - len(fitted)
        pairs.append(TokenPair(fitted.copy(), chosen.copy(), rejected.copy(), float(margin), index))
    stats.kept = len(pairs)
    if stats.identical:
        log.warning("skipped %d %s preference pairs whose chosen and rejected answers are identical (first at %s)", stats.identical, split, first_identical)
    if stats.too_long:
        log.warning("skipped %d %s preference pairs whose answers alone exceed data.seq_len=%d; raise data.seq_len to keep them", stats.too_long, split, d.seq_len)
    counts = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(stats).items())
    log.info("preference pairs (%s): %s", split, counts)
    if not pairs:
        raise UserError(f"the {split} split of data.path={d.path!r} has no usable preference pairs ({counts}); "
                        "add pairs with different chosen and rejected answers, raise data.seq_len, or set data.eval_path / data.eval_fraction")
    return pairs, stats
