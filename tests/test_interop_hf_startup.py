"""Exact start-up from a Hugging Face model directory: for every imported family (with the
tokenizer style it ships), greedy generation from AutoTokenizer's ids equals transformers'
generate token for token, our prompt encoding equals AutoTokenizer's (BOS or not), and
`llm generate --prompt` prints what transformers' text-generation pipeline returns."""

from __future__ import annotations

import pytest

from interop_models import FAMILIES, build_hf_model, hf_greedy, styled_tokenizer, tokenizer_style
from llm.cli.main import main

PROMPTS = ["The quick brown fox", "def main():\n    return {'a': 1}", "Ünïcödé e\u0301 12345  spaces"]
STEPS = 32


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    tok = styled_tokenizer(root / "tok", tokenizer_style(request.param))
    model = build_hf_model(request.param, root / "model", tokenizer_dir=tok)
    return request.param, root / "model", model


@pytest.mark.slow
def test_greedy_from_autotokenizer_ids_equals_transformers(model_dir):
    import transformers

    from llm.cli.generate import _encode
    from llm.generate.load import checkpoint_config, load_for_generation

    family, directory, model = model_dir
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    config = checkpoint_config(directory)
    loaded = load_for_generation(directory, config)
    for prompt in PROMPTS:
        ids = auto(prompt)["input_ids"]
        assert _encode(loaded.tokenizer, config, prompt, "prompt") == ids, (family, prompt)
        (ours,) = loaded.generator.generate([ids], max_new_tokens=STEPS)
        assert ours.tokens == hf_greedy(model, ids, STEPS), (family, prompt)


@pytest.mark.slow
def test_llm_generate_prints_what_the_pipeline_returns(model_dir, capsys):
    import transformers

    family, directory, _ = model_dir
    pipe = transformers.pipeline("text-generation", model=str(directory), tokenizer=str(directory))
    prompt = PROMPTS[0]
    expected = pipe(prompt, do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(directory), "--prompt", prompt, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n", family
