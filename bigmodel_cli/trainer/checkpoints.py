"""Checkpoints written atomically: a kill mid-save never leaves one that looks complete.

The stock `Trainer._save_checkpoint` writes `checkpoint-N` in place; a kill during it left a folder
that auto-resume took and crashed on. Here the same files (model, optimizer, scheduler, scaler, RNG
states, trainer state) go to `tmp-checkpoint-N`, which is renamed once every file is on disk. A full
disk or a write error stops the run with one line; the complete checkpoints stay.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from bigmodel_cli.errors import BigmodelError, write_failure
from bigmodel_cli.rundir import STAGING_PREFIX, checkpoints


def state_file(checkpoint: Path, process_index: int) -> Path:
    """bigmodel's own share of a checkpoint's state for one process (sampler, budget, stream position)."""
    return Path(checkpoint) / f"bigmodel_state_{process_index}.json"


def sync_folder(folder: Path) -> None:
    """fsync a folder's files and the folder itself, so a rename that follows is durable."""
    for path in [*(p for p in folder.iterdir() if p.is_file()), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpoints:
    """Trainer mixin: atomic checkpoints, with a per-process file of the subclass's own state
    (`extra_state()` saved, `load_extra_state()` given it back on resume). The time spent saving
    is added to `aside_seconds`, which training speed leaves out."""

    aside_seconds = 0.0

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def _save_checkpoint(self, model, trial):
        start = time.perf_counter()
        try:
            self._save_checkpoint_atomically(trial)
        finally:
            self.aside_seconds += time.perf_counter() - start

    def _save_checkpoint_atomically(self, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = run_dir / f"{STAGING_PREFIX}{name}", run_dir / name
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        try:
            self._write_checkpoint(staging, final)
            self.accelerator.wait_for_everyone()  # every process's RNG file is in before the rename
            if self.args.should_save:
                sync_folder(staging)
                if final.exists():  # a leftover of an earlier attempt at this step: replaced whole
                    shutil.rmtree(final)
                os.replace(staging, final)
                sync_folder(run_dir)
                rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                                   use_mtime=False)
        except Exception as e:
            reason = write_failure(e)
            if reason is None and shutil.disk_usage(run_dir).free < 1 << 20:
                reason = f"no space left on device ({type(e).__name__} while saving)"  # torch.save says "unexpected pos"
            if reason is None:  # not the disk's fault: a bug, shown as such
                raise
            shutil.rmtree(staging, ignore_errors=True)
            kept = checkpoints(run_dir)
            raise BigmodelError(
                f"cannot write {name} in {run_dir}: {reason}; free space or fix permissions, then run the same "
                "command again to resume" + (f" from {kept[-1].name}" if kept else ""),
            ) from None
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(self, staging: Path, final: Path) -> None:
        from transformers.trainer_callback import ExportableState
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        self.save_model(str(staging), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        best = self.state.best_global_step
        if best and self.args.save_strategy != "no":  # as Trainer does, under the final name
            best_dir = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{best}"
            if best == self.state.global_step or best_dir.is_dir():
                self.state.best_model_checkpoint = str(best_dir)
        if self.args.should_save:
            for callback in [*self.callback_handler.callbacks, self.control]:
                if isinstance(callback, ExportableState):
                    key = callback.__class__.__name__
                    if isinstance(self.state.stateful_callbacks.get(key), list):
                        self.state.stateful_callbacks[key].append(callback.state())
                    else:
                        self.state.stateful_callbacks[key] = callback.state()
            self.state.save_to_json(str(staging / "trainer_state.json"))
        # Per process (its own share of the state); the trainer state above is the main process's.
        state_file(staging, self.args.process_index).write_text(json.dumps(self.extra_state()))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = state_file(resume_from_checkpoint, self.args.process_index)
        if saved.is_file():
            self.load_extra_state(json.loads(saved.read_text()))
