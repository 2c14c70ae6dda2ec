"""A trained reward model (an `llm rm` run) as a reward: each (prompt, completion) is tokenized
as the reward model's training pairs were and scored by llm.finetune.reward_score.RewardScorer."""

from __future__ import annotations

import threading
from typing import Iterable

from llm.errors import UserError
from llm.rl.rewards.spec import RewardSpec


def check_tokenizers(reward_fingerprint: str, policy_fingerprint: str, directory: str) -> None:
    """A reward model must read text with the policy's tokenizer: the same fingerprint, or UserError."""
    if reward_fingerprint != policy_fingerprint:
        raise UserError(f"the reward model {directory} uses tokenizer {reward_fingerprint[:16]} but the policy uses "
                        f"{policy_fingerprint[:16]}; train the reward model (llm rm) from the policy's run or tokenizer")


class RewardModelFn:
    """Callable reward: scores = the reward model's score of prompt + completion. A row the reward
    model cannot take (longer than its max_seq_len, no tokens) scores None."""

    def __init__(self, scorer, batch_size: int = 8):
        self.scorer = scorer
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one batch on the device at a time

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        field = self.scorer.config.data.prompt_field
        sequences, where = [], []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            try:
                sequences.append(self.scorer.encode({field: p, "completion": c}, f"completion {i}"))
                where.append(i)
            except UserError:
                continue
        out: list[float | None] = [None] * len(completions)
        if sequences:
            with self._lock:
                scores = self.scorer.score(sequences, self.batch_size)
            for i, s in zip(where, scores):
                out[i] = float(s)
        return out


def reward_model_reward(workdir: str, policy_tokenizer_fingerprint: str, overrides: Iterable[str] = (), *,
                        weight: float = 1.0, name: str = "reward_model", batch_size: int = 8) -> RewardSpec:
    """The reward model of `llm rm` run `workdir` as a RewardSpec; its tokenizer is checked now."""
    from llm.finetune.reward_score import RewardScorer

    scorer = RewardScorer(workdir, tuple(overrides))
    check_tokenizers(scorer.tokenizer.fingerprint, policy_tokenizer_fingerprint, str(scorer.directory))
    return RewardSpec(name, float(weight), RewardModelFn(scorer, batch_size))
