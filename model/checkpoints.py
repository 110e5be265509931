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
import tempfile
from dataclasses import dataclass
from typing import Optional

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


class Checkpointer:
    def __init__(self, model_dir: str, model, optimizer, state: TrainingState, is_chief: bool,
                 worker_index: int = 0, keep: int = 3):
        self.directory = f"{model_dir.rstrip('/')}/{CHECKPOINT_DIR}"
        self.is_chief = is_chief
        self.worker_dir = f"{model_dir.rstrip('/')}/.worker_tmp/worker_{worker_index}"
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step, epoch=state.epoch,
                                        best_val=state.best_val, bad_epochs=state.bad_epochs,
                                        finished=state.finished)
        self.manager = (tf.train.CheckpointManager(self.ckpt, self.directory, max_to_keep=keep)
                        if is_chief else None)

    def latest(self) -> Optional[str]:
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> Optional[str]:
        path = self.latest()
        if path:
            self.ckpt.restore(path).assert_existing_objects_matched()
        return path

    def save(self, step: int) -> str:
        if self.is_chief:
            return self.manager.save(checkpoint_number=step)
        path = self.ckpt.write(f"{self.worker_dir}/ckpt-{step}")
        tf.io.gfile.rmtree(self.worker_dir)
        return path


def export_weights(model, path: str) -> None:
    """``model.save_weights`` to any tf.io.gfile path (Keras writes local files: go through a temp file)."""
    if "://" not in path:
        model.save_weights(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        model.save_weights(local)
        tf.io.gfile.copy(local, path, overwrite=True)
