"""A Hugging Face tokenizer's jinja chat template renders and encodes as transformers'
apply_chat_template does (real-world-shaped templates: ChatML/Qwen, Llama 3, Gemma, a tool-use
one with tojson / strftime_now / namespace / loop controls), its raise_exception surfaces as a
one-line UserError, and `llm generate --chat` on a Hugging Face model directory prints what
transformers' text-generation pipeline returns for the same chat."""

from __future__ import annotations

import json

import pytest

from interop_models import build_hf_model, styled_tokenizer
from llm.errors import UserError

CHATML = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'system' and loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
TOOLS = (  # Mistral / Llama 3.1 shaped: tojson, strftime_now, namespace, loop controls, {% generation %}
    "{{- bos_token }}{%- set ns = namespace(system='', n=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' %}{%- set ns.system = message.content %}{%- continue %}{%- endif %}\n"
    "    {%- set ns.n = ns.n + 1 %}\n"
    "    {%- if message.role == 'user' %}\n"
    "        {{- '[INST] ' }}{%- if loop.last and ns.system %}{{- ns.system + '\\n\\n' }}{%- endif %}\n"
    "        {{- 'Today: ' + strftime_now('%Y-%m') + ' ' + {'q': message.content, 'n': ns.n, 'html': '<&>'} | tojson + ' [/INST]' }}\n"
    "    {%- else %}{% generation %}{{- ' ' + message.content + eos_token }}{% endgeneration %}\n"
    "    {%- endif %}\n"
    "    {%- if ns.n > 20 %}{%- break %}{%- endif %}\n"
    "{%- endfor %}\n"
)
LLAMA2 = (  # short enough for the tiny models' 128-token context with text-encoded markers
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}<<SYS>>{{ m.content }}<</SYS>>"
    "{% elif m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]{% else %} {{ m.content | trim }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# template -> the tokenizer style it ships with and the control tokens it adds
TEMPLATES = {
    "chatml": ("qwen2", ["<|im_start|>", "<|im_end|>"]),
    "llama3": ("llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "gemma": ("gemma", ["<start_of_turn>", "<end_of_turn>"]),
    "tools": ("mistral", ["[INST]", "[/INST]"]),
}
SOURCES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "tools": TOOLS}
CHATS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "  4  "}, {"role": "user", "content": "Ünïcödé e\u0301 \u4f60\u597d \U0001f600 and <b>"}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two", "reasoning_content": None},
     {"role": "user", "content": "three\n\nfour"}],
]


def _chats(name: str) -> list[list[dict]]:
    return [c for c in CHATS if name != "gemma" or c[0]["role"] != "system"]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def tok_dir(request, tmp_path_factory):
    """A tokenizer of the template's style with its control tokens added and the template saved
    (chat_template.jinja), as transformers saves one."""
    import transformers

    style, controls = TEMPLATES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    auto = transformers.AutoTokenizer.from_pretrained(styled_tokenizer(root / "base", style))
    auto.add_special_tokens({"additional_special_tokens": controls})
    auto.chat_template = SOURCES[request.param]
    auto.save_pretrained(root / "tok")
    return request.param, root / "tok"


def test_rendering_and_ids_equal_apply_chat_template(tok_dir):
    import transformers

    from llm.cli.generate import _encode
    from llm.interop.hf_chat_template import load_hf_chat_template
    from llm.interop.hf_tokenizer import load_hf_tokenizer

    name, directory = tok_dir
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    template, tok = load_hf_chat_template(directory), load_hf_tokenizer(directory)
    assert template.variables == auto.special_tokens_map
    for chat in _chats(name):
        text = auto.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert template.generation_prompt(chat) == text, (name, chat)
        ids = auto.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert _encode(tok, None, text, "prompt", template) == ids, (name, chat)
    assert ids.count(tok.bos_id) == (0 if name == "chatml" else 1)  # the template's BOS alone, never added again
    closed = _chats(name)[-1][:2]
    assert template.render(closed, add_generation_prompt=False) == auto.apply_chat_template(closed, tokenize=False)


def test_raise_exception_is_a_one_line_user_error():
    from transformers.utils.chat_template_utils import render_jinja_template

    from llm.interop.hf_chat_template import HFChatTemplate

    template = HFChatTemplate(GEMMA, {"bos_token": "<bos>"}, "gemma-tokenizer")
    for chat, message in ((CHATS[1], "System role not supported"),
                          ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "Conversation roles must alternate")):
        with pytest.raises(Exception, match=message):
            render_jinja_template([chat], chat_template=GEMMA, add_generation_prompt=True, bos_token="<bos>")
        with pytest.raises(UserError, match=message) as err:
            template.generation_prompt(chat)
        assert "\n" not in str(err.value) and str(err.value).startswith("gemma-tokenizer: its chat template refused")


def test_template_and_variables_from_tokenizer_config(tmp_path):
    """Older directories: the template inside tokenizer_config.json (named templates: "default"),
    special_tokens_map.json read when the config has no added_tokens_decoder (and winning), and
    model-specific *_token entries passed to the template, as AutoTokenizer reads them."""
    import transformers

    from llm.interop.hf_chat_template import load_hf_chat_template

    directory = styled_tokenizer(tmp_path / "tok", "llama3")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "chat_template.jinja").unlink()
    del config["added_tokens_decoder"]
    config.update(eos_token="<pad>", image_token="<pad>", boi_token={"content": "</s>", "__type": "AddedToken"},
                  chat_template=[{"name": "tool_use", "template": "tools"},
                                 {"name": "default", "template": "{{ eos_token }}{{ image_token }}{{ boi_token }}|{{ messages[0].content }}"}])
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "</s>", "special": True}}))
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    template = load_hf_chat_template(directory)
    chat = [{"role": "user", "content": "x"}]
    assert template.variables == auto.special_tokens_map and template.variables["eos_token"] == "</s>"
    assert template.generation_prompt(chat) == auto.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    config["chat_template"] = config["chat_template"][:1]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="none named \"default\""):
        load_hf_chat_template(directory)
    del config["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_hf_chat_template(directory) is None


def test_broken_templates_are_one_line_user_errors():
    from llm.interop.hf_chat_template import HFChatTemplate

    with pytest.raises(UserError, match=r"does not parse \(line 1"):
        HFChatTemplate("{% for m in messages %}{{ m.content }}", {}, "tok")
    chat = [{"role": "user", "content": "x"}]
    with pytest.raises(UserError, match="refused these messages: .*unsafe|refused these messages: .*underscore"):
        HFChatTemplate("{% set ns = namespace() %}{% set ns._x = 1 %}", {}, "tok").generation_prompt(chat)
    with pytest.raises(UserError, match="failed on these messages \\(TypeError"):
        HFChatTemplate("{{ messages[0].content + 1 }}", {}, "tok").generation_prompt(chat)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with a Llama-3-style tokenizer (BOS from its post-processor) whose chat
    template writes the BOS itself (and the EOS after assistant turns)."""
    root = tmp_path_factory.mktemp("llama_chat")
    tok = styled_tokenizer(root / "tok", "llama3")
    (tok / "chat_template.jinja").write_text(LLAMA2)
    build_hf_model("llama", root / "model", tokenizer_dir=tok)
    return root / "model"


@pytest.mark.slow
def test_llm_generate_chat_prints_what_the_pipeline_returns(model_dir, tmp_path, capsys):
    import transformers

    from llm.cli.main import main

    pipe = transformers.pipeline("text-generation", model=str(model_dir), tokenizer=str(model_dir))
    prompt = "A story about Ünïcödé"
    chat = [{"role": "user", "content": prompt}]
    expected = pipe(chat, do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(model_dir), "--chat", "--prompt", prompt, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    src = tmp_path / "in.jsonl"  # SFT messages: the turns up to the last user turn are the prompt
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": prompt},
                {"role": "assistant", "content": "dropped"}]
    src.write_text(json.dumps({"messages": messages}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--checkpoint", str(model_dir), "--chat", "--input", str(src), "--output", str(out),
                 "--max-new-tokens", "12"]) == 0
    expected = pipe(messages[:4], do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    assert json.loads(out.read_text())["completion"] == expected


def test_which_template_chat_uses(model_dir, tmp_path):
    """A Hugging Face directory: its tokenizer's jinja template, unless --config.data.chat_template
    names one of ours; our own checkpoint: its data.chat_template as today, the tokenizer's jinja
    template only when that is empty."""
    import shutil

    from llm.cli.generate import _chat_template
    from llm.config.base import base_config
    from llm.generate.load import checkpoint_config
    from llm.interop.hf_chat_template import HFChatTemplate

    chat = [{"role": "user", "content": "hi"}]
    config = checkpoint_config(model_dir)
    assert isinstance(_chat_template(str(model_dir), config), HFChatTemplate)
    config = checkpoint_config(model_dir, ["data.chat_template=chatml"])
    ours = _chat_template(str(model_dir), config, ["data.chat_template=chatml"])
    assert not isinstance(ours, HFChatTemplate) and "<|im_start|>" in ours.generation_prompt(chat)

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(model_dir, checkpoint / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    config = base_config()
    assert not isinstance(_chat_template(str(checkpoint), config), HFChatTemplate)  # data.chat_template="default"
    config.data.chat_template = ""
    template = _chat_template(str(checkpoint), config)
    assert isinstance(template, HFChatTemplate) and template.generation_prompt(chat) == "<s>[INST] hi [/INST]"
