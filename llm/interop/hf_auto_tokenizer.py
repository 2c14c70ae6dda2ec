"""The tokenizer pipeline that transformers 5's `AutoTokenizer.from_pretrained(dir)` really runs.

A tokenizer.json is not always used as is: AutoTokenizer picks a class from tokenizer_config.json
and config.json's model_type, and several classes (Qwen2Tokenizer, LlamaTokenizer,
GemmaTokenizer, GPT2Tokenizer) keep only the vocabulary, merges, added tokens and
post-processor of the file and rebuild the normaliser, pre-tokenizer, decoder and BPE options
their own way (Qwen2Tokenizer: an NFC normaliser and its own regex pre-tokenizer). This module
reproduces that choice and that rebuild on the JSON, so the `tokenizers` engine then gives
AutoTokenizer's ids without transformers installed. `add_bos_token` / `add_eos_token` in
tokenizer_config.json are ignored when a tokenizer.json exists (transformers 5 drops them), so
BOS/EOS come from the file's post-processor alone.
"""

from __future__ import annotations

import copy

AS_IS = "TokenizersBackend"
_GENERIC = ("TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast")
# transformers 5's TOKENIZER_MAPPING_NAMES for the model types we import (llama has none).
_REGISTERED = {
    "qwen2": "Qwen2Tokenizer", "qwen2_moe": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer", "qwen3_moe": "Qwen2Tokenizer",
    "gemma": "GemmaTokenizer", "gemma2": "GemmaTokenizer", "gemma3": "GemmaTokenizer", "gemma3_text": "GemmaTokenizer",
    "gpt2": "GPT2Tokenizer", "mistral": AS_IS, "mixtral": AS_IS,
}
# Model types whose Hub tokenizer_class transformers 5 overrides with the registered class.
_HUB_CLASS_OVERRIDDEN = {"qwen2", "phi3"}
REBUILT = ("Qwen2Tokenizer", "LlamaTokenizer", "GemmaTokenizer", "GPT2Tokenizer")
_QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
_SPACE = "\u2581"
# The special tokens each rebuilt class's __init__ falls back to when tokenizer_config.json
# does not name them.
_CLASS_DEFAULTS = {
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "GPT2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "GemmaTokenizer": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                       "mask_token": "<mask>"},
}


def _strip(name: str) -> str:
    return "TokenizersBackend" if name in _GENERIC else name.removesuffix("Fast")


def auto_class(config: dict, model_type: str | None, tokenizer_json: str) -> str:
    """The class AutoTokenizer instantiates (names without "Fast"; TokenizersBackend = file as is).

    `config` is tokenizer_config.json, `model_type` config.json's (None for a tokenizer-only
    directory, where AutoTokenizer has no model config either)."""
    hub = config.get("tokenizer_class")
    hub = hub if isinstance(hub, str) and hub else None
    registered = _REGISTERED.get(model_type or "")
    if hub is not None and _strip(hub) == "LlamaTokenizer" and model_type not in _HUB_CLASS_OVERRIDDEN \
            and '"ByteLevel"' in tokenizer_json:
        return AS_IS  # a Llama 3 style byte-level file declared as LlamaTokenizer
    if hub is not None and model_type and registered is not None and _strip(registered) != _strip(hub):
        if registered != AS_IS:
            name = _strip(registered if model_type in _HUB_CLASS_OVERRIDDEN else hub)
            if name != AS_IS:
                return name
        return AS_IS
    if hub is not None:
        return _strip(hub)
    return registered or AS_IS


def effective_config(config: dict, cls: str) -> dict:
    """tokenizer_config.json with the class's own defaults for the special tokens it omits."""
    return {**_CLASS_DEFAULTS.get(cls, {}), **config}


def _special_contents(config: dict) -> list[str]:
    out = []
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out.append(value)
    for extra in config.get("additional_special_tokens") or config.get("extra_special_tokens") or []:
        value = extra.get("content") if isinstance(extra, dict) else extra
        if isinstance(value, str):
            out.append(value)
    return out


def _token_text(config: dict, key: str, default: str | None) -> str | None:
    value = config.get(key, default)
    return value.get("content") if isinstance(value, dict) else value


def _bpe(model: dict, **options) -> dict:
    if model.get("type") != "BPE":
        raise ValueError(f"expects a BPE model, the file has {model.get('type')}")
    out = {k: model[k] for k in ("type", "vocab", "merges")}
    out.update(dropout=None, unk_token=None, continuing_subword_prefix=None, end_of_word_suffix=None,
               fuse_unk=False, byte_fallback=False, ignore_merges=False)
    out.update(options)
    return out


def _bytelevel(add_prefix_space: bool, use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def _sp_decoder(strip: bool) -> dict:
    steps = [{"type": "Replace", "pattern": {"String": _SPACE}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]
    if strip:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _rebuild(tj: dict, cls: str, config: dict) -> None:
    """Replace what `cls.__init__` rebuilds (transformers 5.x models/*/tokenization_*.py)."""
    apx = config.get("add_prefix_space")
    if cls == "Qwen2Tokenizer":
        tj["model"] = _bpe(tj["model"], continuing_subword_prefix="", end_of_word_suffix="")
        tj["normalizer"] = {"type": "NFC"}
        tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            _bytelevel(bool(apx), False)]}
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    elif cls == "GPT2Tokenizer":
        tj["model"] = _bpe(tj["model"], continuing_subword_prefix="", end_of_word_suffix="")
        tj["normalizer"] = None
        tj["pre_tokenizer"] = _bytelevel(bool(apx), True)
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    elif cls == "LlamaTokenizer":
        prefix = True if apx is None else bool(apx)
        scheme = ("always" if config.get("legacy", False) else "first") if prefix else "never"
        tj["model"] = _bpe(tj["model"], fuse_unk=True, byte_fallback=True)
        tj["normalizer"] = None
        tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": _SPACE, "prepend_scheme": scheme, "split": False}
        tj["decoder"] = _sp_decoder(strip=prefix)
    elif cls == "GemmaTokenizer":
        tj["model"] = _bpe(tj["model"], fuse_unk=True, byte_fallback=True, unk_token=_token_text(config, "unk_token", "<unk>"))
        tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}
        tj["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
        tj["decoder"] = _sp_decoder(strip=False)


def _added_tokens(tj: dict, config: dict, rebuilt: bool) -> None:
    """Added tokens as transformers sets them: tokenizer_config.json's added_tokens_decoder wins
    over the file's flags (a rebuilt class keeps only those when the config has them), and every
    named special token is marked special (transformers adds them so)."""
    keep_file = not (rebuilt and isinstance(config.get("added_tokens_decoder"), dict))
    by_id = {int(t["id"]): t for t in tj.get("added_tokens") or []} if keep_file else {}
    for index, flags in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(flags, dict) and isinstance(flags.get("content"), str):
            entry = by_id.setdefault(int(index), {"id": int(index)})
            entry.update({k: flags[k] for k in ("content", "single_word", "lstrip", "rstrip", "normalized", "special") if k in flags})
            entry.setdefault("single_word", False), entry.setdefault("lstrip", False), entry.setdefault("rstrip", False)
            entry.setdefault("normalized", not entry.get("special", False)), entry.setdefault("special", False)
    vocab = tj["model"].get("vocab")
    vocab = vocab if isinstance(vocab, dict) else {}
    ids = {t["content"]: i for i, t in by_id.items()}
    for content in _special_contents(config):
        if content in ids:
            by_id[ids[content]]["special"] = True
        elif content in vocab:
            ids[content] = vocab[content]
            by_id[vocab[content]] = {"id": vocab[content], "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True}
        # a named token missing from the vocabulary is not invented (transformers would append it):
        # HFTokenizer refuses a bos/eos/pad token that is not there.
    tj["added_tokens"] = [by_id[i] for i in sorted(by_id)]


def as_loaded(tj: dict, cls: str, config: dict) -> tuple[dict, str | None]:
    """(the tokenizer JSON AutoTokenizer ends up running, a note when we cannot reproduce it).
    `config`: effective_config(tokenizer_config.json, cls)."""
    out = copy.deepcopy(tj)
    note = None
    if cls in REBUILT:
        try:
            _rebuild(out, cls, config)
        except ValueError as err:
            out, note = copy.deepcopy(tj), f"transformers' {cls} rebuilds the tokenizer and {err}; tokenizer.json is used as is"
    elif cls != AS_IS:
        note = (f"tokenizer_config.json names {cls}, whose own pipeline llm does not reproduce; tokenizer.json is used as is, "
                "so ids may differ from transformers.AutoTokenizer")
    _added_tokens(out, config, rebuilt=cls in REBUILT and note is None)
    return out, note
