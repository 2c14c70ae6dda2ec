"""The host side of a rollout: the resumable prompt order, prompts rendered as SFT renders
them, completions cut at EOS / stop strings, and rows whose loss mask covers exactly the
completion."""

import numpy as np
import pytest

from helpers import tiny_config
from llm.data.tokenizer import ByteTokenizer
from llm.errors import UserError
from llm.rl.completions import cut_completion
from llm.rl.prompts import PromptStream, encode_prompt, prompt_encoder, stop_strings
from llm.rl.rollout_batch import rollout_rows, split_minibatches, token_values


def test_prompt_stream_is_a_seeded_permutation_per_epoch_and_resumes_exactly():
    a = PromptStream(10, seed=3)
    first = a.take(4) + a.take(4) + a.take(4)  # crosses into the second epoch
    assert sorted(first[:10]) == list(range(10)) and a.epoch == 1
    b = PromptStream(10, seed=3)
    b.take(6)
    state = b.get_state()
    c = PromptStream(10, seed=3)
    c.set_state(state)
    assert c.take(6) == first[6:12]
    assert PromptStream(10, seed=4).take(10) != first[:10]


def test_prompts_render_as_the_sft_user_turn_and_cut_from_the_left():
    config = tiny_config("rl.max_prompt_tokens=12")
    tok = ByteTokenizer()
    ids = encode_prompt(prompt_encoder(tok, config), tiny_config(), "12+34=")
    assert tok.decode(ids) == "<|user|>\n12+34=<|end|>\n<|assistant|>\n"
    cut = encode_prompt(prompt_encoder(tok, config), config, "12+34=")
    assert len(cut) == 12 and tok.decode(cut) == tok.decode(ids)[-12:]
    assert stop_strings(config) == ("<|end|>",)
    plain = tiny_config("data.strings_as_chat=false", "rl.stop_strings=('\\n',)")
    assert tok.decode(encode_prompt(prompt_encoder(tok, plain), plain, "12+34=")) == "12+34="
    assert stop_strings(plain) == ("\n",)


def test_completions_are_cut_after_the_stop_and_the_text_before_it():
    tok = ByteTokenizer()
    ids = tok.encode("46<|end|>\nxyz")
    cut = cut_completion(tok, ids, ("<|end|>",), None)
    assert tok.decode(cut.tokens) == "46<|end|>" and cut.text == "46" and cut.ended
    never = cut_completion(tok, tok.encode("4646"), ("<|end|>",), None)
    assert never.text == "4646" and not never.ended and len(never.tokens) == 4
    eos = cut_completion(tok, [52, 54, 255, 9, 9], ("<|end|>",), eos_id=255)
    assert eos.tokens == [52, 54, 255] and eos.text == "46" and eos.ended


def test_rollout_rows_put_the_loss_on_the_completion_targets_only():
    prompts = [np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32)]
    completions = [[7, 8], [9, 10, 11]]
    batch = rollout_rows(prompts, completions, 8)
    np.testing.assert_array_equal(batch["inputs"][0, :4], [1, 2, 3, 7])
    np.testing.assert_array_equal(batch["targets"][0, :4], [2, 3, 7, 8])
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["segment_ids"][1], [1, 1, 1, 1, 0, 0, 0, 0])
    values = token_values(2, 8, [[0.5, 0.25], [1, 2, 3]], [2, 1])
    assert np.all((values != 0) == (batch["loss_mask"] > 0))  # per-token values align with the mask
    halves = split_minibatches(batch, 2)
    assert [h["inputs"].shape for h in halves] == [(1, 8), (1, 8)]
    with pytest.raises(UserError, match="does not fit"):
        rollout_rows(prompts, [[1] * 9, [1]], 8)


def test_rollout_batches_train_at_their_longest_row_rounded_up():
    from llm.rl.rollout_batch import trimmed_length

    seg = np.zeros((2, 256), np.int32)
    seg[0, :20] = 1
    assert trimmed_length(seg, 256) == 32
    assert trimmed_length(seg[:, :24], 24) == 24  # never past seq_len
    seg[1, :150] = 1
    assert trimmed_length(seg, 256) == 160 and trimmed_length(seg, 256, loss_chunk=64) == 192
    assert trimmed_length(np.zeros((2, 64), np.int32), 64) == 16
    assert trimmed_length(seg[:1], 256, loss_chunk=24) == 24  # a whole chunk, not 32 (24 would not divide it)


def test_completions_that_never_stop_lose_the_missing_eos_penalty():
    from llm.rl.completions import penalize_unfinished

    out = penalize_unfinished(np.array([1.0, np.nan, 0.5, 0.25]), np.array([True, False, False, True]), 1.0)
    np.testing.assert_array_equal(out, np.array([1.0, np.nan, -0.5, 0.25], np.float32))
    np.testing.assert_array_equal(penalize_unfinished(np.array([0.5]), np.array([False]), 0.0), [0.5])
