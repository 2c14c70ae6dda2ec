"""Tokenizers behind one small interface: byte-level and sentencepiece (HF tokenizer.json is
delegated to llm.interop.hf_tokenizer).

Every tokenizer exposes `vocab_size`, `bos_id`, `eos_id`, `pad_id` (an int, or None when the
tokenizer has no such token), `fingerprint` (sha256 hex of the model bytes: a checkpoint
records it and refuses a different tokenizer), `encode(text) -> list[int]`,
`decode(ids) -> str`, `save(directory)` and `token_id(piece) -> int | None`. Objects pickle
cheaply (they carry their model bytes), so Grain worker processes can tokenize.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from llm.errors import UserError

SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
BYTES_FILE = "bytes_tokenizer.json"

# Chat-role markers trained as single pieces so the chat template costs one token per marker.
CHAT_SYMBOLS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> Path: ...

    def token_id(self, piece: str) -> int | None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: no training, no unknowns, exact round trip."""

    vocab_size = 256
    bos_id = None
    eos_id = None
    pad_id = None
    fingerprint = hashlib.sha256(b"llm-byte-tokenizer-v1").hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_id(self, piece: str) -> int | None:
        data = piece.encode("utf-8")
        return data[0] if len(data) == 1 else None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BYTES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "bytes", "vocab_size": 256}) + "\n")
        return path

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class SentencePieceTokenizer:
    """A sentencepiece model held as bytes (so it pickles into Grain workers)."""

    def __init__(self, model_bytes: bytes, source: str = "<bytes>"):
        import sentencepiece as spm

        self._model_bytes = bytes(model_bytes)
        self.source = source
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise UserError(f"{source} is not a sentencepiece model ({err}); pass a .model file from `llm tokenizer train`") from None
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = _optional_id(self._sp.bos_id())
        self.eos_id = _optional_id(self._sp.eos_id())
        self.pad_id = _optional_id(self._sp.pad_id())
        self.fingerprint = hashlib.sha256(self._model_bytes).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceTokenizer":
        from etils import epath

        p = epath.Path(path)
        if not p.exists():
            raise UserError(f"tokenizer file {str(path)!r} does not exist; train one with `llm tokenizer train`")
        return cls(p.read_bytes(), source=str(path))

    @property
    def model_bytes(self) -> bytes:
        return self._model_bytes

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text, out_type=int), dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else int(i)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._model_bytes)
        return path

    def __getstate__(self):
        return {"model_bytes": self._model_bytes, "source": self.source}

    def __setstate__(self, state):
        self.__init__(state["model_bytes"], state["source"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.source!r}, vocab_size={self.vocab_size})"


def _optional_id(i: int) -> int | None:
    return None if i < 0 else int(i)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """"bytes", a sentencepiece .model file, or a directory holding one of our tokenizer files
    (tokenizer.json -> the Hugging Face loader)."""
    spec = str(spec)
    if spec == "bytes":
        return ByteTokenizer()
    from etils import epath

    path = epath.Path(spec)
    if path.is_dir():
        if (path / HF_FILE).exists():
            from llm.interop.hf_tokenizer import load_hf_tokenizer

            return load_hf_tokenizer(str(path))
        if (path / SPM_FILE).exists():
            return SentencePieceTokenizer.from_file(path / SPM_FILE)
        if (path / BYTES_FILE).exists():
            return ByteTokenizer()
        raise UserError(f"directory {spec!r} holds no {SPM_FILE}, {HF_FILE} or {BYTES_FILE}; pass a tokenizer directory or 'bytes'")
    if not path.exists():
        raise UserError(f"tokenizer {spec!r} does not exist; use 'bytes', a sentencepiece .model file or a tokenizer directory")
    return SentencePieceTokenizer.from_file(path)


def check_fingerprint(tokenizer: Tokenizer, expected: str, where: str) -> None:
    """Refuse to pair a checkpoint with a tokenizer it was not trained with."""
    if expected and tokenizer.fingerprint != expected:
        raise UserError(
            f"tokenizer fingerprint {tokenizer.fingerprint[:12]} differs from {expected[:12]} recorded in {where}; "
            "use the tokenizer saved in that workdir (data.tokenizer=<workdir>/tokenizer)"
        )


def _sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Sentencepiece trains on lines; newlines themselves are covered by byte fallback."""
    for text in texts:
        for line in text.split("\n"):
            if line:
                yield line[:max_chars]


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    chat_symbols: Sequence[str] = CHAT_SYMBOLS,
    user_symbols: Sequence[str] = (),
    max_sentences: int = 2_000_000,
    num_threads: int = 2,
    seed_sentencepiece_size: int = 200_000,
) -> SentencePieceTokenizer:
    """Train a lossless sentencepiece model: identity normalization, no dummy prefix, whitespace
    kept, digits split, byte fallback; ids 0..3 are unk, bos, eos, pad."""
    import sentencepiece as spm

    if vocab_size < 260 + len(chat_symbols) + len(user_symbols) and byte_fallback:
        raise UserError(f"vocab_size={vocab_size} is too small with byte fallback (256 byte pieces + specials); use >= 320")
    model = io.BytesIO()
    count = [0]

    def counted():
        for s in _sentences(texts, 4096):
            count[0] += 1
            yield s

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=byte_fallback,
            character_coverage=0.9995 if byte_fallback else 1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            max_sentence_length=4096 * 4,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size,
            user_defined_symbols=list(chat_symbols) + list(user_symbols),
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as err:
        if count[0] == 0:
            raise UserError("the tokenizer training source yielded no text; check data.path") from None
        raise UserError(f"sentencepiece training failed: {str(err).splitlines()[0]}; lower --vocab-size or add text") from None
    return SentencePieceTokenizer(model.getvalue(), source="<trained>")
