"""Shared by the TRL peer and parity tests: 8 plain-text preference pairs and the tiny Llama
(causal LM and reward model) both sides start from, built locally with `transformers`."""

from __future__ import annotations

from pathlib import Path

# Each prompt ends on punctuation and each answer starts with a space and a letter, so the
# byte-level BPE tokenizes prompt + answer as prompt, then answer (no merge across the boundary):
# TRL's DPO (prompt and prompt + answer tokenized apart) and RewardTrainer (prompt + answer
# tokenized whole) then see the same ids. Lengths differ so padding and IPO's normalisation matter.
PAIRS = [
    {"prompt": "What does json.dumps return?", "chosen": " A string holding the JSON text.", "rejected": " A file."},
    {"prompt": "How do I read a JSON file?", "chosen": " Open it and pass the file object to json.load.", "rejected": " Guess its contents."},
    {"prompt": "Is JSON a subset of Python?", "chosen": " Not quite: true, false and null differ.", "rejected": " Yes, always."},
    {"prompt": "Name a JSON decoder class.", "chosen": " JSONDecoder.", "rejected": " The decoder that decodes data from somewhere else entirely."},
    {"prompt": "What is indent for?", "chosen": " Pretty printing with that many spaces per level.", "rejected": " Nothing."},
    {"prompt": "Can JSON keys be integers?", "chosen": " No, keys are strings; dumps converts them.", "rejected": " Any object works as a key."},
    {"prompt": "What does sort_keys do?", "chosen": " It writes the keys of every object in sorted order.", "rejected": " Sorts lists."},
    {"prompt": "Which error does a bad document raise?", "chosen": " JSONDecodeError, a subclass of ValueError.", "rejected": " None at all."},
]


def build_models(root: Path) -> dict[str, Path]:
    """{"tokenizer", "lm", "rm"} directories under `root`: a byte-level BPE tokenizer, a random
    f32 LlamaForCausalLM (untied head) with the tokenizer beside it, and the same backbone as a
    LlamaForSequenceClassification(num_labels=1) whose `score` is HF's own seeded init."""
    import torch
    import transformers

    from interop_models import build_hf_model, train_tokenizer

    tok, lm, rm = root / "tokenizer", root / "lm", root / "rm"
    train_tokenizer(tok)
    build_hf_model("llama", lm, tokenizer_dir=tok)
    torch.manual_seed(1)
    transformers.logging.set_verbosity_error()  # its load report: lm_head unexpected, score newly initialised (wanted)
    model = transformers.LlamaForSequenceClassification.from_pretrained(lm, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = 2
    model.save_pretrained(rm)
    for f in tok.iterdir():
        (rm / f.name).write_bytes(f.read_bytes())
    return {"tokenizer": tok, "lm": lm, "rm": rm}
