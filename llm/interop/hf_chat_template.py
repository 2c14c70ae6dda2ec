"""A Hugging Face tokenizer's own jinja chat template, rendered as transformers 5 renders it.

`tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` runs the
template in a sandboxed jinja environment (trim_blocks, lstrip_blocks, loop controls, the
`{% generation %}` tag) with transformers' helpers (`raise_exception`, a `tojson` that does not
escape HTML, `strftime_now`, a safe `dict` and `namespace`) and the variables `messages`,
`tools`, `documents`, `add_generation_prompt` and every named special token of the tokenizer
(bos_token, eos_token, ... and model-specific `*_token` entries). This module reproduces that
environment and those variables from the tokenizer files, so `llm generate --chat` formats a
Hugging Face model's prompts exactly as transformers does, without transformers installed.
The rendered text is then encoded without BOS/EOS (apply_chat_template(tokenize=True) encodes
with add_special_tokens=False: any BOS comes from the template text itself).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from llm.errors import UserError

# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named tokens every tokenizer passes to its template.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a message's reasoning is passed under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _token_text(value: Any) -> str | None:
    """A token value of the config files as the template sees it (str(AddedToken) = its content)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _is_token(value: Any) -> bool:
    """str or AddedToken: what transformers accepts as a model-specific `*_token` entry (a dict
    becomes an AddedToken only when serialised with "__type": "AddedToken")."""
    return isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken")


def _load_json(files: dict[str, bytes], name: str, source: str) -> dict:
    if name not in files:
        return {}
    try:
        loaded = json.loads(files[name])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{source}/{name} is not valid JSON ({err}); re-save the tokenizer") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{source}/{name} holds a {type(loaded).__name__}, not a JSON object; re-save the tokenizer")
    return loaded


def template_variables(files: dict[str, bytes], source: str = "<bytes>", model_type: str | None = None) -> dict[str, str]:
    """The special tokens transformers passes to the template (`tokenizer.special_tokens_map`,
    model-specific tokens included), from the tokenizer files as AutoTokenizer reads them:
    special_tokens_map.json counts only when tokenizer_config.json has no added_tokens_decoder
    (and then wins), and the class's own defaults fill the named tokens the files omit."""
    from llm.interop.hf_auto_tokenizer import auto_class, effective_config

    config = _load_json(files, "tokenizer_config.json", source)
    if "added_tokens_decoder" not in config:
        for key, value in _load_json(files, "special_tokens_map.json", source).items():
            if isinstance(value, dict) and key != "extra_special_tokens":
                value = {**value, "__type": "AddedToken"}
            if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                continue  # a list of extra tokens: not template variables
            config[key] = value
    tokenizer_json = files.get("tokenizer.json", b"").decode("utf-8", errors="replace")
    config = effective_config(config, auto_class(config, model_type, tokenizer_json))
    out = {}
    for key in NAMED_TOKENS:
        text = _token_text(config.get(key))
        if text is not None:
            out[key] = text
    extra = config.get("extra_special_tokens")
    if not extra and "additional_special_tokens" in config:
        extra = config["additional_special_tokens"]
    specific = {k: v for k, v in config.items() if k not in NAMED_TOKENS and k.endswith("_token") and _is_token(v)}
    if isinstance(extra, dict):
        specific.update(extra)
    for key, value in specific.items():
        text = _token_text(value)
        if text is not None:
            out[key] = text
    return out


def template_source(files: dict[str, bytes], source: str = "<bytes>") -> str | None:
    """The template apply_chat_template uses: chat_template.jinja, else tokenizer_config.json's
    chat_template (a list of named templates: the one named "default")."""
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode("utf-8")
    template = _load_json(files, "tokenizer_config.json", source).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise UserError(
                f"{source}/tokenizer_config.json has several chat templates ({', '.join(sorted(map(str, named)))}) "
                "and none named \"default\"; name the one to use \"default\""
            )
        template = named["default"]
    return template if isinstance(template, str) and template else None


def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py, 5.x)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text; it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot store the underscore-prefixed attribute {name!r} on a namespace")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(), namespace=TemplateNamespace)
    return env


def _messages(messages: list[dict]) -> list[dict]:
    """transformers' normalisation: keys whose value is None dropped, reasoning aliased under
    every name templates read."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


class HFChatTemplate:
    """A jinja chat template with the tokenizer's special-token variables; generation_prompt()
    gives the text transformers' apply_chat_template(add_generation_prompt=True, tokenize=False)
    gives. `adds_special_tokens` False: encode the text without the tokenizer's BOS/EOS."""

    adds_special_tokens = False

    def __init__(self, template: str, variables: dict[str, str], source: str = "<template>"):
        import jinja2

        self.source = source
        self.variables = dict(variables)
        try:
            self._compiled = _environment().from_string(template)
        except jinja2.TemplateSyntaxError as err:
            raise UserError(f"{source}: its chat template does not parse (line {err.lineno}: {err.message}); fix chat_template") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The template applied to `messages` (kwargs are further template variables, as
        apply_chat_template's; they win over the special tokens)."""
        import jinja2

        if not messages:
            raise UserError(f"{self.source}: no messages to format; give at least one message")
        try:
            return self._compiled.render(messages=_messages(messages), tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **{**self.variables, **kwargs})
        except jinja2.TemplateError as err:  # raise_exception(...) in the template, an undefined name, the sandbox
            message = " ".join(str(err).split()) or type(err).__name__
            raise UserError(f"{self.source}: its chat template refused these messages: {message}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as err:
            message = " ".join(str(err).split())
            raise UserError(f"{self.source}: its chat template failed on these messages ({type(err).__name__}: {message}); "
                            "fix the template or the messages") from None

    def generation_prompt(self, messages: list[dict]) -> str:
        """The conversation with the assistant turn opened (add_generation_prompt=True)."""
        return self.render(messages, add_generation_prompt=True)


def chat_template_from_files(files: dict[str, bytes], source: str = "<bytes>", model_type: str | None = None) -> HFChatTemplate | None:
    """The tokenizer files' chat template (None when they carry none)."""
    template = template_source(files, source)
    if template is None:
        return None
    return HFChatTemplate(template, template_variables(files, source, model_type), source)


def load_hf_chat_template(directory: str | Path) -> HFChatTemplate | None:
    """The chat template of the Hugging Face tokenizer in `directory` (a model or tokenizer
    directory); None when it has none."""
    from llm.interop.hf_tokenizer import HF_TOKENIZER_FILES, _model_type

    directory = Path(directory)
    files = {name: (directory / name).read_bytes() for name in HF_TOKENIZER_FILES if (directory / name).is_file()}
    return chat_template_from_files(files, str(directory), _model_type(directory))
