"""A Hugging Face `tokenizer.json` behind the tokenizer interface of llm.data.tokenizer.

Encoding goes through the `tokenizers` library, the same engine transformers' fast tokenizers
run, so ids match `AutoTokenizer(..., add_special_tokens=False)`. Special tokens and the chat
template come from tokenizer_config.json / special_tokens_map.json / chat_template.jinja.
The object carries the files' bytes, so it pickles cheaply into Grain worker processes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from llm.errors import UserError

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


def _chat_template(files: dict[str, bytes], config: dict) -> str | None:
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode("utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


class HFTokenizer:
    """vocab_size, bos_id, eos_id, pad_id (int or None), fingerprint, chat_template;
    encode / decode / token_id / save."""

    def __init__(self, files: dict[str, bytes], source: str = "<bytes>"):
        from tokenizers import Tokenizer

        if TOKENIZER_JSON not in files:
            raise UserError(f"{source} has no {TOKENIZER_JSON}; pass a Hugging Face tokenizer directory")
        self._files = dict(files)
        self.source = source
        try:
            self._tok = Tokenizer.from_str(files[TOKENIZER_JSON].decode("utf-8"))
        except Exception as err:  # noqa: BLE001 - the Rust side raises plain Exception
            raise UserError(f"{source}/{TOKENIZER_JSON} cannot be loaded ({str(err).splitlines()[0]}); re-save the tokenizer") from None
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            if name in files:
                try:
                    config.update(json.loads(files[name]))
                except json.JSONDecodeError as err:
                    raise UserError(f"{source}/{name} is not valid JSON ({err})") from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = self._special_id(config, "bos_token")
        self.eos_id = self._special_id(config, "eos_token")
        self.pad_id = self._special_id(config, "pad_token")
        self.chat_template = _chat_template(files, config)
        # transformers 5 skips this WordPiece-era cleanup for BPE models (it corrupts their text)
        # unless forced; we follow it so decode matches AutoTokenizer.
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        )
        self.fingerprint = hashlib.sha256(files[TOKENIZER_JSON]).hexdigest()

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
        return {"files": self._files, "source": self.source}

    def __setstate__(self, state):
        self.__init__(state["files"], state["source"])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"


def load_hf_tokenizer(directory: str | Path) -> HFTokenizer:
    """The tokenizer in a Hugging Face model or tokenizer directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"tokenizer directory {str(directory)!r} does not exist")
    if not (directory / TOKENIZER_JSON).is_file():
        raise UserError(f"{str(directory)!r} has no {TOKENIZER_JSON}; pass a Hugging Face tokenizer directory")
    files = {name: (directory / name).read_bytes() for name in HF_TOKENIZER_FILES if (directory / name).is_file()}
    return HFTokenizer(files, source=str(directory))
