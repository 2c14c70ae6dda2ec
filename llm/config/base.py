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
    rules.length = ("sequence",)  # context parallelism: positions split over mesh.sequence
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
    m.rope_scaling.type = ""  # "" | llama3 | linear (positions divided by factor)
    m.rope_scaling.factor = 8.0
    m.rope_scaling.low_freq_factor = 1.0
    m.rope_scaling.high_freq_factor = 4.0
    m.rope_scaling.original_max_position = 8192
    m.qkv_bias = False
    m.tie_embeddings = False
    # Family features (Qwen3, Gemma 2/3); the defaults are plain Llama.
    m.sliding_window = 0  # keys a query sees on "sliding" layers, itself included (0 = no window)
    m.layer_types = ()  # per layer "full" | "sliding"; () = all "sliding" with a window, else all "full"
    m.rope_local_theta = 0.0  # RoPE base of "sliding" layers, unscaled (Gemma 3: 10k); 0 = the full layers' tables
    m.qk_norm = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3)
    m.norm_plus_one = False  # RMSNorm scales by (1 + weight), weights start at 0 (Gemma)
    m.post_norms = False  # RMSNorm on the attention and MLP outputs before the residual add (Gemma 2/3)
    m.mlp_activation = "silu"  # gated MLP: silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)
    m.embed_scale = False  # embeddings times sqrt(d_model) (Gemma)
    m.query_pre_attn_scalar = 0.0  # attention scores scaled by this ** -0.5 (0 = head_dim)
    m.attn_softcap = 0.0  # attention logits -> cap * tanh(logits / cap) (Gemma 2); 0 = off
    m.final_softcap = 0.0  # LM-head logits likewise (Gemma 2); 0 = off
    m.init_std = 0.02
    m.scan_layers = False
    m.remat = "none"  # none | full | save_matmul | save_dot_except_mlpwi | save_dot_except_mlp | save_qkv_proj | ... (llm.model.decoder.REMAT_POLICIES)
    m.loss_chunk = 0  # positions per logits + cross-entropy chunk (0 = whole sequence at once)
    m.attention_impl = "xla"  # xla | cudnn | blocked (causal query blocks; fastest on CPU) | splash (TPU) | auto (per platform)
    m.attention_block = 64  # query positions per block for attention_impl="blocked"
    # bf16 on one CPU device with AMX: weight gradients on llm.cpu.gemm's kernel (llm.cpu.matmul)
    m.cpu_gemm = True

    c.precision = ml_collections.ConfigDict()
    c.precision.params = "float32"
    c.precision.compute = "auto"  # auto = bfloat16 on GPU/TPU; on CPU bf16 where its bf16 matmul is >= 1.25x f32 (llm.cpu.precision)
    c.precision.optimizer_state = "float32"  # float32 | bfloat16: the dtype both Adam moments are stored in

    c.data = ml_collections.ConfigDict()
    d = c.data
    d.source = "text"  # text | jsonl | parquet | arrayrecord | tfds | hf | synthetic
    d.path = ""  # file, directory or glob (local or gs://); "" = the built-in text; tfds: dataset name
    d.eval_path = ""  # "" = hold out eval_fraction of the documents (by a hash of the document key)
    d.eval_fraction = 0.05
    d.split = "train"  # tfds / hf dataset-dict split read for training
    d.eval_split = ""  # tfds / hf split used for validation instead of a held-out fraction
    d.data_dir = ""  # tfds data_dir
    d.mixture = ()  # weighted sources "KIND:PATH@WEIGHT", e.g. ("jsonl:a/*.jsonl@0.7", "text:b/*.txt@0.3")
    d.text_field = "text"  # field holding the document in JSONL / Parquet / ArrayRecord / TFDS / HF records
    d.record_format = "json"  # arrayrecord records: json (objects with text_field) | text (raw UTF-8)
    d.format = "pretrain"  # pretrain | sft (chat `messages` or prompt/response; loss on assistant tokens)
    d.prompt_field = "prompt"
    d.response_field = "response"
    d.chat_template = "default"  # default | chatml | gemma | path to a template JSON file
    # Preference records whose prompt/answers are strings: True renders them through chat_template
    # as a user prompt + assistant answer (as `llm sft` renders prompt/response records); False
    # concatenates them as plain text with EOS after each answer (TRL's non-conversational form).
    d.strings_as_chat = True
    d.tokenizer = "bytes"  # bytes | path to a sentencepiece .model | tokenizer directory
    d.add_bos = True  # only where the tokenizer has BOS / EOS ids
    d.add_eos = True
    d.seq_len = 128
    d.batch_size = 8  # global, in sequences
    d.packing = "first_fit"  # first_fit | concat
    d.long_documents = "split"  # split | truncate | skip | fail (SFT examples are never split)
    d.bad_input = "skip"  # skip (counted, logged, reported) | fail
    d.num_workers = 0  # Grain worker processes for reading + tokenizing
    d.read_threads = 0  # reader threads per process (raise for remote storage such as gs://)
    d.worker_buffer_size = 2
    d.prefetch = 2  # batches prefetched by a background thread
    d.seed = 0

    d.curate = ml_collections.ConfigDict()
    q = d.curate
    q.normalize = "NFC"  # NFC | NFKC | "" (none)
    q.min_chars = 50
    q.max_chars = 1_000_000
    q.min_words = 5
    q.max_words = 200_000
    q.min_mean_word_len = 2.0
    q.max_mean_word_len = 15.0
    # Defaults suit code and prose alike (the built-in corpus is Python); Gopher's prose values
    # are noted where they differ.
    q.max_symbol_word_ratio = 0.5  # Gopher: 0.1 ('#' starts every code comment)
    q.min_punct_line_frac = 0.0  # C4 uses lines ending in punctuation; 0 disables (code corpora)
    q.max_dup_line_frac = 0.5  # Gopher: 0.3 (code repeats `else:`, `return`, ...)
    q.max_top_ngram_frac = 0.2  # most frequent 2-gram's share of word characters (Gopher: 0.2)
    q.max_dup_ngram_frac = 0.45  # share of word characters in repeated 5-grams (Gopher: 0.15)
    q.exact_dedup = True
    q.near_dedup = True
    q.near_threshold = 0.8  # Jaccard similarity of 5-word shingles
    q.num_perm = 128  # MinHash permutations = bands * rows
    q.bands = 16
    q.shingle = 5
    q.pii = True
    q.decontaminate = ""  # glob of evaluation files whose 13-grams are removed from training
    q.decontam_ngram = 13
    q.eval_fraction = 0.05  # train/validation split by content hash
    q.shard_docs = 10_000  # documents per output shard
    q.output_format = "arrayrecord"  # arrayrecord | jsonl
    q.examples = 3  # removed examples kept per stage in the report

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
    t.measure_peak = True  # on CPU, time a matmul at start for the MFU denominator

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
    # True: Adam's moments live in pinned host memory between steps and are streamed to the
    # accelerator for the update (frees their HBM for activations; costs a host round trip a step)
    o.offload_state = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.sequence = 1  # context parallelism: each sequence split over this many devices, keys/values gathered
    c.mesh.rules = default_rules()

    # Multi-process jobs (llm.parallel.distributed): "auto" detects Cloud TPU, SLURM and Open MPI.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"  # auto | off | explicit | slurm | ompi | tpu
    c.distributed.coordinator_address = ""  # HOST:PORT of process 0; "" = from the environment
    c.distributed.num_processes = 0  # 0 = from the environment
    c.distributed.process_id = -1  # -1 = from the environment
    c.distributed.initialization_timeout = 300  # seconds to wait for every process
    c.distributed.cpu_collectives = "gloo"  # cross-process collectives on CPU: gloo | mpi | ""

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0 = only at the end (and on preemption)
    c.checkpoint.every_minutes = 0.0  # 0 = no time-based saves
    c.checkpoint.keep = 3  # temporary checkpoints kept
    c.checkpoint.permanent_every_steps = 0  # steps that are multiples of this are never deleted
    c.checkpoint.async_save = True
    c.checkpoint.restore_step = -1  # -1 = the latest valid checkpoint
    c.checkpoint.init_from = ""  # a params-only checkpoint directory or a workdir: weights only
    c.checkpoint.init_from_hf = ""  # a Hugging Face model directory (config.json + safetensors)
    # init_from weights trained with another tokenizer (same vocab size, other fingerprint) are
    # refused; true starts from them anyway (e.g. a deliberately re-trained tokenizer), with a warning.
    c.checkpoint.allow_tokenizer_mismatch = False

    # Parameter-efficient fine-tuning (llm.peft): transforms of the parameter tree. Paths are
    # slash-joined, e.g. blocks/0/attn/q/kernel (blocks/attn/q/kernel with scan_layers).
    c.peft = ml_collections.ConfigDict()
    p = c.peft
    p.lora_rank = 0  # 0 = no LoRA: full fine-tuning (minus peft.freeze)
    p.lora_alpha = 16.0
    p.lora_dropout = 0.0
    p.lora_targets = "all_linear"  # attention | mlp | all_linear | a regex over kernel paths
    p.rslora = False  # scale by alpha / sqrt(rank) instead of alpha / rank
    p.quantize = ""  # "" | int8 | nf4: the frozen base stored quantized (QLoRA; needs lora_rank > 0)
    p.quant_block = 64  # values per quantization scale, along each kernel's input dimension
    p.freeze = ()  # regexes of parameter paths not trained, e.g. ("^embed$", "^blocks/0/")

    # Evaluation during training (llm.train.task_eval): lm-eval task files scored on the current
    # weights, and early stopping on any eval metric. Works in `llm train` / sft / dpo / grpo / ...
    c.eval = ml_collections.ConfigDict()
    e = c.eval
    e.tasks = ""  # comma-separated lm-eval task YAMLs (or directories of them) and/or "builtin"; "" = none
    e.every_steps = 0  # run the tasks every N steps (and at the last step); 0 = never
    e.limit = 0.0  # documents per task: 0 = all, N >= 1 = the first N, a fraction < 1 = that share (lm-eval --limit)
    e.num_fewshot = -1  # -1 = each task's own num_fewshot
    e.batch_size = 16  # requests per forward pass
    # The metric early stopping watches: "eval_loss", any key the run's evaluation logs (RL:
    # "eval_reward"), or a task metric "<task>/<metric>,<filter>" (e.g. "builtin_next_line/acc,none",
    # logged as "eval/builtin_next_line/acc,none").
    e.early_stop_metric = "eval_loss"
    e.early_stop_mode = "auto"  # auto (tasks: the metric's higher_is_better; losses: lower) | max | min
    e.patience = 0  # evals of that metric without improving before stopping; 0 = finetune.patience (0 = never)

    # Fine-tuning recipes (llm.finetune, `llm sft` / `llm classify`).
    c.finetune = ml_collections.ConfigDict()
    f = c.finetune
    f.task = "sft"  # sft | classification | reward (`llm rm`) | dpo (`llm dpo`) | grpo | ppo
    f.patience = 0  # evals without a better eval.early_stop_metric (eval loss) before stopping; 0 = never
    f.num_labels = 0  # classification: 0 = from the data (the manifest's labels, else max label + 1)
    f.label_field = "label"  # classification records: {data.text_field: str, label_field: int}
    f.export_merged = True  # write <workdir>/merged: the fine-tuned weights as a params-only checkpoint

    # Preference tuning (`llm dpo`, llm.rl.dpo_losses): TRL's names and defaults.
    c.dpo = ml_collections.ConfigDict()
    p = c.dpo
    p.loss = "sigmoid"  # sigmoid (DPO) | robust (cDPO) | hinge | ipo | simpo | orpo
    p.beta = 0.1
    p.label_smoothing = 0.0  # sigmoid (cDPO form), robust, simpo
    p.simpo_gamma = 0.5  # simpo's target margin (TRL CPOConfig.simpo_gamma)
    p.orpo_lambda = 0.1  # orpo's odds-ratio weight (TRL ORPOConfig.beta)
    p.sft_weight = 0.0  # RPO: weight of the chosen answers' NLL added to the loss (not orpo)
    # Where the reference policy's log-probs come from: auto = adapters_off with LoRA, precompute
    # for full fine-tuning, none for simpo / orpo. precompute: one pass of the start weights over
    # the pairs before training, stored in the workdir; adapters_off: the frozen base itself.
    p.reference = "auto"  # auto | precompute | adapters_off | none
    p.max_pairs_per_row = 8  # packing: preference pairs (two sequences each) per row of data.seq_len

    # Reward models (`llm rm`, llm.rl.reward_loss): TRL RewardTrainer's loss.
    c.rm = ml_collections.ConfigDict()
    c.rm.center_rewards_coefficient = 0.0  # 0 = off; TRL suggests 0.01
    c.rm.margin_field = ""  # a per-pair margin column of the records ("" = none)
    c.rm.max_pairs_per_row = 8

    # Online RL (`llm grpo` / `llm ppo`, llm.rl): rollouts from our sampler, rewards, policy-gradient
    # updates on the one training loop. Names follow TRL's GRPOConfig where it has one; where TRL
    # and Tunix differ the comment says which one the default matches.
    c.rl = ml_collections.ConfigDict()
    r = c.rl
    r.task = "addition"  # prompts: addition | docstring (built-in verifiable tasks) | jsonl (data.path rows)
    r.task_size = 2000  # built-in task: prompts generated (seeded by data.seed); held_out of them kept for eval
    r.held_out = 200
    r.digits = 2  # addition: operands have 1..digits digits
    r.prompts_per_step = 4  # prompts per rollout batch; the batch is prompts_per_step * num_generations sequences
    r.num_generations = 8  # G completions per prompt (TRL num_generations=8)
    r.steps_per_generation = 1  # optimizer steps per rollout batch (it is split into this many minibatches)
    r.num_iterations = 1  # mu: passes over each rollout batch, old log-probs kept (TRL 1, Tunix num_iterations 1)
    r.max_prompt_tokens = 64  # longer prompts are cut from the left (TRL max_prompt_length keeps the end)
    r.max_new_tokens = 32  # TRL max_completion_length=256; small for the built-in tasks
    r.temperature = 1.0  # TRL 1.0; the training forward divides the logits by it too, as TRL does
    r.top_p = 1.0
    r.top_k = 0
    r.stop_strings = ()  # besides the tokenizer's EOS; the completion is cut after the first one
    r.advantage = "grpo"  # grpo: (r - mean_g) / (std_g + eps) | rloo: r - mean of the other G-1
    r.scale_rewards = "group"  # group | batch | none (TRL "group"; Dr.GRPO: none)
    r.std_eps = 1e-4  # TRL adds 1e-4 to the (unbiased, ddof=1) group std; Tunix 1e-6 to ddof=0
    r.epsilon_low = 0.2  # TRL epsilon
    r.epsilon_high = 0.2  # TRL epsilon_high (defaults to epsilon); DAPO 0.28
    r.delta = 0.0  # dual clip: > 1 caps the ratio of the unclipped term (TRL delta, None = off); 0 = off
    r.importance_sampling = "token"  # token | sequence (GSPO); TRL importance_sampling_level
    r.beta = 0.0  # KL penalty weight (TRL 0.0; Tunix 0.04); > 0 needs a reference policy
    r.kl_estimator = "k3"  # k1 | k2 | k3 (TRL: k3; Tunix: k3)
    r.use_bias_correction_kl = True  # the KL term times the importance ratio (TRL 1.16 default; Tunix: no)
    r.loss_agg = "dapo"  # grpo | bnpo | dr_grpo | dapo (TRL loss_type default "dapo")
    r.log_ratio_clip = 20.0  # numerical guard: log pi/pi_old is clamped to +-this before exp
    r.missing_eos_penalty = 0.0  # subtracted from the reward of a completion that hit max_new_tokens (0 = off)
    r.rewards = ()  # "builtin:addition", "module:function" or "workdir" (reward model), each "@weight" optional
    r.reward_model = ""  # an `llm rm` workdir scored as one more reward (weight rl.reward_model_weight)
    r.reward_model_weight = 1.0
    r.max_reward_failure_rate = 0.5  # stop when more than this share of a step's reward calls fail
    r.sandbox_timeout_s = 2.0  # generated code (docstring task): wall clock per completion
    r.sandbox_memory_mb = 256
    r.reward_workers = 2  # reward calls in parallel (threads; sandboxed code runs in subprocesses)
    r.eval_prompts = 64  # held-out prompts decoded greedily at each eval
    r.sample_every = 10  # write sample completions with their rewards every N steps (0 = never)
    r.samples = 4  # completions written each time
    # PPO (`llm ppo`): TRL's PPOConfig names and defaults.
    r.kl_coef = 0.05
    r.gamma = 1.0
    r.lam = 0.95
    r.cliprange_value = 0.2
    r.vf_coef = 0.1
    r.num_ppo_epochs = 4
    r.whiten_rewards = False
    r.value_model = "head"  # head: a value head on the policy trunk | separate: own adapters on the shared base (full FT: a copy) + head
    return c
