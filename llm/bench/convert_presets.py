"""The model shapes `llm bench convert` writes as random Hugging Face checkpoints: plain
config.json dicts, kept apart from the benchmark so the CLI can list them without importing it."""

from __future__ import annotations


def _llama(hidden, layers, heads, kv, ffn, vocab, tie, **extra) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": hidden // heads, "intermediate_size": ffn, "vocab_size": vocab,
            "tie_word_embeddings": tie, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "hidden_act": "silu", **extra}


PRESETS = {
    # The Llama 3.2 1B shape: 1.24B parameters, tied embeddings, GQA 32/8, Llama-3 RoPE scaling.
    "llama-1b": _llama(2048, 16, 32, 8, 8192, 128256, True, max_position_embeddings=131072, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}),
    # ~36M parameters (~140 MB in f32): big enough that memory behaviour shows above the runtime.
    "small": _llama(512, 8, 8, 4, 2048, 4096, False),
    "tiny": _llama(64, 2, 4, 2, 128, 300, False),
}
