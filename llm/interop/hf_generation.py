"""generation_config.json of a Hugging Face model directory: the stop (eos) ids, bos/pad ids and
default sampling settings `transformers`' generate uses, read for `llm generate` and written by
the export so transformers decodes an exported model with the same defaults.

Without a generation_config.json, transformers takes the ids from config.json and samples
nothing (greedy); so do we.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from llm.errors import UserError

log = logging.getLogger("llm")

GENERATION_CONFIG = "generation_config.json"
# transformers' own fallbacks when a sampling field is unset (GenerationConfig._get_default_generation_params).
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
_SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "max_length")
_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Fields that change what transformers generates but `llm generate` does not apply, with their no-op values.
_UNSUPPORTED = {"repetition_penalty": 1.0, "min_p": None, "typical_p": 1.0, "no_repeat_ngram_size": 0, "num_beams": 1,
                "min_new_tokens": None, "min_length": 0, "bad_words_ids": None, "suppress_tokens": None,
                "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "length_penalty": 1.0, "penalty_alpha": None}


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """What transformers' generate does by default with this model (None = unset)."""

    eos_ids: tuple[int, ...] = ()
    bos_id: int | None = None
    pad_id: int | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    eos_is_list: bool = False  # written back as a list even when it holds one id
    ignored: tuple[str, ...] = ()  # fields set that llm generate does not apply

    def sampling(self) -> tuple[float, int, float]:
        """(temperature, top_k, top_p) as transformers samples: greedy (0, 0, 1) unless do_sample."""
        if not self.do_sample:
            return 0.0, 0, 1.0
        t = HF_SAMPLING_DEFAULTS["temperature"] if self.temperature is None else float(self.temperature)
        k = HF_SAMPLING_DEFAULTS["top_k"] if self.top_k is None else int(self.top_k)
        p = HF_SAMPLING_DEFAULTS["top_p"] if self.top_p is None else float(self.top_p)
        return t, k, p

    def to_hf(self) -> dict:
        """generation_config.json content (only the fields that are set)."""
        out: dict = {}
        if self.bos_id is not None:
            out["bos_token_id"] = self.bos_id
        if self.eos_ids:
            out["eos_token_id"] = list(self.eos_ids) if self.eos_is_list or len(self.eos_ids) > 1 else self.eos_ids[0]
        if self.pad_id is not None:
            out["pad_token_id"] = self.pad_id
        if self.do_sample:
            out["do_sample"] = True
        for key in ("temperature", "top_k", "top_p", "max_new_tokens", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _id(value, field: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: {field}={value!r} is not a token id; write a non-negative integer")
    return value


def _eos(value, where: str) -> tuple[tuple[int, ...], bool]:
    if isinstance(value, list):
        return tuple(_id(v, "eos_token_id", where) for v in value), True
    one = _id(value, "eos_token_id", where)
    return ((one,) if one is not None else ()), False


def _number(value, field: str, kind: type, where: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise UserError(f"{where}: {field}={value!r} is not a{'n integer' if kind is int else ' number'}; fix or remove it")
    return kind(value)


def parse_generation_config(data: dict, where: str) -> GenerationDefaults:
    """GenerationDefaults from generation_config.json's (or config.json's) fields."""
    if not isinstance(data, dict):
        raise UserError(f"{where} holds a {type(data).__name__}, not a JSON object; re-save it with GenerationConfig.save_pretrained")
    eos, is_list = _eos(data.get("eos_token_id"), where)
    do_sample = data.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise UserError(f"{where}: do_sample={do_sample!r} is not true or false")
    ignored = tuple(k for k, noop in _UNSUPPORTED.items() if data.get(k, noop) not in (noop, None))
    return GenerationDefaults(
        eos_ids=eos, bos_id=_id(data.get("bos_token_id"), "bos_token_id", where),
        pad_id=_id(data.get("pad_token_id"), "pad_token_id", where), do_sample=do_sample,
        temperature=_number(data.get("temperature"), "temperature", float, where),
        top_k=_number(data.get("top_k"), "top_k", int, where), top_p=_number(data.get("top_p"), "top_p", float, where),
        max_new_tokens=_number(data.get("max_new_tokens"), "max_new_tokens", int, where),
        max_length=_number(data.get("max_length"), "max_length", int, where), eos_is_list=is_list, ignored=ignored,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); fix it or remove it") from None


def read_generation_config(directory: str | Path) -> GenerationDefaults:
    """The generation defaults of a Hugging Face model directory: generation_config.json, else
    the token ids of config.json (as transformers' GenerationConfig.from_model_config)."""
    directory = Path(directory)
    path = directory / GENERATION_CONFIG
    if path.is_file():
        found = parse_generation_config(_read_json(path), str(path))
        if found.ignored:
            log.warning("%s sets %s, which llm generate does not apply: completions can differ from transformers'",
                        path, ", ".join(found.ignored))
        return found
    config = directory / "config.json"
    if not config.is_file():
        return GenerationDefaults()
    data = _read_json(config)
    data = data.get("text_config", data) if isinstance(data, dict) else data
    return parse_generation_config({k: data.get(k) for k in _IDS} if isinstance(data, dict) else data, str(config))


def export_generation_config(
    source: dict | None, token_ids: dict, out_dir: str | Path
) -> Path:
    """Write generation_config.json: the source model's own (sampling defaults included) when
    there is one, with the exported config's bos/eos/pad ids filling what it lacks."""
    base = parse_generation_config(source, "the source generation_config.json") if source else GenerationDefaults()
    eos = base.eos_ids
    is_list = base.eos_is_list
    if not eos and token_ids.get("eos_token_id") is not None:
        eos, is_list = _eos(token_ids["eos_token_id"], "config.json")
    out = dataclasses.replace(
        base, eos_ids=eos, eos_is_list=is_list,
        bos_id=base.bos_id if base.bos_id is not None else token_ids.get("bos_token_id"),
        pad_id=base.pad_id if base.pad_id is not None else token_ids.get("pad_token_id"),
    ).to_hf()
    extra = {k: v for k, v in (source or {}).items() if k not in out and k not in _IDS and k != "transformers_version"
             and k not in _SAMPLING}
    path = Path(out_dir) / GENERATION_CONFIG
    path.write_text(json.dumps({**extra, **out}, indent=2, sort_keys=True) + "\n")
    return path
