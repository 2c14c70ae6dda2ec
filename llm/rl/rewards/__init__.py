"""Rewards for online RL: user functions, built-in task rewards and reward models, scored
concurrently with failures counted (llm.rl.rewards.runner)."""

from llm.rl.rewards.model import reward_model_reward
from llm.rl.rewards.runner import RewardRunner, RewardScores
from llm.rl.rewards.spec import RewardFn, RewardSpec, parse_rewards

__all__ = ["RewardFn", "RewardSpec", "parse_rewards", "RewardScores", "RewardRunner", "reward_model_reward"]
