"""The training loop: start-up source, steps, metrics, eval, checkpoints, preemption.

Every training command (pretraining, SFT, LoRA, classification heads) runs this loop with its
own loss function, parameter split and data; the loop never knows which one it runs. Every
checkpoint goes through one save routine that first checks the pending step for NaN/Inf.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_collections
from tqdm import tqdm

from llm.checkpoint.manager import Checkpointer
from llm.errors import UserError
from llm.parallel.distributed import initialize as initialize_distributed
from llm.pytree import abstract_like, merge_trees
from llm.train.early_stop import EarlyStopping, early_stopping, stop_where_stopped
from llm.train.init_sources import init_params_hook
from llm.train.flops import device_peak_flops, flops_per_token
from llm.train.metrics import MetricsLog, plot_loss_curve
from llm.train.setup import TrainSetup, build_partitioned_setup, build_setup
from llm.train.step import TrainState
from llm.train.task_eval import TaskEval
from llm.train.timed_saves import timed_saves
from llm.train.workdir import prepare_workdir, setup_logging

log = logging.getLogger("llm")


class NonFiniteError(UserError):
    """Training produced NaN/Inf and the policy is `stop`."""


@dataclasses.dataclass
class RunHooks:
    """What differs between training commands; the defaults are pretraining."""

    loss_fn: Callable | None = None  # (trainable, frozen, batch, rng) -> (loss_sum, aux)
    make_batches: Callable | None = None  # (config, split, process_index, process_count) -> iterator
    init_params: Callable | None = None  # (setup, params) -> params, for init_from sources
    frozen: Any = dataclasses.field(default_factory=dict)
    tokenizer_fingerprint: str | None = None
    # Fine-tuning (all optional; pretraining leaves them unset):
    partition: Any = None  # llm.train.partition.Partition: what is trained; frozen weights are re-derived, never checkpointed
    # (step, eval result) -> bool, asked after each eval; None: from the config (eval.patience /
    # finetune.patience on eval.early_stop_metric, llm.train.early_stop)
    should_stop: Callable | None = None
    on_finish: Callable | None = None  # (setup, state, frozen, summary) -> dict | None, merged into summary.json
    eval_at_start: bool = False  # evaluate the start weights before the first step (summary: start_eval_loss)
    # (setup, state, frozen) -> None, after the start weights are in place and before any step or
    # eval: work that needs the start policy once (DPO's precomputed reference log-probs).
    on_start: Callable | None = None
    # On-policy runs (GRPO, PPO): (setup, state, frozen) -> (host batch, host metrics), the
    # next batch made from the current weights (rollouts), used instead of next(batches); the
    # iterator still carries the data state. Host metrics (rewards, rollout time...) are logged as
    # means over the steps since the last log line.
    next_batch: Callable | None = None
    # (setup, params, frozen) -> {"eval_...": value}: the run's own evaluation instead of the
    # held-out loss (RL: rewards of held-out prompts); its first value is the one logged.
    evaluate: Callable | None = None
    # Metrics shown in the progress bar besides loss / tok/s / MFU (RL: reward, KL, clip fraction,
    # rollout vs train time), when a log step has them.
    progress_keys: tuple[str, ...] = ()
    # Scores lm-eval tasks on the current weights: due(step, total) -> bool, (graphdef, params) ->
    # {"eval/<task>/<metric>,<filter>": value}, higher_is_better. None: TaskEval when
    # eval.every_steps is set (llm.train.task_eval).
    task_eval: Any = None


class _NonFiniteGuard:
    """Names the step and the metric that went NaN/Inf; stops, or counts a skipped update."""

    def __init__(self, policy: str, ckpt: Checkpointer):
        self.policy = policy
        self.ckpt = ckpt
        self.checked: set[int] = set()

    def check(self, step: int, metrics: dict) -> int:
        if step in self.checked:
            return 0
        self.checked.add(step)
        if bool(metrics["finite"]):
            return 0
        values = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
        bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
        if self.policy == "stop":
            good = self.ckpt.steps()
            raise NonFiniteError(
                f"non-finite {bad} at step {step}; stopped without saving it (last good checkpoint: "
                f"{good[-1] if good else 'none'}); lower optim.lr or set train.nan_policy=skip"
            )
        log.warning("step %d: non-finite %s, update skipped", step, bad)
        return 1


class _Preemption:
    """SIGTERM / SIGINT set a flag; the loop saves at the next step boundary and exits 0.

    With several processes a local flag would make hosts disagree on the step (and deadlock in
    the collective save), so there only JAX's preemption sync point (which Orbax's
    `reached_preemption` consults) decides, and we leave SIGTERM to JAX's own notifier.
    """

    def __init__(self, multi_process: bool):
        self.requested = False
        self._previous = {}
        self._signals = () if multi_process else (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        for sig in self._signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers (tests calling the loop in threads)
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("received %s: saving a checkpoint at the next step boundary", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _default_batches(config, split, process_index, process_count):
    from llm.data.pipeline import make_batches

    return make_batches(config, split, process_index, process_count)


def _store_tokenizer(config: ml_collections.ConfigDict, workdir: Path, write: bool) -> str:
    """Keep the run's tokenizer in <workdir>/tokenizer (it travels with the checkpoints)."""
    from llm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.data.tokenizer)
    target = workdir / "tokenizer"
    if write and not target.exists():
        tokenizer.save(target)
    return tokenizer.fingerprint


def evaluate(setup: TrainSetup, params, frozen, batches: Iterator, steps: int) -> dict:
    """Mean held-out loss and perplexity over up to `steps` batches, and the mean of each other
    sum the loss reports (`accuracy_sum` -> `eval_accuracy`, `rewards/margins_sum` ->
    `eval_rewards/margins`)."""
    sums: dict[str, float] = {}
    for _, batch in zip(range(steps), batches):
        out = jax.device_get(setup.eval_step(params, frozen, setup.shard_batch(batch)))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    tokens = sums.pop("tokens", 0.0)
    if tokens == 0:
        raise UserError("the validation split yielded no tokens; set data.eval_path or raise data.eval_fraction")
    loss_sum = sums.pop("loss_sum")
    nll_sum = sums.pop("nll_sum", None)
    loss = (loss_sum if nll_sum is None else nll_sum) / tokens
    result = {"eval_loss": loss, "eval_tokens": tokens}
    if nll_sum is not None:  # a likelihood loss: its perplexity means something (a DPO loss's would not)
        result["eval_perplexity"] = math.exp(min(loss, 50.0))
    result.update({f"eval_{key[: -len('_sum')]}": value / tokens for key, value in sums.items()})
    return result


def _eval_line(result: dict) -> str:
    """'eval loss 2.1, perplexity 8.1, rewards/accuracies 0.7' (a run without a loss: 'eval
    reward 0.4, success 0.2')."""
    names = sorted((k for k in result if k.startswith(("eval_", "eval/")) and k != "eval_tokens"), key=lambda k: k != "eval_loss")
    return "eval " + ", ".join(f"{k[len('eval_'):]} {result[k]:.4g}" for k in names)


def model_params(setup: TrainSetup, params: Any, frozen: Any) -> Any:
    """The whole tree `setup.graphdef` merges with: the trainable params, plus the frozen part
    (and what else the partition's model needs, e.g. LoRA-dropout leaves) when there is one."""
    if setup.partition is None:
        return params
    if setup.partition.model_params is not None:
        return setup.partition.model_params(params, frozen)
    return merge_trees(params, frozen)


def _stopping(config: ml_collections.ConfigDict, workdir: Path, hooks: RunHooks, task_eval: Any) -> Callable | None:
    """The run's early stopping: the hook's, else from the config; a task metric without task
    evals is an error, a loss without loss evals a warning (older configs turn evals off so)."""
    if hooks.should_stop is not None:
        return hooks.should_stop
    stop = early_stopping(config, workdir / "metrics.jsonl", task_eval.higher_is_better if task_eval is not None else None)
    if stop is None:
        return None
    if stop.metric.startswith("eval/") and task_eval is None:
        raise UserError(
            f"eval.early_stop_metric={config.eval.early_stop_metric!r} is a task metric but no tasks run; "
            "set eval.tasks and eval.every_steps"
        )
    if not stop.metric.startswith("eval/") and not config.train.eval_every:
        log.warning("early stopping on %s is off: train.eval_every=0 (set it to evaluate)", stop.metric)
        return None
    return stop


def _load_partitioned(setup: TrainSetup, hooks: RunHooks) -> tuple[Any, Any, str]:
    """(trainable, frozen, source): the start weights through the run's partition."""
    full, source = hooks.init_params(setup, setup.base_params)
    _, trainable, frozen = setup.partition.apply(setup.base_graphdef, full)
    return trainable, frozen, source


def _start(
    setup: TrainSetup, state: TrainState, ckpt: Checkpointer, hooks: RunHooks, batches, frozen: Any
) -> tuple[TrainState, str, Any]:
    """Resume > init_from checkpoint > init from Hugging Face > from scratch.

    A partitioned run checkpoints only its trainable part, so on resume the frozen part is
    derived again from the start weights."""
    config = setup.config
    step = config.checkpoint.restore_step
    restored = ckpt.restore(abstract_like(state), None if step < 0 else step, hooks.tokenizer_fingerprint)
    if restored is not None:
        new_state, data_state, _, at = restored
        if data_state is not None and hasattr(batches, "set_state"):
            batches.set_state(data_state)
        source = f"resumed from {ckpt.directory / str(at)} (step {at})"
        if setup.partition is not None and hooks.init_params is not None:
            _, frozen, frozen_source = _load_partitioned(setup, hooks)
            source += f"; frozen weights from {frozen_source}"
        return new_state, source, frozen
    if hooks.init_params is not None:
        if setup.partition is not None:
            trainable, frozen, source = _load_partitioned(setup, hooks)
            return state._replace(params=trainable), source, frozen
        params, source = hooks.init_params(setup, state.params)
        return state._replace(params=params), source, frozen
    return state, "from scratch (no checkpoint in the workdir, no init_from)", frozen


def run_training(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    hooks: RunHooks | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Train to `config.train.steps` and return a summary; resumable by calling it again.

    `clock` (seconds) times `checkpoint.every_minutes`; only process 0's is consulted."""
    hooks = hooks or RunHooks()
    initialize_distributed(config)  # before any JAX work: joins a multi-process job, else a no-op
    is_main = jax.process_index() == 0
    stopped = False
    if not overwrite:
        config, stopped = stop_where_stopped(config, Path(workdir))
    workdir = prepare_workdir(workdir, config, overwrite, write=is_main)
    setup_logging(workdir, is_main)
    if hooks.tokenizer_fingerprint is None:
        hooks.tokenizer_fingerprint = _store_tokenizer(config, workdir, is_main)
    if hooks.init_params is None:
        hooks.init_params = init_params_hook(config)
    if hooks.partition is None:
        setup, state = build_setup(config, hooks.loss_fn)
        frozen = hooks.frozen
    else:
        setup, state, frozen = build_partitioned_setup(config, hooks.partition)
    make_batches = hooks.make_batches or _default_batches
    batches = make_batches(config, "train", jax.process_index(), jax.process_count())
    ckpt = Checkpointer(workdir, config)
    state, source, frozen = _start(setup, state, ckpt, hooks, batches, frozen)
    log.info("start: %s", source)
    if hooks.on_start is not None:
        hooks.on_start(setup, state, frozen)
    task_eval = hooks.task_eval if hooks.task_eval is not None else (TaskEval(config, workdir) if config.eval.every_steps else None)
    should_stop = _stopping(config, workdir, hooks, task_eval)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    log.info("model: %s, %.2fM trainable parameters, mesh %s", config.model.family, n_params / 1e6, dict(setup.mesh.shape))
    peak, peak_source = device_peak_flops(measure_cpu=config.train.measure_peak)
    log.info("MFU peak: %s", peak_source)
    fpt = flops_per_token(setup.spec, config.data.seq_len)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    start_step = int(jax.device_get(state.step))
    metrics_log = MetricsLog(workdir, enabled=is_main, resume_step=start_step)
    metadata = {
        "config": json.loads(config.to_json_best_effort()),
        "seed": config.train.seed,
        "tokenizer_fingerprint": hooks.tokenizer_fingerprint,
    }

    saved_steps = set(ckpt.steps())
    saved_now: list[int] = []
    total = config.train.steps
    step = start_step
    summary: dict[str, Any] = {"start": source, "start_step": start_step}
    every = config.checkpoint.every_steps
    timed = timed_saves(config.checkpoint.every_minutes, step, clock)
    window_start, window_steps = None, 0
    prev = None  # (step, metrics) not yet checked for NaN/Inf: checked one step late, so the host never stalls the device
    guard = _NonFiniteGuard(config.train.nan_policy, ckpt)
    skipped = 0
    last: dict[str, float] = {}

    def check_pending() -> None:
        nonlocal prev, skipped
        if prev is not None:
            skipped += guard.check(*prev)
            prev = None

    def save(at: int) -> None:
        """The loop's only way to save: never a state whose step went NaN/Inf (with nan_policy=stop
        the guard raises instead), never the same step twice."""
        check_pending()
        if at in saved_steps:
            return
        data_state = batches.get_state() if hasattr(batches, "get_state") else None
        ckpt.save(at, state, data_state, metadata)
        saved_steps.add(at)
        saved_now.append(at)
        timed.saved(at)

    def run_eval(loss: bool = True, tasks: bool = False) -> dict:
        """The held-out loss (or the run's own evaluation) and/or the lm-eval tasks."""
        result = {}
        if loss and hooks.evaluate is not None:
            result.update(hooks.evaluate(setup, state.params, frozen))
        elif loss:
            eval_batches = make_batches(config, "validation", jax.process_index(), jax.process_count())
            result.update(evaluate(setup, state.params, frozen, eval_batches, config.train.eval_steps))
        if tasks:
            result.update(task_eval(setup.graphdef, model_params(setup, state.params, frozen)))
        return result

    if hooks.eval_at_start and (config.train.eval_every or task_eval is not None) and step == 0 and step < total:
        result = run_eval(bool(config.train.eval_every), task_eval is not None)
        metrics_log.write(0, result)
        summary.update({f"start_{k}": v for k, v in result.items() if k.startswith(("eval_", "eval/")) and k != "eval_tokens"})
        log.info("step 0: %s (start weights)", _eval_line(result))
    host_sums: dict[str, float] = {}
    host_steps = 0
    bar = tqdm(total=total, initial=step, disable=not is_main, desc="train", unit="step", dynamic_ncols=True)
    with _Preemption(jax.process_count() > 1) as preemption, bar:  # the bar closes on errors too (a one-line error starts its own line)
        while step < total:
            if preemption.requested or ckpt.manager.reached_preemption(step):
                save(step)
                ckpt.wait()
                log.info("preempted: saved step %d to %s; re-run the same command to resume", step, ckpt.directory)
                summary.update(preempted=True, step=step)
                break
            if hooks.next_batch is not None:
                host_batch, host_metrics = hooks.next_batch(setup, state, frozen)
                for key, value in host_metrics.items():
                    host_sums[key] = host_sums.get(key, 0.0) + float(value)
                host_steps += 1
            else:
                host_batch = next(batches)
            batch = setup.shard_batch(host_batch)
            state, metrics = setup.train_step(state, batch, frozen)
            step += 1
            check_pending()
            prev = (step, metrics)
            if window_start is None:
                jax.block_until_ready(metrics["loss"])
                window_start, window_steps = time.perf_counter(), 0
            else:
                window_steps += 1
            bar.update(1)
            if step % config.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                skipped += guard.check(step, metrics)
                prev = None
                elapsed = time.perf_counter() - window_start
                if window_steps:
                    values["step_time"] = elapsed / window_steps
                    values["tokens_per_s"] = window_steps * tokens_per_step / elapsed
                    if peak:
                        values["mfu"] = values["tokens_per_s"] * fpt / (peak * jax.device_count())
                window_start, window_steps = time.perf_counter(), 0
                values.pop("finite", None)
                values["skipped_steps"] = skipped
                if host_steps:
                    values.update({k: v / host_steps for k, v in host_sums.items()})
                    host_sums, host_steps = {}, 0
                metrics_log.write(step, values)
                last.update(values)
                postfix = {"loss": f"{values['loss']:.3f}"}
                if "tokens_per_s" in values:
                    postfix["tok/s"] = f"{values['tokens_per_s']:.0f}"
                if "mfu" in values:
                    postfix["mfu"] = f"{100 * values['mfu']:.1f}%"
                for key in hooks.progress_keys:
                    if key in values:
                        postfix[key.split("/")[-1]] = f"{values[key]:.3g}"
                bar.set_postfix(postfix)
            loss_due = bool(config.train.eval_every) and (step % config.train.eval_every == 0 or step == total)
            tasks_due = task_eval is not None and task_eval.due(step, total)
            if loss_due or tasks_due:
                result = run_eval(loss_due, tasks_due)
                metrics_log.write(step, result)
                last.update(result)
                log.info("step %d: %s", step, _eval_line(result))
                window_start = time.perf_counter()  # eval time is not training time
                if should_stop is not None and step < total and should_stop(step, result):
                    save(step)
                    what = should_stop.describe() if isinstance(should_stop, EarlyStopping) else "the eval"
                    log.info("early stop at step %d (%s stopped improving)", step, what)
                    summary.update(early_stopped=True)
                    break
            if timed.due(step) or (every and step % every == 0):
                save(step)
        else:
            save(step)
    ckpt.close()
    metrics_log.close()
    if is_main and (workdir / "metrics.jsonl").exists():
        plot_loss_curve(workdir / "metrics.jsonl", workdir / "loss.png")
    summary.update(step=step, skipped_steps=skipped, saved_steps=saved_now, **{k: v for k, v in last.items() if isinstance(v, float)})
    if stopped:
        summary.update(early_stopped=True)
    if hooks.on_finish is not None and not summary.get("preempted"):
        summary.update(hooks.on_finish(setup, state, frozen, summary) or {})
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("done at step %d: %s", step, {k: round(v, 4) for k, v in last.items() if isinstance(v, float)})
    return summary
