"""Evaluation: lm-evaluation-harness task files scored in JAX (tasks, model, runner), results in
lm-eval's layout, reports and robustness."""
