"""Checkpoints and weight export for the trainer.

``<model_dir>/checkpoints/`` (``tf.train.CheckpointManager``): model, optimizer (with its step
count), and the training state: global step, completed epochs, best validation loss, epochs without
improvement, finished flag. The data position is not stored: the input is deterministic per
(seed, epoch), so a resumed run skips the batches of the epoch it has already trained on.

Under multi-worker training every worker must take part in a save; only the chief writes to
``checkpoints/``, the others write to a temporary directory they delete at once (TensorFlow's
recommended pattern). All workers restore from the chief's directory (``--model-dir`` must be shared:
``gs://`` or a shared file system).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import List, Optional

import tensorflow as tf

log = logging.getLogger("captionbeam.train")
CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainingState:
    step: tf.Variable
    epoch: tf.Variable            # completed (validated) epochs
    best_val: tf.Variable
    bad_epochs: tf.Variable
    finished: tf.Variable

    @classmethod
    def create(cls) -> "TrainingState":
        return cls(step=tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
                   epoch=tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
                   best_val=tf.Variable(float("inf"), dtype=tf.float64, trainable=False, name="best_val"),
                   bad_epochs=tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs"),
                   finished=tf.Variable(False, trainable=False, name="finished"))


class CheckpointError(ValueError):
    """Checkpoints exist but none restores: never start from scratch over them."""


_CKPT_RE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


def _state_latest(directory: str) -> Optional[str]:
    """The ``checkpoint`` state file's newest path, or None when it is missing or unreadable."""
    try:
        return tf.train.latest_checkpoint(directory)
    except Exception:  # noqa: BLE001 - a garbage state file is handled by listing the files
        return None


def _step(path: str) -> int:
    return int(path.rsplit("-", 1)[-1])


def candidates(directory: str) -> List[str]:
    """Checkpoint prefixes in ``directory``, newest (highest step) first: every ``ckpt-N`` with an
    ``.index`` or data file on disk, whatever the ``checkpoint`` state file says (it may be garbage or
    name a checkpoint whose files are gone)."""
    if not tf.io.gfile.isdir(directory):
        return []
    steps = set()
    for name in tf.io.gfile.listdir(directory):
        m = _CKPT_RE.match(name.rstrip("/"))
        if m:
            steps.add(int(m.group(1)))
    return [f"{directory}/ckpt-{n}" for n in sorted(steps, reverse=True)]


def restore_newest(ckpt: tf.train.Checkpoint, directory: str) -> Optional[str]:
    """Restore ``ckpt`` from the newest checkpoint of ``directory`` that restores completely, logging
    each damaged one skipped (truncated or garbage data, missing ``.index``) and the one used. None when
    there is no checkpoint at all; :class:`CheckpointError` naming the directory when there are some but
    none restores (training must not silently start again from step 0 over them)."""
    found = candidates(directory)
    failures = []
    for path in found:
        try:
            if not tf.io.gfile.exists(f"{path}.index"):
                raise FileNotFoundError(f"{path}.index is missing")
            ckpt.restore(path).assert_existing_objects_matched()
        except Exception as e:  # noqa: BLE001 - any damage: try the next older one
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log.warning("checkpoint %s does not restore (%s); trying an older one", path, reason)
            failures.append(f"{os.path.basename(path)} ({reason})")
            continue
        if failures:
            log.warning("resuming from %s, the newest checkpoint that restores (skipped: %s)", path,
                        "; ".join(failures))
        return path
    if failures:
        raise CheckpointError(f"{directory}: none of the {len(found)} checkpoint(s) restores ("
                              f"{'; '.join(failures)}); refusing to start from scratch over them: move the "
                              f"directory away to start again, or restore a good checkpoint into it")
    return None


class Checkpointer:
    def __init__(self, model_dir: str, model, optimizer, state: TrainingState, is_chief: bool,
                 worker_index: int = 0, keep: int = 3):
        self.directory = f"{model_dir.rstrip('/')}/{CHECKPOINT_DIR}"
        self.is_chief = is_chief
        self.keep = keep
        self.worker_dir = f"{model_dir.rstrip('/')}/.worker_tmp/worker_{worker_index}"
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step, epoch=state.epoch,
                                        best_val=state.best_val, bad_epochs=state.bad_epochs,
                                        finished=state.finished)
        if is_chief and tf.io.gfile.exists(f"{self.directory}/checkpoint") \
                and _state_latest(self.directory) is None and candidates(self.directory):
            # an unreadable state file: CheckpointManager would fail on it; restore() rewrites it
            log.warning("%s/checkpoint is unreadable (kept as checkpoint.unreadable); using the checkpoint "
                        "files instead", self.directory)
            tf.io.gfile.rename(f"{self.directory}/checkpoint", f"{self.directory}/checkpoint.unreadable",
                               overwrite=True)
        self.manager = (tf.train.CheckpointManager(self.ckpt, self.directory, max_to_keep=keep)
                        if is_chief else None)

    def latest(self) -> Optional[str]:
        found = candidates(self.directory)
        return found[0] if found else None

    def restore(self) -> Optional[str]:
        """Restore the newest checkpoint that restores (see :func:`restore_newest`); None when the
        directory holds no checkpoint at all. A fallback rewrites the ``checkpoint`` state file (chief)."""
        path = restore_newest(self.ckpt, self.directory)
        if path and self.is_chief and path != _state_latest(self.directory):
            # point the state file at the checkpoint used (and the older ones), so that the manager's
            # bookkeeping (latest, max_to_keep) goes on from it
            step = _step(path)
            older = [c for c in reversed(candidates(self.directory)) if _step(c) <= step]
            stamps = [tf.io.gfile.stat(f"{c}.index").mtime_nsec / 1e9 for c in older]
            tf.compat.v1.train.update_checkpoint_state(self.directory, path, older,
                                                       all_model_checkpoint_timestamps=stamps)
            self.manager = tf.train.CheckpointManager(self.ckpt, self.directory, max_to_keep=self.keep)
        return path

    def save(self, step: int) -> str:
        if self.is_chief:
            return self.manager.save(checkpoint_number=step)
        path = self.ckpt.write(f"{self.worker_dir}/ckpt-{step}")
        tf.io.gfile.rmtree(self.worker_dir)
        return path


def export_weights(model, path: str) -> None:
    """``model.save_weights`` to any tf.io.gfile path (Keras writes local files: go through a temp file),
    committed atomically (:func:`model.gfile.commit_path`): written new then renamed, so a kill or a full
    disk never leaves a truncated ``*.weights.h5`` and a reader holding the old one open does not block."""
    from captionbeam.model.gfile import commit_path
    if "://" not in path:
        with commit_path(path) as tmp:
            model.save_weights(tmp)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        model.save_weights(local)
        tf.io.gfile.copy(local, path, overwrite=True)


def export_epoch_weights(model, model_dir: str, improved: bool) -> None:
    """End of an epoch on the chief: ``last.weights.h5`` always, ``best.weights.h5`` when it improved."""
    from captionbeam.model.model_dir import BEST_WEIGHTS, LAST_WEIGHTS
    export_weights(model, f"{model_dir}/{LAST_WEIGHTS}")
    if improved:
        export_weights(model, f"{model_dir}/{BEST_WEIGHTS}")


def end_of_epoch_stop(state, epochs: int, patience: int, epochs_done: int):
    """Marks ``state.finished`` once the run is over; returns why early stopping ended it, else None.
    ``epochs_done`` counts the epoch that just ended."""
    if patience and int(state.bad_epochs) >= patience:
        reason = f"early stopping: no improvement for {int(state.bad_epochs)} epoch(s)"
        log.info("%s", reason)
        state.finished.assign(True)
        return reason
    if epochs_done >= epochs:
        state.finished.assign(True)
    return None


def epoch_to_resume(state, epochs: int, patience: int, model_dir: str, what: str = "training") -> int:
    """The epoch a (re)started run goes on from. A finished run that a larger ``--epochs`` (or
    ``--early-stopping-patience``) reopens goes on; otherwise it says why there is nothing to do and
    returns ``epochs``."""
    epoch = int(state.epoch)
    if not bool(state.finished):
        return epoch
    early = patience and int(state.bad_epochs) >= patience
    if epoch < epochs and not early:
        log.info("%s in %s finished after %d epoch(s); extending it to --epochs %d", what, model_dir, epoch, epochs)
        state.finished.assign(False)
        return epoch
    why = (f"stopped early: no improvement for {int(state.bad_epochs)} epoch(s); a larger "
           f"--early-stopping-patience (or 0) continues it") if early and epoch < epochs else f"--epochs {epochs} reached"
    log.info("%s already finished in %s (%d epochs, %s); nothing to do", what, model_dir, epoch, why)
    return epochs


def load_weights(model, path: str) -> None:
    """``model.load_weights`` from any tf.io.gfile path (Keras reads local files: go through a temp file)."""
    if "://" not in path:
        model.load_weights(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        tf.io.gfile.copy(path, local)
        model.load_weights(local)
