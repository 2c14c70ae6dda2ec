"""Reward models <-> Hugging Face `*ForSequenceClassification` with num_labels=1.

Our reward model is the decoder plus a bias-free scalar head (llm.finetune.reward): the reward
is the final-norm hidden state at a sequence's last token times a (d_model, 1) kernel, stored
next to a params checkpoint as reward_head.safetensors ("kernel", float32). transformers'
sequence classifier is the same computation: `score` (a Linear without bias, weight (1, d_model)
= kernel.T) applied to the last hidden state, read at the rightmost token that is not
`pad_token_id`. It has no LM head, so an export drops ours and an import ties the (unused) LM
head to the embedding instead of inventing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llm.errors import UserError
from llm.interop.safetensors_io import SafetensorsReader, TensorEntry

REWARD_HEAD_FILE = "reward_head.safetensors"  # next to a params checkpoint: {"kernel": f32 (d_model, 1)}
SCORE_WEIGHT = "score.weight"
SEQUENCE_CLASSIFIERS = {
    "llama": "LlamaForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}


def is_sequence_classifier(hf_config: dict) -> bool:
    """Whether a Hugging Face config.json describes a `*ForSequenceClassification` model."""
    return any(str(a).endswith("ForSequenceClassification") for a in hf_config.get("architectures") or ())


def num_labels(hf_config: dict) -> int:
    """transformers stores num_labels as id2label (its default, without one, is 2)."""
    if hf_config.get("id2label"):
        return len(hf_config["id2label"])
    return int(hf_config.get("num_labels", 2))


def check_kernel(kernel: Any, d_model: int, where: str) -> np.ndarray:
    """The head as float32 (d_model, 1), or a one-line error naming its shape."""
    kernel = np.asarray(kernel)
    if kernel.shape != (d_model, 1):
        raise UserError(f"{where} has a reward head of shape {kernel.shape}, expected ({d_model}, 1) for d_model={d_model}; "
                        "it belongs to another model")
    if not np.issubdtype(kernel.dtype, np.floating):
        raise UserError(f"{where} has a reward head of dtype {kernel.dtype}; expected float32")
    return kernel.astype(np.float32)


def read_head_file(directory: str | Path) -> np.ndarray | None:
    """The kernel of DIRECTORY/reward_head.safetensors (shape unchecked), or None without one."""
    path = Path(directory) / REWARD_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                        "it is damaged: re-run or re-export the reward model") from None
    if "kernel" not in tensors:
        raise UserError(f"{path} has no 'kernel' tensor (has {sorted(tensors)[:3]}); it is not a reward head")
    return tensors["kernel"]


def write_head_file(directory: str | Path, kernel: np.ndarray) -> Path:
    from safetensors.numpy import save_file

    path = Path(directory) / REWARD_HEAD_FILE
    save_file({"kernel": np.ascontiguousarray(kernel, np.float32)}, str(path))
    return path


def read_reward_head(hf_dir: str | Path) -> np.ndarray | None:
    """The (d_model, 1) float32 kernel (score.weight.T) of a num_labels=1 sequence classifier;
    None for any other model (a causal LM); a UserError for a classifier of several labels."""
    from llm.interop.hf_config import read_hf_config

    hf = read_hf_config(hf_dir)
    if not is_sequence_classifier(hf):
        return None
    labels = num_labels(hf)
    if labels != 1:
        raise UserError(f"{str(hf_dir)!r} is a sequence classifier with num_labels={labels}; a reward model has "
                        "num_labels=1 (one scalar score): pass a reward model or a causal LM")
    reader = SafetensorsReader(hf_dir)
    if SCORE_WEIGHT not in reader.tensors:
        raise UserError(f"{str(hf_dir)!r} is a sequence classifier without a {SCORE_WEIGHT!r} tensor; the checkpoint is incomplete")
    weight = reader.read(SCORE_WEIGHT)
    if weight.ndim != 2 or weight.shape[0] != 1:
        raise UserError(f"{str(hf_dir)!r}: {SCORE_WEIGHT} has shape {weight.shape}, expected (1, d_model)")
    return np.ascontiguousarray(weight.T, np.float32)


def as_sequence_classifier(
    hf_config: dict, rules: list, kernel: np.ndarray, dtype: np.dtype, pad_token_id: int | None = None,
) -> tuple[dict, list, list[TensorEntry]]:
    """Turn a causal-LM export (config.json dict, weight rules) into a num_labels=1 sequence
    classifier: (config, rules without lm_head, [the score.weight entry])."""
    mt = hf_config["model_type"]
    d_model = int(hf_config.get("hidden_size") or hf_config["n_embd"])
    kernel = check_kernel(kernel, d_model, "the export")
    pad = hf_config.get("pad_token_id") if pad_token_id is None else int(pad_token_id)
    if pad is None:
        raise UserError(
            "the tokenizer has no pad token, and transformers' sequence classifier needs config.json pad_token_id to find "
            "each row's last token; pass --pad-token-id with an id that never occurs in text"
        )
    out = {**hf_config, "architectures": [SEQUENCE_CLASSIFIERS[mt]], "pad_token_id": int(pad),
           "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    weight = kernel.T  # (1, d_model): torch Linear (out, in)
    entry = TensorEntry(SCORE_WEIGHT, weight.shape, np.dtype(dtype), lambda: weight.astype(dtype))
    return out, [r for r in rules if r.hf != "lm_head.weight"], [entry]
