"""Tiny random-weight transformers models and a locally trained tokenizer for the interop tests
(all built on CPU, offline)."""

from __future__ import annotations

import glob
import shutil
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB = 300  # pads to 384: the padded rows / columns are exercised
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def hf_config(family: str):
    """transformers config for one tested variant."""
    import transformers

    # Norm epsilons differ from our defaults (1e-5) so a dropped mapping shows in the logits.
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, rms_norm_eps=1e-6,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if family == "llama":
        return transformers.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "llama31":  # Llama 3.1 style: theta 5e5 and llama3 frequency scaling (all 3 bands hit)
        return transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE))
    if family == "llama_tied":  # Llama 3.2 1B/3B style: tied embeddings, head_dim != d_model / heads
        return transformers.LlamaConfig(**{**common, "head_dim": 32}, tie_word_embeddings=True)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=4096)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "llama32":  # Llama 3.2: tied, llama3 frequency scaling, head_dim != d_model / heads
        return transformers.LlamaConfig(**{**common, "head_dim": 32}, tie_word_embeddings=True, rope_theta=500000.0,
                                        rope_scaling=dict(LLAMA3_ROPE))
    if family == "mistral_window":  # a window shorter than the test sequences
        return transformers.MistralConfig(**common, sliding_window=5)
    if family == "qwen3":  # QK-norm, no biases, head_dim independent of d_model / heads, untied
        return transformers.Qwen3Config(**{**common, "head_dim": 32}, tie_word_embeddings=False)
    if family == "qwen3_tied":  # Qwen3 0.6B style: tied, multi-query
        return transformers.Qwen3Config(**{**common, "num_key_value_heads": 1}, tie_word_embeddings=True)
    if family == "gemma2":  # soft-capping small enough to bend the logits; window 5 on alternate layers
        return transformers.Gemma2Config(**{**common, "num_hidden_layers": 4, "head_dim": 32}, sliding_window=5,
                                         query_pre_attn_scalar=20, attn_logit_softcapping=5.0, final_logit_softcapping=2.0)
    if family == "gemma3":  # 5 local : 1 global layers, local RoPE 10k, global 1M with linear scaling
        return transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 6, "num_key_value_heads": 1, "head_dim": 32}, sliding_window=4,
            query_pre_attn_scalar=24, rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                                       "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128,
                                       layer_norm_epsilon=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    raise ValueError(family)


FAMILIES = ("llama", "llama31", "llama_tied", "llama32", "mistral", "mistral_window", "qwen2", "qwen3", "qwen3_tied",
            "gemma2", "gemma3", "gpt2")


def build_hf_model(family: str, directory: Path | None = None, seed: int = 0, tokenizer_dir: Path | None = None):
    """A random f32 transformers model in eval mode, optionally saved (safetensors) to `directory`.

    Every parameter is randomised, norms and biases included, so a swapped or dropped tensor
    changes the logits.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family), attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.08)
            elif "norm" in name or ".ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    if directory is not None:
        model.save_pretrained(directory)
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                shutil.copyfile(f, Path(directory) / f.name)
    return model


def sample_texts() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    return [Path(f).read_text() for f in sorted(glob.glob(stdlib + "/json/*.py"))]


def train_tokenizer(directory: Path, vocab_size: int = VOCAB, style: str = "bytelevel") -> Path:
    """A BPE tokenizer trained locally, saved the way transformers saves one (with a chat template)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = ["<s>", "</s>", "<pad>"]
    if style == "bytelevel":  # GPT-2 / Llama 3 / Qwen2 style
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # Llama 2 / Mistral style: metaspace with byte fallback
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=["<unk>", *specials, *byte_tokens])
    tok.train_from_iterator(sample_texts(), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    fast.save_pretrained(directory)
    return Path(directory)


def padded_batch(seed: int = 0, length: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, attention_mask): one full row, one left-padded, one right-padded."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, (3, length))
    mask = np.ones((3, length), np.int64)
    mask[1, :4] = 0
    mask[2, -3:] = 0
    tokens = np.where(mask == 1, tokens, 2)  # pad id
    return tokens, mask


def positions_of(mask: np.ndarray) -> np.ndarray:
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions_of(mask)))
    return out.logits.float().numpy()


def our_logits(graphdef, params, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Segment 1 = real tokens, 0 = padding: real tokens never attend to padding, as in HF."""

    @jax.jit
    def forward(p, t, pos, seg):
        return nnx.merge(graphdef, p)(t, pos, seg)

    out = forward(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions_of(mask), jnp.int32),
                  jnp.asarray(mask, jnp.int32))
    return np.asarray(out)


def our_greedy(graphdef, params, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by full recomputation in one fixed-size buffer (one compile)."""
    total = len(prompt) + steps
    buf = np.zeros((1, total), np.int32)
    buf[0, : len(prompt)] = prompt

    @jax.jit
    def forward(p, t):
        return nnx.merge(graphdef, p)(t)

    out = []
    for i in range(len(prompt), total):
        logits = np.asarray(forward(params, jnp.asarray(buf)))
        buf[0, i] = int(np.argmax(logits[0, i - 1]))
        out.append(int(buf[0, i]))
    return out


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    import torch

    model.generation_config.eos_token_id = None  # always 20 new tokens
    model.generation_config.pad_token_id = 2
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=steps)
    return out[0, len(prompt):].tolist()


def single_device_rules(config):
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    return AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, devices=jax.devices()[:1]))


# Tokenizer styles of the families we import, as their Hub directories save them (the class in
# tokenizer_config.json decides what transformers 5's AutoTokenizer rebuilds; see
# llm.interop.hf_auto_tokenizer). Each fits the VOCAB of the test models.
TOKENIZER_STYLES = ("llama3", "qwen2", "gpt2", "mistral", "gemma")


def tokenizer_style(family: str) -> str:
    """The tokenizer style a model family ships with."""
    for prefix, style in (("llama", "llama3"), ("qwen", "qwen2"), ("gpt2", "gpt2"), ("mistral", "mistral"), ("gemma", "gemma")):
        if family.startswith(prefix):
            return style
    raise ValueError(family)


def styled_tokenizer(directory: Path, style: str) -> Path:
    """A BPE tokenizer of `style` trained locally (<= VOCAB tokens), saved with the tokenizer_config.json
    such a model ships: llama3 (byte-level, BOS by its post-processor, PreTrainedTokenizerFast),
    qwen2 (Qwen2Tokenizer: no BOS; its own NFC + regex pre-tokenizer under transformers 5), gpt2
    (GPT2Tokenizer, no BOS), mistral (LlamaTokenizer metaspace + byte fallback, BOS), gemma
    (GemmaTokenizer, <bos>)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_fallback = style in ("mistral", "gemma")
    specials = {"gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], "mistral": ["<unk>", "<s>", "</s>", "<pad>"]}.get(
        style, ["<s>", "</s>", "<pad>"])
    if byte_fallback:
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        bytes_ = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials + bytes_, limit_alphabet=20)
        if style == "mistral":  # Llama 2 / Mistral v0.1 tokenizer.json: Prepend + Replace normaliser
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
            tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        else:
            tok.normalizer = normalizers.Replace(" ", "\u2581")
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_texts(), trainer)
    bos = {"gemma": "<bos>", "qwen2": None}.get(style, "<s>")
    eos = "<eos>" if style == "gemma" else "</s>"
    if style in ("llama3", "mistral", "gemma"):
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": bos, "eos_token": eos, "pad_token": "<pad>", "model_max_length": 131072,
              "clean_up_tokenization_spaces": False,
              "tokenizer_class": {"llama3": "PreTrainedTokenizerFast", "qwen2": "Qwen2Tokenizer", "gpt2": "GPT2Tokenizer",
                                  "mistral": "LlamaTokenizer", "gemma": "GemmaTokenizer"}[style],
              "added_tokens_decoder": {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                                                 "single_word": False, "special": True} for s in specials}}
    if style == "qwen2":
        config.update(unk_token=None, add_bos_token=True, errors="replace")  # add_bos_token: ignored by transformers 5
    if style == "gpt2":
        config.update(unk_token="</s>", pad_token=None, add_prefix_space=False)
    if style in ("mistral", "gemma"):
        config.update(unk_token="<unk>", add_bos_token=True, add_eos_token=False, legacy=False)
    if style == "gemma":
        config["mask_token"] = "<mask>"
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}" + (bos or "") + "{{ m['role'] }}: {{ m['content'] }}" + eos + "{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    return directory
