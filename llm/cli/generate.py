"""`llm generate`: complete prompts with a trained model.

    llm generate --checkpoint DIR --prompt "Once upon a time" [--max-new-tokens 64]
    llm generate --checkpoint DIR --input prompts.jsonl --output out.jsonl [--batch-size 16]
    llm generate --workdir SFT_RUN --chat --input sft/validation.jsonl --limit 8 --output out.jsonl

One --prompt streams its tokens to the console as they are produced; several are completed as
one batch. Batch mode reads JSON lines with a "prompt" field (and optionally
"max_new_tokens"), writes each input object back with "completion", "tokens" and
"finish_reason" added (and "logprobs" with --logprobs), and shows a progress bar.
--chat formats each prompt as a user turn of the model's chat template and opens the assistant
turn, as `llm sft` trained it; with --chat an input line may instead hold SFT "messages", whose
turns up to the last user turn are the prompt (so a held-out SFT file can be completed as is).
A Hugging Face model directory (unless --config.data.chat_template names one of ours), or a
checkpoint whose data.chat_template is empty, uses its tokenizer's own jinja chat template,
rendered and encoded as transformers' apply_chat_template(add_generation_prompt=True) does (no
BOS/EOS added: they come from the template text).
`--config.a.b=value` overrides apply to the checkpoint's stored config (e.g. the mesh).
A Hugging Face model directory generates as transformers' text-generation pipeline does: the
prompt encoded as its AutoTokenizer encodes it (BOS or not), its generation_config.json's eos ids
(every one stops) and sampling defaults unless a flag says otherwise, special tokens left out of
the text.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

from llm.data.jsonl import read_jsonl
from llm.errors import UserError

DEFAULT_MAX_NEW = 64


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="complete prompts with a trained model (KV-cache sampler)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="params checkpoint directory (llm export / llm convert) or a Hugging Face model directory (imported on the fly)")
    src.add_argument("--workdir", help="a training workdir: generate from its latest valid checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    src.add_argument("--input", help="JSONL file of {\"prompt\": ...} objects")
    p.add_argument("--output", help="where --input results go (JSONL)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default: the model's generation_config.json max_new_tokens (or max_length), else {DEFAULT_MAX_NEW}")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: generation_config.json's, else 0)")
    p.add_argument("--top-k", type=int, default=None, help="0 = off (default: generation_config.json's when it samples)")
    p.add_argument("--top-p", type=float, default=None, help="1 = off (default: generation_config.json's when it samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop token text (one token; escapes like \\n work)")
    p.add_argument("--no-eos-stop", action="store_true",
                   help="do not stop at EOS (the generation_config.json eos ids of a Hugging Face model, else the tokenizer's)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per batch in --input mode")
    p.add_argument("--chunk-tokens", type=int, default=8, help="tokens decoded between console updates")
    p.add_argument("--logprobs", action="store_true", help="also return per-token log-probabilities")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template (as llm sft trains)")
    p.add_argument("--limit", type=int, default=0, help="only the first N lines of --input (0 = all)")
    p.set_defaults(func=run)


def _stop_ids(tokenizer, stops: list[str], eos_stop: bool, eos_ids: tuple[int, ...] = ()) -> list[int]:
    ids = []
    for text in stops:
        piece = codecs.decode(text, "unicode_escape") if "\\" in text else text
        i = tokenizer.token_id(piece)
        if i is None:
            raise UserError(f"unknown stop token {text!r}: it is not a single token of this tokenizer; pass one token")
        ids.append(i)
    if eos_stop:
        ids.extend(eos_ids or ([tokenizer.eos_id] if tokenizer.eos_id is not None else []))
    return ids


def _encode(tokenizer, config, text: str, where: str, template=None) -> list[int]:
    """The prompt's ids; a Hugging Face chat template's text is encoded without BOS/EOS, as
    apply_chat_template(tokenize=True) does (add_special_tokens=False)."""
    if not text:
        raise UserError(f"{where} is empty; give some text to complete")
    ids = tokenizer.encode(text)
    if not getattr(template, "adds_special_tokens", True):
        return ids
    if config.data.add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id] + ids
    if getattr(tokenizer, "adds_eos", False):  # a Hugging Face tokenizer whose post-processor appends EOS
        ids = ids + [tokenizer.eos_id]
    return ids


class _ShownText:
    """The tokenizer's decode as transformers' pipeline shows text: a Hugging Face tokenizer
    leaves special tokens out (skip_special_tokens=True). While streaming (`final` False) a
    trailing run of byte-fallback tokens (<0x..>) is held back: the run decodes as a whole, and
    bytes that look complete now may turn into replacement characters once the run goes on."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.skip = getattr(tokenizer, "adds_bos", None) is not None
        self.final = True

    def _is_byte(self, i: int) -> bool:
        piece = self.tokenizer._tok.id_to_token(int(i))
        return piece is not None and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")

    def decode(self, ids) -> str:
        if not self.skip:
            return self.tokenizer.decode(ids)
        ids = list(ids)
        while not self.final and ids and self._is_byte(ids[-1]):
            ids.pop()
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _read_jsonl(path: str, chat: bool, limit: int) -> list[dict]:
    if not Path(path).is_file():
        raise UserError(f"--input {path!r} does not exist; pass a JSONL file of {{\"prompt\": ...}} lines")
    rows = []
    for n, row in read_jsonl(path, "--input"):
        has_prompt = isinstance(row, dict) and isinstance(row.get("prompt"), str)
        has_messages = chat and isinstance(row, dict) and isinstance(row.get("messages"), list)
        if not (has_prompt or has_messages):
            if chat:
                raise UserError(f"line {n} of {path} has neither a string \"prompt\" field nor a \"messages\" list")
            raise UserError(f"line {n} of {path} has no string \"prompt\" field")
        row["_line"] = n
        rows.append(row)
        if limit and len(rows) == limit:
            break
    if not rows:
        raise UserError(f"--input {path!r} holds no prompts")
    return rows


def _prompt_messages(row: dict, where: str) -> list[dict]:
    """An SFT conversation up to (and including) its last user turn: what the model answers."""
    messages = row["messages"]
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise UserError(f"{where} has no user turn in \"messages\"; give a conversation that ends with the user's request")
    for m in messages[: users[-1] + 1]:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: every message needs a role (system, user or assistant) and string content")
    return messages[: users[-1] + 1]


def _chat_template(source: str, config, overrides=()):
    """The template the model was fine-tuned with: the config's, else its tokenizer's own (our
    chat_template.json, else a Hugging Face tokenizer's jinja template). A Hugging Face model
    directory's config is the import's defaults: its tokenizer's jinja template wins there unless
    --config.data.chat_template names one."""
    from llm.data.formats import chat_template
    from llm.generate.load import _is_hf
    from llm.interop.hf_chat_template import load_hf_chat_template

    hf = _is_hf(source)
    chosen = any(o.split("=", 1)[0].strip() == "data.chat_template" for o in overrides)
    if config.data.chat_template and (chosen or not hf):
        return chat_template(config.data.chat_template)
    tok_dirs = [Path(source) / "tokenizer", Path(source) / "merged" / "tokenizer"]
    for tok_dir in tok_dirs:
        if (tok_dir / "chat_template.json").is_file():
            return chat_template(str(tok_dir / "chat_template.json"))
    for tok_dir in ([Path(source)] if hf else []) + tok_dirs:
        if (tok_dir / "tokenizer.json").is_file():
            template = load_hf_chat_template(tok_dir)
            if template is not None:
                return template
    if config.data.chat_template:  # a Hugging Face directory whose tokenizer has no template
        return chat_template(config.data.chat_template)
    raise UserError(
        f"--chat: {source!r} has no chat template (data.chat_template is empty and its tokenizer has none); "
        "pass --config.data.chat_template=default (or chatml, or a JSON file)"
    )


def _prompt_text(row: dict, template, where: str) -> str:
    if template is None:
        return row["prompt"]
    if isinstance(row.get("prompt"), str):
        return template.generation_prompt([{"role": "user", "content": row["prompt"]}])
    return template.generation_prompt(_prompt_messages(row, where))


def _validate_args(args: argparse.Namespace) -> None:
    if args.input and not args.output:
        raise UserError("--input needs --output FILE for the results")
    if args.output and not args.input:
        raise UserError("--output is only used with --input; with --prompt the completion goes to the console")
    if args.batch_size < 1 or args.chunk_tokens < 1:
        raise UserError("--batch-size and --chunk-tokens must be >= 1")
    if args.limit < 0 or (args.limit and not args.input):
        raise UserError(f"--limit {args.limit} needs --input and must be >= 0 (0 = every line)")


def _stream_one(loaded, prompt_ids: list[int], stop_ids: list[int], kwargs: dict, out) -> None:
    from llm.generate.text_stream import TextStream

    shown = _ShownText(loaded.tokenizer)
    shown.final = False
    stream = TextStream(shown, stop_ids)

    def on_chunk(rows: list[list[int]]) -> None:
        out.write(stream.push(rows[0]))
        out.flush()

    (done,) = loaded.generator.generate([prompt_ids], on_chunk=on_chunk, **kwargs)
    shown.final = True
    out.write(stream.flush() + "\n")
    if done.logprobs is not None:
        out.write(f"logprobs: {json.dumps(done.logprobs)}\n")
    out.flush()


def _completion_text(tokenizer, tokens: list[int], stop_ids: list[int]) -> str:
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return _ShownText(tokenizer).decode(tokens)


def _batch_file(loaded, args, stop_ids: list[int], kwargs: dict, template) -> None:
    from tqdm import tqdm

    rows = _read_jsonl(args.input, args.chat, args.limit)
    encoded = []
    for r in rows:
        where = f"the prompt on line {r['_line']} of {args.input}"
        encoded.append(_encode(loaded.tokenizer, loaded.config, _prompt_text(r, template, where), where, template))
    max_new = [int(r["max_new_tokens"]) if "max_new_tokens" in r else _max_new(args, e) for r, e in zip(rows, encoded)]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as f, tqdm(total=len(rows), unit="prompt", desc="generate") as bar:
        for start in range(0, len(rows), args.batch_size):
            end = start + args.batch_size
            try:
                done = loaded.generator.generate(
                    encoded[start:end], max_new_tokens=max_new[start:end], pad_batch_to=args.batch_size, **kwargs
                )
            except UserError as err:
                raise UserError(f"{args.input} lines {rows[start]['_line']}-{rows[min(end, len(rows)) - 1]['_line']}: {err}") from None
            for row, c in zip(rows[start:end], done):
                result = {k: v for k, v in row.items() if k != "_line"}
                result.update(
                    completion=_completion_text(loaded.tokenizer, c.tokens, stop_ids),
                    tokens=c.tokens,
                    finish_reason=c.finish_reason,
                )
                if c.logprobs is not None:
                    result["logprobs"] = c.logprobs
                f.write(json.dumps(result) + "\n")
            f.flush()
            bar.update(len(done))


def _generation_defaults(source: str):
    """A Hugging Face model directory's generation_config.json (its config.json's ids without
    one); nothing for our own checkpoints."""
    from llm.generate.load import _is_hf
    from llm.interop.hf_generation import GenerationDefaults, read_generation_config

    return read_generation_config(source) if _is_hf(source) else GenerationDefaults()


def _sampling(args: argparse.Namespace, defaults, vocab_size: int):
    """Explicit flags win; otherwise the model's defaults (greedy unless it says do_sample;
    transformers' top_k 50 is capped at the vocabulary)."""
    from llm.generate.sampling import SamplingOptions

    temperature, top_k, top_p = defaults.sampling()
    return SamplingOptions(
        temperature=temperature if args.temperature is None else args.temperature,
        top_k=min(top_k, vocab_size) if args.top_k is None else args.top_k,
        top_p=top_p if args.top_p is None else args.top_p,
    )


def _max_new(args: argparse.Namespace, prompt: list[int]) -> int:
    """--max-new-tokens, else generation_config.json's max_new_tokens, else its max_length less
    the prompt (transformers counts the prompt in max_length), else DEFAULT_MAX_NEW."""
    defaults = args.generation_defaults
    if args.max_new_tokens is not None:
        return args.max_new_tokens
    if defaults.max_new_tokens is not None:
        return defaults.max_new_tokens
    if defaults.max_length is not None:
        return max(1, defaults.max_length - len(prompt))
    return DEFAULT_MAX_NEW


def run(args: argparse.Namespace) -> int:
    from llm.generate.load import checkpoint_config, load_for_generation

    _validate_args(args)
    source = args.checkpoint or args.workdir
    config = checkpoint_config(source, args.config_overrides)
    args.generation_defaults = defaults = _generation_defaults(source)
    options = _sampling(args, defaults, config.model.vocab_size)
    options.validate(config.model.vocab_size)
    prompts = args.prompt or []
    for i, text in enumerate(prompts):
        if not text:
            raise UserError(f"--prompt number {i + 1} is empty; give some text to complete")
    template = _chat_template(source, config, args.config_overrides) if args.chat else None
    loaded = load_for_generation(source, config)
    stop_ids = _stop_ids(loaded.tokenizer, args.stop, not args.no_eos_stop, defaults.eos_ids)
    kwargs = dict(options=options, stop_tokens=stop_ids, seed=args.seed, return_logprobs=args.logprobs)
    if args.input:
        _batch_file(loaded, args, stop_ids, kwargs, template)
        return 0
    encoded = [
        _encode(loaded.tokenizer, config, _prompt_text({"prompt": t}, template, ""), f"--prompt number {i + 1}", template)
        for i, t in enumerate(prompts)
    ]
    if len(encoded) == 1:
        _stream_one(
            loaded, encoded[0], stop_ids,
            dict(kwargs, max_new_tokens=_max_new(args, encoded[0]), chunk_tokens=args.chunk_tokens), sys.stdout,
        )
        return 0
    done = loaded.generator.generate(encoded, max_new_tokens=[_max_new(args, e) for e in encoded], **kwargs)
    for i, c in enumerate(done):
        print(f"[{i}] {_completion_text(loaded.tokenizer, c.tokens, stop_ids)}")
        if c.logprobs is not None:
            print(f"[{i}] logprobs: {json.dumps(c.logprobs)}")
    return 0
