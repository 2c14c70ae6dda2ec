"""Training checkpoints in `<workdir>/checkpoints/`, through Orbax's CheckpointManager.

One checkpoint holds the whole train state (params, optimizer state, step), the data iterator
state and a metadata record (the config, the seed the step RNG derives from, the tokenizer
fingerprint). Orbax writes each step into a temporary directory and renames it when complete,
so a half-written checkpoint is never picked up; a finished one that is damaged later is
detected at restore, moved aside to `checkpoints/damaged-<step>-<time>/` (kept for inspection,
invisible to Orbax, so it neither blocks saving that step again nor counts towards `keep`) and
the previous one is used. A run restarted from an explicit earlier step
(`checkpoint.restore_step`) moves the newer steps aside to `superseded-<step>-<time>/` the same
way, so the steps it re-does are saved again instead of keeping the old run's.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from llm.checkpoint.disk import check_free_space, disk_errors
from llm.checkpoint.abandoned_reads import quiet_abandoned_reads
from llm.errors import UserError

log = logging.getLogger("llm")


class CheckpointMismatch(UserError):
    """The checkpoint belongs to a different model or tokenizer."""


# Model keys that choose how the step is computed, not what the weights are: a checkpoint
# restores under any of their values.
LAYOUT_KEYS = ("scan_layers", "remat", "attention_impl", "attention_block", "loss_chunk")


def model_mismatch(saved: dict, current: dict) -> list[str]:
    """Differences in the model section that make saved weights unusable here."""
    ignore = set(LAYOUT_KEYS)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        if saved.get(key) != current.get(key):
            diffs.append(f"model.{key}: checkpoint {saved.get(key)!r} vs config {current.get(key)!r}")
    return diffs


class Checkpointer:
    """Async periodic saves (keep the last K, plus permanent ones every M steps) and restore."""

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict, read_only: bool = False):
        self.directory = Path(workdir).absolute() / "checkpoints"
        ck = config.checkpoint
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(ck.keep), 1),
            keep_period=int(ck.permanent_every_steps) or None,
            enable_async_checkpointing=bool(ck.async_save),
            create=not read_only,
            read_only=read_only,
        )
        self.config = config
        self.read_only = read_only
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None, metadata: dict) -> None:
        args = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(metadata),
        }
        if data_state is not None:
            if jax.process_count() > 1:  # Orbax writes JSON from process 0 only: save every process's
                from llm.parallel.multihost import allgather_json

                data_state = {"per_process": allgather_json(data_state)}
            args["data"] = ocp.args.JsonSave(data_state)
        with disk_errors(self.directory):  # a full or read-only disk: one line, not pages of Orbax tracebacks
            check_free_space(self.directory, state)
            self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def wait(self) -> None:
        with disk_errors(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with disk_errors(self.directory):
            self.manager.wait_until_finished()
        self.manager.close()

    def read_metadata(self, step: int) -> dict:
        path = self.directory / str(step) / "meta" / "metadata"
        if not path.exists():
            raise UserError(f"checkpoint {path.parent.parent} has no metadata; it is incomplete or not ours")
        return json.loads(path.read_text())

    def _restore_one(self, step: int, abstract_state: Any) -> tuple[Any, dict | None, dict]:
        meta = self.read_metadata(step)
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if (self.directory / str(step) / "data").exists():
            items["data"] = ocp.args.JsonRestore()
        with quiet_abandoned_reads():
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data = restored["data"] if "data" in items else None
        if isinstance(data, dict) and "per_process" in data:
            if len(data["per_process"]) != jax.process_count():
                raise CheckpointMismatch(
                    f"checkpoint {self.directory / str(step)} holds the data position of {len(data['per_process'])} "
                    f"processes, this run has {jax.process_count()}; resume with the same number of processes"
                )
            data = data["per_process"][jax.process_index()]
        return restored["state"], data, meta

    def check_compatible(self, step: int, tokenizer_fingerprint: str | None) -> None:
        meta = self.read_metadata(step)
        saved_model = meta.get("config", {}).get("model", {})
        current = json.loads(self.config.model.to_json_best_effort())
        diffs = model_mismatch(saved_model, current)
        if diffs:
            raise CheckpointMismatch(
                f"checkpoint {self.directory / str(step)} is for a different model ({'; '.join(diffs[:3])}); "
                "use a fresh --workdir or the matching config"
            )
        saved_fp = meta.get("tokenizer_fingerprint")
        if saved_fp and tokenizer_fingerprint and saved_fp != tokenizer_fingerprint:
            raise CheckpointMismatch(
                f"checkpoint {self.directory / str(step)} was trained with tokenizer {saved_fp[:12]}, "
                f"but this run uses {tokenizer_fingerprint[:12]}; use the checkpoint's tokenizer"
            )

    def restore(
        self, abstract_state: Any, step: int | None = None, tokenizer_fingerprint: str | None = None
    ) -> tuple[Any, dict | None, dict, int] | None:
        """Restore `step` (an error if it is invalid), or the latest valid checkpoint.

        Returns (state, data_state, metadata, step), or None when there is no checkpoint.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise UserError(
                    f"no checkpoint for step {step} in {self.directory} (available: {steps or 'none'}); pick one of those"
                )
            self.check_compatible(step, tokenizer_fingerprint)
            try:
                restored = self._restore_one(step, abstract_state)
            except Exception as err:  # noqa: BLE001 - Orbax raises many types for damaged files
                path = self.directory / str(step)
                others = [s for s in steps if s != step]
                raise UserError(
                    f"checkpoint {path} is damaged ({damage_cause(err)}); pick another step with "
                    f"--config.checkpoint.restore_step (other steps: {others or 'none'}; -1 = the latest valid one), "
                    f"or remove {path}"
                ) from err
            for newer in [s for s in steps if s > step]:  # the run re-does them: its saves must not be skipped
                self._move_aside(newer, "superseded")
            return (*restored, step)
        damaged = []
        for candidate in reversed(steps):
            self.check_compatible(candidate, tokenizer_fingerprint)
            try:
                restored = self._restore_one(candidate, abstract_state)
            except (CheckpointMismatch, KeyboardInterrupt):
                raise
            except Exception as err:  # noqa: BLE001 - fall back to an older checkpoint
                damaged.append(candidate)
                log.warning("checkpoint %s is damaged (%s); falling back to the previous one",
                            self.directory / str(candidate), damage_cause(err))
                continue
            for bad in damaged:  # only once a good one is found: a re-run must not start from scratch
                self._move_aside(bad)
            return (*restored, candidate)
        if steps:
            raise UserError(f"every checkpoint in {self.directory} is damaged ({steps}); remove them or use a new --workdir")
        return None

    def _move_aside(self, step: int, why: str = "damaged") -> Path | None:
        """Rename a step to `<why>-<step>-<time>` (damaged, or superseded by a run restarted from
        an earlier step) so the step can be saved again.

        Never deletes it. Process 0 renames (the directory is shared); every process then
        re-reads the step list."""
        if self.read_only:
            return None
        stamp = time.strftime('%Y%m%d-%H%M%S')
        aside = self.directory / f"{why}-{step}-{stamp}"
        for n in range(1, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{why}-{step}-{stamp}-{n}")
        if jax.process_index() == 0:
            shutil.move(str(self.directory / str(step)), aside)
            log.warning("moved %s checkpoint %s to %s; step %d will be saved again", why, self.directory / str(step), aside, step)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"llm-checkpoint-moved-aside-{why}-{step}")
        self.manager.reload()
        return aside


def damage_cause(err: BaseException) -> str:
    """A few words for why a checkpoint cannot be read (Orbax/TensorStore messages run to pages)."""
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    text = " ".join(str(e) for e in chain)
    if "OUT_OF_RANGE" in text or "byte range" in text:
        return "a file is truncated"
    if any(isinstance(e, FileNotFoundError) for e in chain) or "NOT_FOUND" in text:
        return "a file is missing"
    if "DATA_LOSS" in text or "checksum" in text.lower() or "corrupt" in text.lower():
        return "a file is corrupted"
    if any(isinstance(e, json.JSONDecodeError) for e in chain):
        return "a metadata file is not valid JSON"
    deepest = chain[-1]
    first = (str(deepest).splitlines() or [""])[0][:120]
    return f"{type(deepest).__name__}: {first}" if first else type(deepest).__name__
