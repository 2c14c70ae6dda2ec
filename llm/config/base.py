"""The full config schema with defaults; every preset in configs/ starts from `base_config()`.

One place lists every key, so an override that is not here is a typo, and the presets only
state what differs.
"""

from __future__ import annotations

import ml_collections


def default_rules() -> ml_collections.ConfigDict:
    """Logical axis -> mesh axes. Parameters use the plain names, activations the `act_` ones."""
    rules = ml_collections.ConfigDict()
    # Parameters.
    rules.vocab = ("tensor",)
    rules.embed = ("fsdp",)
    rules.mlp = ("tensor",)
    rules.heads = ("tensor",)
    rules.kv_heads = ("tensor",)
    rules.kv = ()
    rules.layers = ()
    rules.norm = ()
    rules.positions = ()
    # Activations.
    rules.batch = ("data", "fsdp")
    rules.length = ()
    rules.act_embed = ()
    rules.act_heads = ("tensor",)
    rules.act_kv_heads = ("tensor",)
    rules.act_mlp = ("tensor",)
    rules.act_vocab = ("tensor",)
    return rules


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    m = c.model
    m.family = "llama"  # llama (also Mistral / Qwen2 shapes) | gpt2
    m.vocab_size = 256
    m.vocab_multiple = 128  # the padded vocab is a multiple of this and of the vocab shards
    m.d_model = 128
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 4
    m.head_dim = 0  # 0 = d_model // n_heads
    m.d_ff = 512
    m.max_seq_len = 256
    m.norm_eps = 1e-5
    m.rope_theta = 10000.0
    m.rope_scaling = ml_collections.ConfigDict()
    m.rope_scaling.type = ""  # "" | llama3
    m.rope_scaling.factor = 8.0
    m.rope_scaling.low_freq_factor = 1.0
    m.rope_scaling.high_freq_factor = 4.0
    m.rope_scaling.original_max_position = 8192
    m.qkv_bias = False
    m.tie_embeddings = False
    m.init_std = 0.02
    m.scan_layers = False
    m.remat = "none"  # none | full | save_matmul
    m.attention_impl = "xla"  # xla | cudnn

    c.precision = ml_collections.ConfigDict()
    c.precision.params = "float32"
    c.precision.compute = "auto"  # auto = bfloat16 on GPU/TPU, float32 on CPU
    c.precision.optimizer_state = "float32"

    c.data = ml_collections.ConfigDict()
    d = c.data
    d.source = "text"  # text | synthetic
    d.path = ""  # glob of text files; "" = the built-in text
    d.eval_path = ""  # "" = hold out eval_fraction of the documents
    d.eval_fraction = 0.05
    d.tokenizer = "bytes"  # bytes | path to a sentencepiece .model
    d.seq_len = 128
    d.batch_size = 8  # global, in sequences
    d.packing = "first_fit"  # first_fit | concat
    d.num_workers = 0
    d.seed = 0

    c.train = ml_collections.ConfigDict()
    t = c.train
    t.steps = 100
    t.seed = 0
    t.grad_accum = 1
    t.z_loss = 0.0
    t.log_every = 10
    t.eval_every = 50
    t.eval_steps = 4
    t.nan_policy = "stop"  # stop | skip

    c.optim = ml_collections.ConfigDict()
    o = c.optim
    o.lr = 3e-4
    o.warmup_steps = 10
    o.decay = "cosine"  # cosine | linear | constant
    o.min_lr_ratio = 0.1
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.clip_norm = 1.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = default_rules()

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0 = only at the end
    c.checkpoint.keep = 3
    return c
