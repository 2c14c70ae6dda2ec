"""small_gemma2: `small` (configs/small.py) built like Gemma 2: attention-logit soft-capping (50)
and final-logit soft-capping (30), RMSNorm with (1 + weight), sandwich norms, GeGLU (tanh GELU),
scaled and tied embeddings, and sliding-window layers (window 64 = a quarter of the 256-token
sequence) alternating with global ones. Every size, the batch and the layout are small's: this is
the config that measures what soft-capping costs.

Run:
  llm bench --config configs/small_gemma2.py --vs-hf
  llm bench generate --config configs/small_gemma2.py --vs-hf
Expect: the same ratios to Hugging Face transformers (its Gemma2ForCausalLM, which runs eager
attention: its sdpa path has no soft-capping) as `small` has to its Llama. Measured figures:
README Performance.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("small.py"))
    m = c.model
    m.norm_plus_one = True
    m.post_norms = True
    m.mlp_activation = "gelu_tanh"
    m.embed_scale = True
    m.tie_embeddings = True
    m.norm_eps = 1e-6
    m.attn_softcap = 50.0
    m.final_softcap = 30.0
    m.sliding_window = c.data.seq_len // 4
    m.layer_types = tuple("sliding" if (i + 1) % 2 else "full" for i in range(m.n_layers))  # 1:1 local:global
    return c
