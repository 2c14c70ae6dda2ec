"""A Hugging Face `tokenizer.json` behind the tokenizer interface of llm.data.tokenizer.

Encoding goes through the `tokenizers` library, the same engine transformers' fast tokenizers
run, on the pipeline transformers 5's AutoTokenizer builds from the files
(llm.interop.hf_auto_tokenizer: some classes rebuild parts of tokenizer.json), so ids match
`AutoTokenizer(...)(text, add_special_tokens=False)`; `adds_bos` / `adds_eos` say what its
post-processor adds around a text (what `AutoTokenizer(...)(text)` does). Special tokens and the
chat template come from tokenizer_config.json / special_tokens_map.json / chat_template.jinja.
The object carries the files' bytes, so it pickles cheaply into Grain worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from llm.errors import UserError

log = logging.getLogger("llm")
TOKENIZER_JSON = "tokenizer.json"
# Files that belong to a Hugging Face tokenizer, kept verbatim and written back by save().
HF_TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "added_tokens.json")

# transformers' clean_up_tokenization (applied on decode when the config asks for it).
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """vocab_size, bos_id, eos_id, pad_id (int or None), fingerprint, chat_template, adds_bos,
    adds_eos, tokenizer_class; encode / decode / token_id / save.

    model_type: config.json's, when the tokenizer sits in a model directory (AutoTokenizer's
    choice of class depends on it)."""

    def __init__(self, files: dict[str, bytes], source: str = "<bytes>", model_type: str | None = None):
        from tokenizers import Tokenizer

        from llm.interop.hf_auto_tokenizer import as_loaded, auto_class, effective_config

        if TOKENIZER_JSON not in files:
            raise UserError(f"{source} has no {TOKENIZER_JSON}; pass a Hugging Face tokenizer directory")
        self._files = dict(files)
        self.source = source
        self.model_type = model_type
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            if name in files:
                try:
                    loaded = json.loads(files[name])
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise UserError(f"{source}/{name} is not valid JSON ({err})") from None
                if not isinstance(loaded, dict):
                    raise UserError(f"{source}/{name} holds a {type(loaded).__name__}, not a JSON object; re-save the tokenizer")
                config.update(loaded)
        try:
            text = files[TOKENIZER_JSON].decode("utf-8")
            raw = json.loads(text)
            self.tokenizer_class = auto_class(config, model_type, text)
            config = effective_config(config, self.tokenizer_class)
            loaded_json, self.note = as_loaded(raw, self.tokenizer_class, config)
            self._tok = Tokenizer.from_str(json.dumps(loaded_json))
        except Exception as err:  # noqa: BLE001 - the Rust side raises plain Exception
            raise UserError(f"{source}/{TOKENIZER_JSON} cannot be loaded ({str(err).splitlines()[0]}); re-save the tokenizer") from None
        if self.note:
            log.warning("%s: %s", source, self.note)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = self._special_id(config, "bos_token")
        self.eos_id = self._special_id(config, "eos_token")
        self.pad_id = self._special_id(config, "pad_token")
        # transformers 5 skips this WordPiece-era cleanup for BPE models (it corrupts their text)
        # unless forced; we follow it so decode matches AutoTokenizer.
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        )
        self.fingerprint = hashlib.sha256(files[TOKENIZER_JSON]).hexdigest()
        self.prefix_ids, self.suffix_ids = self._wrapping()
        self.adds_bos = self.prefix_ids == ([self.bos_id] if self.bos_id is not None else [None])
        self.adds_eos = self.suffix_ids == ([self.eos_id] if self.eos_id is not None else [None])

    def _wrapping(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a text's own ids."""
        probe = "a"
        bare = self._tok.encode(probe, add_special_tokens=False).ids
        full = self._tok.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        raise UserError(f"{self.source}/{TOKENIZER_JSON}: its post-processor rewrites the text's own ids; this tokenizer is not supported")

    def startup_differences(self) -> list[str]:
        """What `AutoTokenizer(...)(text)` adds around a text that data.add_bos / data.add_eos
        cannot express (llm adds only tokenizer.bos_id before and eos_id after)."""
        out = []
        if self.prefix_ids and not self.adds_bos:
            out.append(f"its post-processor puts {self.prefix_ids} before each text, not the bos_token id {self.bos_id}")
        if self.suffix_ids and not self.adds_eos:
            out.append(f"its post-processor puts {self.suffix_ids} after each text, not the eos_token id {self.eos_id}")
        return out

    @property
    def chat_template(self) -> str | None:
        """The jinja chat template transformers' apply_chat_template would use (one home for
        that choice: llm.interop.hf_chat_template.template_source)."""
        from llm.interop.hf_chat_template import template_source

        return template_source(self._files, self.source)

    def _special_id(self, config: dict, key: str) -> int | None:
        content = _token_content(config.get(key))
        if content is None:
            return None
        i = self._tok.token_to_id(content)
        if i is None:
            raise UserError(f"{self.source}: {key}={content!r} is not in the vocabulary of {TOKENIZER_JSON}")
        return int(i)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids without BOS/EOS (special-token strings in the text still map to their ids);
        add_special_tokens: with those the tokenizer's post-processor adds, as transformers'
        default `encode` (what lm-eval's HF backend scores)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text

    def token_id(self, piece: str) -> int | None:
        i = self._tok.token_to_id(piece)
        return None if i is None else int(i)

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer files verbatim; returns the tokenizer.json path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self._files.items():
            (directory / name).write_bytes(data)
        return directory / TOKENIZER_JSON

    def __getstate__(self):
        return {"files": self._files, "source": self.source, "model_type": self.model_type}

    def __setstate__(self, state):
        self.__init__(state["files"], state["source"], state.get("model_type"))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"


def _model_type(directory: Path) -> str | None:
    """config.json's model_type when `directory` is a Hugging Face model directory."""
    try:
        hf = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return hf.get("model_type") if isinstance(hf, dict) and isinstance(hf.get("model_type"), str) else None


def missing_tokenizer_json(directory: str | Path) -> UserError:
    """The one-line error for a tokenizer directory without tokenizer.json, naming the fix."""
    directory = Path(directory)
    if (directory / "tokenizer.model").is_file():
        fix = ("it only has a sentencepiece tokenizer.model: convert it with "
               "`transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`, which writes tokenizer.json")
    else:
        fix = "copy the model's tokenizer files (tokenizer.json, tokenizer_config.json) into it"
    return UserError(f"{str(directory)!r} has no {TOKENIZER_JSON}; {fix}")


def load_hf_tokenizer(directory: str | Path) -> HFTokenizer:
    """The tokenizer in a Hugging Face model or tokenizer directory, as AutoTokenizer loads it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"tokenizer directory {str(directory)!r} does not exist")
    if not (directory / TOKENIZER_JSON).is_file():
        raise missing_tokenizer_json(directory)
    files = {name: (directory / name).read_bytes() for name in HF_TOKENIZER_FILES if (directory / name).is_file()}
    return HFTokenizer(files, source=str(directory), model_type=_model_type(directory))


def apply_hf_startup(config, directory: str | Path) -> HFTokenizer | None:
    """Make the config start up as transformers does with the Hugging Face model in `directory`:
    data.add_bos follows the tokenizer's post-processor (Llama 3 / Gemma add BOS, Qwen2 / GPT-2
    do not), data.add_eos is set when it appends EOS (otherwise it stays: it ends training
    documents so the model learns to stop). Applies only when data.tokenizer is that directory;
    returns the tokenizer then. What cannot be expressed is logged as a warning naming the class."""
    directory = Path(directory)
    if str(config.data.tokenizer) in ("", "bytes") or Path(config.data.tokenizer).absolute() != directory.absolute():
        return None
    if not (directory / TOKENIZER_JSON).is_file():
        raise missing_tokenizer_json(directory)
    tok = load_hf_tokenizer(directory)
    add_bos = tok.adds_bos
    add_eos = True if tok.adds_eos else bool(config.data.add_eos)
    if (bool(config.data.add_bos), bool(config.data.add_eos)) != (add_bos, add_eos):
        log.info("%s (%s) %s a BOS token: data.add_bos=%s, data.add_eos=%s", directory, tok.tokenizer_class,
                 "adds" if add_bos else "adds no", add_bos, add_eos)
    config.data.add_bos, config.data.add_eos = add_bos, add_eos
    for difference in tok.startup_differences():
        log.warning("%s (%s): %s; prompts encoded by llm differ from transformers.AutoTokenizer there",
                    directory, tok.tokenizer_class, difference)
    return tok
