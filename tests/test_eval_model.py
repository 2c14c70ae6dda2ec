"""llm.eval.model against lm-eval's own HF backend (HFLM) and transformers directly, on a tiny
random Llama and GPT-2 saved locally: per request log-likelihoods (<= 1e-4, f32), is_greedy,
rolling windows and greedy generate_until text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from interop_models import build_hf_model, train_tokenizer
from llm.errors import UserError
from llm.eval.model import load_eval_model
from llm.eval.windows import piece, rolling_windows

F32 = ("precision.compute=float32",)
MAX_LENGTH = 32
TEXT = Path(json.__file__).read_text()[:2500]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """family -> (directory, transformers model); plus "llama_bos": a tokenizer whose
    post-processor adds BOS, as real Llama tokenizers do."""
    root = tmp_path_factory.mktemp("eval_models")
    tok = train_tokenizer(root / "tok")
    out = {fam: (root / fam, build_hf_model(fam, root / fam, seed=i, tokenizer_dir=tok)) for i, fam in enumerate(("llama", "gpt2"))}
    bos = root / "llama_bos"
    model = build_hf_model("llama", bos, seed=0, tokenizer_dir=tok)
    spec = json.loads((bos / "tokenizer.json").read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
    }
    (bos / "tokenizer.json").write_text(json.dumps(spec))
    out["llama_bos"] = (bos, model)
    return out


@pytest.fixture(scope="module")
def pair(models, request):
    """(our EvalModel, lm-eval's HFLM) for one family, max_length 32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    directory = models[request.param][0]
    ours = load_eval_model(directory, F32, batch_size=4, max_length=MAX_LENGTH)
    theirs = HFLM(pretrained=str(directory), dtype="float32", device="cpu", batch_size=4, max_length=MAX_LENGTH)
    return ours, theirs


def _instances(kind: str, args: list) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _greedy_pairs(model, contexts: list[str]) -> list[tuple[str, str]]:
    """(context, its 1-2 greedy tokens as text) where the text re-tokenizes into those tokens."""
    generator, params = model._generate_with()
    pairs = []
    for context in contexts:
        for n in (1, 2):
            tokens = generator.generate([model.encoding.encode(context)], max_new_tokens=n, params=params)[0].tokens
            text = model.tokenizer.decode(tokens)
            if model.encoding.loglikelihood_pair(context, text)[1] == tokens:
                pairs.append((context, text))
    return pairs


@pytest.mark.parametrize("pair", ["llama", "gpt2", "llama_bos"], indirect=True)
def test_loglikelihood_matches_hflm(pair):
    ours, hflm = pair
    greedy = _greedy_pairs(ours, ["def load(", "import", "x = ", "class JSON", "return", "(", "self.", "if not ", "a, b"])
    assert greedy or ours.spec.is_gpt2  # this random GPT-2's greedy tokens are byte fragments: test_packed_scores covers it
    requests = [
        ("def dumps(obj, ", "indent=None)"),  # a context ending in a space: it moves to the continuation
        # empty context: the prefix token conditions. (Not "import json": with BOS its tokens
        # would equal ("import", " json")'s, and lm-eval's one-token-continuation cache then
        # gathers the shorter continuation's log-probs at the wrong positions.)
        ("", "def f(x): return x"),
        ("import", " json"), ("import", " sys"), ("import", " os.path"),  # shared context, choices
        (TEXT[:300], TEXT[300:340]),  # longer than max_length: truncated on the left
        *greedy,  # greedy continuations: is_greedy
        ("<s>x = ", "1"),  # starts with the BOS text: no BOS added
    ]
    got = ours.loglikelihood(requests)
    want = hflm.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    for request, (lp, hit), (ref, ref_hit) in zip(requests, got, want):
        assert abs(lp - ref) <= 1e-4, request
        assert hit == ref_hit, request
    assert any(hit for _, hit in want) == bool(greedy)


@pytest.mark.parametrize("pair", ["llama", "gpt2"], indirect=True)
def test_rolling_matches_hflm(pair):
    ours, hflm = pair
    texts = [TEXT[:1200], "a short text", TEXT[600:700]]
    got = ours.loglikelihood_rolling(texts)
    want = hflm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    for text, lp, ref in zip(texts, got, want):
        windows = len(rolling_windows(ours.encoding.encode(text), ours.prefix_token_id, MAX_LENGTH))
        assert abs(lp - ref) <= 1e-4 * windows  # each window within 1e-4
    assert len(rolling_windows(ours.encoding.encode(texts[0]), ours.prefix_token_id, MAX_LENGTH)) > 5


@pytest.mark.parametrize("pair", ["llama", "gpt2"], indirect=True)
def test_generate_until_matches_hflm(pair):
    ours, hflm = pair
    free = ours.generate_until([("class JSONDecoder", {"max_gen_toks": 10, "until": []})])[0]
    stop = free[3:5]  # a stop string inside the greedy text: the text is cut before it
    requests = [
        ("class JSONDecoder", {"max_gen_toks": 10, "until": [stop]}),
        ("def dumps(", {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}),
        (TEXT[:500], {"until": ["zzz"], "max_gen_toks": 8}),  # left-truncated to max_length - 8
        ("import", {"max_gen_toks": 5}),
    ]
    got = ours.generate_until(requests)
    want = hflm.generate_until(_instances("generate_until", requests), disable_tqdm=True)
    assert got == want
    assert got[0] == free[: free.index(stop)]


def test_windows_match_lm_eval():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in (1, 5, 31, 32, 33, 64, 65, 100):
        tokens = list(range(10, 10 + n))
        want = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, 32, 1)]
        assert rolling_windows(tokens, 7, 32) == want


@pytest.mark.parametrize("impl", ["blocked", "xla"])
def test_packed_scores_match_transformers(models, impl):
    """Token-level pieces (shared prefixes with branches of several lengths, packed several to a
    row) against one transformers forward per piece, with either attention implementation."""
    import torch

    directory, hf = models["llama"]
    model = load_eval_model(directory, (*F32, f"model.attention_impl={impl}"), batch_size=2, max_length=MAX_LENGTH)
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(5):
        context = rng.integers(3, 300, int(rng.integers(1, 20))).tolist()
        for _ in range(3):
            pieces.append(piece(context, rng.integers(3, 300, int(rng.integers(1, 6))).tolist(), MAX_LENGTH))
    pieces.append(piece(rng.integers(3, 300, 40).tolist(), [5, 6, 7], MAX_LENGTH))
    context = [5, 9, 17]
    for _ in range(3):  # greedy continuations: is_greedy
        with torch.no_grad():
            context.append(int(hf(torch.tensor([context])).logits[0, -1].argmax()))
        pieces.append(piece(context[:3], context[3:], MAX_LENGTH))
    got = model.score_pieces(pieces)
    for p, (lp, hit) in zip(pieces, got):
        inputs = list(p.prefix + p.branch)
        with torch.no_grad():
            logits = torch.log_softmax(hf(torch.tensor([inputs])).logits[0].float(), -1)
        scored = logits[len(p.prefix) - 1 :]
        ref = float(sum(scored[i, t] for i, t in enumerate(p.targets)))
        assert abs(lp - ref) <= 1e-4
        assert hit == bool((scored.argmax(-1) == torch.tensor(p.targets)).all())
    assert [hit for _, hit in got[-3:]] == [True] * 3


def test_with_params_reuses_compiled_functions(models):
    import jax

    model = load_eval_model(models["gpt2"][0], F32, batch_size=2, max_length=MAX_LENGTH)
    requests = [("import", " json"), ("def", " f(x)")]
    base = model.loglikelihood(requests)
    scaled = model.with_params(jax.tree_util.tree_map(lambda x: x * 0.5, model.params))
    assert scaled._compiled is model._compiled
    other = scaled.loglikelihood(requests)
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(base, other))
    assert model.loglikelihood(requests) == base
    assert scaled.generate_until([("import", {"max_gen_toks": 3})]) == [scaled.generate_until([("import", {"max_gen_toks": 3})])[0]]


def test_bad_inputs(models, tmp_path):
    model = load_eval_model(models["gpt2"][0], F32, batch_size=2, max_length=MAX_LENGTH)
    with pytest.raises(UserError, match="continuation"):
        model.loglikelihood([("import", "")])
    with pytest.raises(UserError, match="num_beams"):
        model.generate_until([("import", {"num_beams": 4})])
    with pytest.raises(UserError, match="max_gen_toks"):
        model.generate_until([("import", {"max_gen_toks": MAX_LENGTH})])
    with pytest.raises(UserError, match="max_length"):
        load_eval_model(models["gpt2"][0], F32, max_length=4096)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((models["gpt2"][0] / f).read_bytes())
    with pytest.raises(UserError, match="tokenizer"):
        load_eval_model(bare, F32)


def test_mesh_overrides_shard_the_model_with_the_same_scores(models):
    """`--config.mesh.*` overrides (as in training) shard the weights over the 8 simulated devices
    (tensor-parallel heads, fsdp) and give the scores of the default mesh."""
    directory = models["llama"][0]
    requests = [("def parse(text):\n    ", "return json.loads(text)"), ("import", " os"), ("", "x = 1")]
    plain = load_eval_model(directory, F32, batch_size=4)
    sharded = load_eval_model(directory, (*F32, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), batch_size=4)
    kernels = [x for x in jax.tree_util.tree_leaves(sharded.params) if x.ndim >= 2]
    assert dict(kernels[0].sharding.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in kernels)  # really split
    for (a, ga), (b, gb) in zip(plain.loglikelihood(requests), sharded.loglikelihood(requests)):
        assert abs(a - b) <= 1e-4 and ga == gb
    assert plain.generate_until([("def f(", {"until": ["\n"], "max_gen_toks": 8})]) == \
        sharded.generate_until([("def f(", {"until": ["\n"], "max_gen_toks": 8})])


def test_rolling_without_a_bos_or_eos_token_is_refused_with_the_fix():
    """The byte tokenizer has no BOS / EOS: lm-eval's first rolling window has nothing to start from."""
    from helpers import tiny_config
    from llm.data.tokenizer import load_tokenizer
    from llm.eval.model import EvalModel
    from llm.model.build import init_params
    from llm.model.spec import model_spec
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    config = tiny_config("precision.compute=float32")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config), rules, seed=0)
    model = EvalModel(graphdef, params, config, load_tokenizer("bytes"), batch_size=2)
    assert len(model.loglikelihood([("ab", "c")])) == 1  # a context to condition on: fine
    with pytest.raises(UserError, match=r"needs a BOS or EOS token .* \(bytes\) has neither: leave those tasks out"):
        model.loglikelihood_rolling(["some text"])
