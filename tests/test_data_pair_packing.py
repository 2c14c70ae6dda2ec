"""Pair packing: every pair lands once per epoch inside one row, masks mark the answers (DPO) or
the last tokens (reward models), and batch k is a pure function of (seed, k)."""

import numpy as np
import pytest

from llm.data.pair_packing import PairBatches, pair_positions, plan_rows
from llm.data.pairs import TokenPair
from llm.errors import UserError


def random_pairs(n: int, seed: int = 0, vocab: int = 50) -> list[TokenPair]:
    rng = np.random.default_rng(seed)
    ids = lambda k: rng.integers(1, vocab, size=k).astype(np.int32)  # noqa: E731
    return [TokenPair(ids(rng.integers(2, 8)), ids(rng.integers(1, 7)), ids(rng.integers(1, 7)), float(i), i) for i in range(n)]


def test_plan_rows_places_every_pair_once_within_the_row_and_pair_limits():
    sizes = list(np.random.default_rng(1).integers(3, 30, size=200))
    order = np.random.default_rng(2).permutation(200)
    rows = plan_rows(sizes, order, seq_len=40, max_pairs=3)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(sizes[i] for i in row) <= 40 and 1 <= len(row) <= 3 for row in rows)
    assert len(rows) < 200 / 1.5  # packing, not one pair per row
    with pytest.raises(UserError, match="needs 41 positions but data.seq_len=40"):
        plan_rows([41], [0], seq_len=40, max_pairs=3)


def test_policy_rows_shift_each_sequence_and_mask_the_answer_targets():
    pair = TokenPair(np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32), np.array([6], np.int32))
    batch = PairBatches([pair], rows=1, seq_len=12, max_pairs=1, layout="policy", seed=0, train=False, pad_id=9).make_batch([[0]])
    assert pair_positions(pair, "policy") == 7
    np.testing.assert_array_equal(batch["inputs"][0], [1, 2, 3, 4, 1, 2, 3, 9, 9, 9, 9, 9])
    np.testing.assert_array_equal(batch["targets"][0, :7], [2, 3, 4, 5, 2, 3, 6])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["positions"][0, :7], [0, 1, 2, 3, 0, 1, 2])
    np.testing.assert_array_equal(batch["loss_mask"][0, :7], [0, 0, 1, 1, 0, 0, 1])  # targets 4, 5 and 6
    assert batch["loss_mask"][0, 7:].sum() == 0


def test_reward_rows_keep_whole_sequences_and_mark_their_last_token():
    pair = TokenPair(np.array([1, 2], np.int32), np.array([4, 5], np.int32), np.array([6], np.int32), margin=0.5)
    batches = PairBatches([pair], rows=1, seq_len=8, max_pairs=1, layout="reward", seed=0, train=False, with_margin=True)
    batch = batches.make_batch([[0]])
    np.testing.assert_array_equal(batch["inputs"][0, :7], [1, 2, 4, 5, 1, 2, 6])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(batch["margin"][0], [0, 0, 0, 0.5, 0, 0, 0, 0])


def test_values_ride_at_each_segments_first_position():
    pairs = random_pairs(5)
    values = {"ref_logps": np.arange(10, dtype=np.float32).reshape(5, 2) + 1}
    batches = PairBatches(pairs, rows=4, seq_len=40, max_pairs=3, layout="policy", seed=0, train=False, values=values)
    batch = next(batches)
    seg, ref = batch["segment_ids"], batch["ref_logps"]
    found = {}
    for r, members in enumerate(batches.global_rows(0)):
        for slot, i in enumerate(members):
            for side in range(2):
                first = np.flatnonzero(seg[r] == 2 * slot + side + 1)[0]
                found[(i, side)] = ref[r, first]
    assert found == {(i, s): values["ref_logps"][i, s] for i in range(5) for s in range(2)}
    assert np.count_nonzero(ref) == 10


def test_training_batches_are_a_pure_function_of_seed_and_step_across_epochs():
    pairs = random_pairs(23)
    make = lambda: PairBatches(pairs, rows=4, seq_len=30, max_pairs=2, layout="policy", seed=3, train=True)  # noqa: E731
    a = make()
    first = [next(a) for _ in range(12)]  # several epochs
    b = make()
    b.set_state({**a.get_state(), "batches": 7})
    for k in range(7, 12):
        got = next(b)
        for key in got:
            np.testing.assert_array_equal(got[key], first[k][key])
    seen = [i for k in range(12) for row in a.global_rows(k) for i in row]
    assert sorted(seen[:23]) == list(range(23))  # the first epoch holds every pair once
    with pytest.raises(UserError, match="other preference data"):
        make().set_state({**a.get_state(), "pairs": 22})


def test_processes_split_the_global_batch_rows():
    pairs = random_pairs(30)
    kwargs = dict(rows=4, seq_len=30, max_pairs=2, layout="policy", seed=0, train=True)
    whole = next(PairBatches(pairs, **kwargs))
    parts = [next(PairBatches(pairs, process_index=p, process_count=2, **kwargs)) for p in range(2)]
    np.testing.assert_array_equal(parts[0]["inputs"], whole["inputs"][0::2])
    np.testing.assert_array_equal(parts[1]["inputs"], whole["inputs"][1::2])


def test_validation_is_one_in_order_pass_padded_with_empty_rows():
    pairs = random_pairs(9)
    batches = PairBatches(pairs, rows=4, seq_len=24, max_pairs=1, layout="policy", seed=0, train=False)
    out = list(batches)
    assert len(out) == batches.eval_batches == 3
    assert [i for k in range(3) for row in batches.global_rows(k) for i in row] == list(range(9))
    assert (out[-1]["segment_ids"][1:] == 0).all()

