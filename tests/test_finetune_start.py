"""--init-from and --data folded into the config: the model and tokenizer come from the start
weights; wrong inputs are one-line errors."""

import json

import pytest

from helpers import tiny_config
from interop_models import build_hf_model
from llm.checkpoint.params_io import config_to_json
from llm.errors import UserError
from llm.finetune.start import apply_data, apply_init_from, resolve_chat_template, start_kind


def pretrain_dir(tmp_path, kind="workdir", *overrides):
    config = tiny_config("model.d_model=64", "model.vocab_size=300", *overrides)
    d = tmp_path / kind
    (d / ("checkpoints" if kind == "workdir" else "params")).mkdir(parents=True)
    (d / "config.json").write_text(config_to_json(config))
    return d


@pytest.mark.parametrize("kind", ["workdir", "export"])
def test_model_and_tokenizer_come_from_our_checkpoints(tmp_path, kind):
    pre = pretrain_dir(tmp_path, kind)
    config = apply_init_from(tiny_config("peft.lora_rank=8", "model.scan_layers=true", "model.remat=full"), str(pre))
    assert start_kind(pre) == kind
    assert config.model.d_model == 64 and config.model.vocab_size == 300
    assert config.model.remat == "full"  # a layout choice of the step stays the fine-tuning config's
    assert config.model.scan_layers is False  # but scan_layers is how the weights are stored: it comes from PRE
    assert config.checkpoint.init_from == str(pre.absolute()) and config.data.tokenizer == "bytes"
    (pre / "tokenizer").mkdir()
    assert apply_init_from(tiny_config(), str(pre)).data.tokenizer == str((pre / "tokenizer").absolute())


def test_hugging_face_start(tmp_path):
    build_hf_model("llama", tmp_path / "hf")
    config = apply_init_from(tiny_config(), str(tmp_path / "hf"))
    assert start_kind(tmp_path / "hf") == "hf"
    assert config.checkpoint.init_from_hf == str(tmp_path / "hf") and config.model.d_model == 64


def test_bad_starts_and_conflicting_overrides(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        apply_init_from(tiny_config(), str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a training workdir"):
        apply_init_from(tiny_config(), str(tmp_path / "empty"))
    pre = pretrain_dir(tmp_path)
    with pytest.raises(UserError, match=r"model.d_model: checkpoint 64 vs config 32: the model comes from --init-from"):
        apply_init_from(tiny_config("model.d_model=32"), str(pre), ["model.d_model=32"])
    apply_init_from(tiny_config("model.remat=full"), str(pre), ["model.remat=full"])  # layout overrides are fine
    with pytest.raises(UserError, match=r"model.scan_layers: checkpoint False vs config True: the model comes from --init-from"):
        apply_init_from(tiny_config("model.scan_layers=true"), str(pre), ["model.scan_layers=true"])


def test_an_explicit_tokenizer_override_is_kept_for_the_fingerprint_check(tmp_path):
    pre = pretrain_dir(tmp_path)
    (pre / "tokenizer").mkdir()
    config = apply_init_from(tiny_config("data.tokenizer=/elsewhere/tok"), str(pre), ["data.tokenizer=/elsewhere/tok"])
    assert config.data.tokenizer == "/elsewhere/tok"  # not silently replaced by PRE's


def test_data_paths(tmp_path):
    manifest = tmp_path / "corpus" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"files": {}}))
    assert apply_data(tiny_config(), str(manifest)).data.path == str(manifest.absolute())
    assert apply_data(tiny_config(), str(manifest.parent)).data.path == str(manifest.absolute())
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    config = apply_data(tiny_config(), str(rows))
    assert (config.data.source, config.data.path) == ("jsonl", str(rows))
    with pytest.raises(UserError, match="does not exist"):
        apply_data(tiny_config(), str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="is a directory without manifest.json"):
        apply_data(tiny_config(), str(tmp_path))


def test_chat_template_missing_from_config_and_tokenizer(tmp_path):
    assert resolve_chat_template(tiny_config()).data.chat_template == "default"
    with pytest.raises(UserError, match=r"data.chat_template is empty and tokenizer 'bytes' has no chat template; set data.chat_template=default"):
        resolve_chat_template(tiny_config("data.chat_template="))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "chat_template.json").write_text(json.dumps({"chat_template": "{% for m in messages %}{% endfor %}"}))
    with pytest.raises(UserError, match="a Jinja chat template cannot be used"):
        resolve_chat_template(tiny_config("data.chat_template=", f"data.tokenizer={tok}"))
    (tok / "chat_template.json").write_text(json.dumps({r: ["<" + r + ">", "</s>"] for r in ("system", "user", "assistant")}))
    assert resolve_chat_template(tiny_config("data.chat_template=", f"data.tokenizer={tok}")).data.chat_template == str(tok / "chat_template.json")


def test_a_lora_workdir_starts_from_its_merged_weights(tmp_path):
    sft = pretrain_dir(tmp_path, "workdir", "peft.lora_rank=8")  # its checkpoints hold only adapters
    with pytest.raises(UserError, match="checkpoints hold only the trained part; its whole model is written to merged/"):
        apply_init_from(tiny_config(), str(sft))
    merged = pretrain_dir(sft, "merged")  # what the finished run writes: a params-only checkpoint
    config = apply_init_from(tiny_config(), str(sft))
    assert config.checkpoint.init_from == str(merged.absolute()) and config.model.d_model == 64
    full = pretrain_dir(tmp_path / "full", "workdir")  # full fine-tuning checkpoints hold the whole model
    assert apply_init_from(tiny_config(), str(full)).checkpoint.init_from == str(full.absolute())
