"""Preference tuning and RL as loss functions over the training state."""
