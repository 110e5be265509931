"""The one training loop (``model.loop.run_training``) with an objective written here, as a new
objective would be: it trains for the steps asked, picks the best epoch by the objective's number,
exports best / last weights, writes history.json with the objective's records and meta, stops at
``--stop-after-steps`` and resumes from that checkpoint, and refuses a different model in the dir."""
import json
import os

import numpy as np
import pytest


def _objective_class():
    import tensorflow as tf
    from captionbeam.model.loop import EpochResult, Objective

    class PlainCrossEntropy(Objective):
        """Teacher-forced cross-entropy per caption, validated by a fixed script of numbers."""
        name, log_prefix = "plain", "plain "

        def __init__(self, overrides, monitored):
            self.overrides, self.monitored, self.prepared = overrides, list(monitored), 0

        def model_config(self, cfg, info, train_split, val_split):
            from dataclasses import replace
            return replace(self.overrides, vocab_size=len(info.vocab), feature_shape=list(info.feature_shape),
                           max_length=train_split.max_length).validate()

        def prepare(self, run):
            self.run, self.prepared = run, self.prepared + 1
            return f"plain: {run.steps_per_epoch} steps/epoch"

        def dataset(self, run, epoch, batch_size, num_pipelines, pipeline_index, skip_batches):
            from captionbeam.model.data import training_dataset
            return training_dataset(run.train_split.files, run.info.feature_shape, batch_size, seed=epoch,
                                    shuffle_buffer=50, num_pipelines=num_pipelines, pipeline_index=pipeline_index,
                                    skip_batches=skip_batches)

        def replica_step(self, batch, step):
            mask = tf.cast(tf.not_equal(batch["target"], 0), tf.float32)
            with tf.GradientTape() as tape:
                logits, _ = self.run.model.forward(batch["feature"], batch["input"], training=True)
                nll = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["target"], logits) * mask)
                loss = nll / tf.maximum(tf.reduce_sum(mask), 1.0)
            self.run.apply_gradients(tape, loss)
            return nll, tf.reduce_sum(mask)

        def progress(self, sums, seconds):
            return f"nll {sums[0] / max(sums[1], 1.0):.4f}", {"nll": sums[0] / max(sums[1], 1.0)}

        def end_epoch(self, run, epoch, sums, seconds):
            value = self.monitored[epoch]
            return EpochResult({"train_nll": float(sums[0] / max(sums[1], 1.0)), "scripted": value}, value,
                               f"scripted {value}")

        def history_meta(self, run):
            return {"objective": self.name}

    return PlainCrossEntropy


def _cfg(data, model_dir, **kw):
    from captionbeam.model.config import TrainConfig
    base = dict(data=str(data), model_dir=str(model_dir), epochs=3, steps_per_epoch=4, batch_size=16,
                learning_rate=0.01, log_every=2, checkpoint_every=100, shuffle_buffer=50, early_stopping_patience=0,
                strategy="one_device", seed=3, val_split="none")
    base.update(kw)
    return TrainConfig(**base)


def test_a_new_objective_trains_selects_resumes_through_the_loop(synthetic_data, tmp_path):
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.loop import run_training
    from captionbeam.model.model_dir import BEST_WEIGHTS, LAST_WEIGHTS
    Plain = _objective_class()
    model = ModelConfig(arch="merge", units=16, embedding_dim=16, dropout=0.0)
    out = tmp_path / "plain"
    scripted = [2.0, 1.0, 1.5]            # epoch 2 is the best: its weights are best.weights.h5

    stopped = run_training(_cfg(synthetic_data, out, stop_after_steps=6), Plain(model, scripted))
    assert stopped == {"stopped_at_step": 6, "resumed_from": 0}
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1] and history["objective"] == "plain"

    summary = run_training(_cfg(synthetic_data, out), Plain(model, scripted))
    assert summary["resumed_from"] == 6 and summary["step"] == 12 and summary["epochs"] == 3
    assert summary["best_val_loss"] == 1.0 and summary["stopped_by"] is None
    history = json.loads((out / "history.json").read_text())
    assert [(e["epoch"], e["step"], e["scripted"]) for e in history["epochs"]] == [(1, 4, 2.0), (2, 8, 1.0), (3, 12, 1.5)]
    assert all(np.isfinite(e["train_nll"]) for e in history["epochs"])
    assert history["steps_per_epoch"] == 4 and history["arch"] == "merge"
    for name in (BEST_WEIGHTS, LAST_WEIGHTS, "config.json", "train_config.json", "vocab.txt", "features_spec.json"):
        assert (out / name).exists(), name
    assert not (out / "training_curve.png").exists()              # no curve: no png
    assert (out / BEST_WEIGHTS).stat().st_mtime_ns < (out / LAST_WEIGHTS).stat().st_mtime_ns   # best: epoch 2

    again = run_training(_cfg(synthetic_data, out), Plain(model, scripted))   # finished: nothing to do
    assert again["step"] == 12 and again["resumed_from"] == 12 and again["weights_sha256"] == summary["weights_sha256"]

    other = ModelConfig(arch="merge", units=8, embedding_dim=16, dropout=0.0)
    with pytest.raises(ValueError, match="holds a different model"):
        run_training(_cfg(synthetic_data, out), Plain(other, scripted))
