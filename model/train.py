"""Cross-entropy training: the objective :func:`model.loop.run_training` runs (``--objective xent``).

Loss: cross-entropy per target token, padding masked, summed over every replica's tokens and divided
by the global token count of the step (so 1 replica × batch 2B and 2 replicas × batch B give the same
gradients). The attention model adds the doubly-stochastic penalty (summed per caption) to the
objective; reported losses are the plain per-token cross-entropy. Validation: the dev split's loss per
token, and its greedy CIDEr-D with ``--select-by cider``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

import numpy as np

from captionbeam.model.loop import EpochResult, Objective, run_training
from captionbeam.model.progress import Curve


class CrossEntropy(Objective):
    name, curve = "xent", Curve("captionbeam {arch}: cross-entropy per token")

    def __init__(self, model_overrides):
        self.overrides = model_overrides

    def model_config(self, cfg, info, train_split, val_split):
        spec = info.features_spec
        return replace(self.overrides, vocab_size=len(info.vocab), feature_shape=list(info.feature_shape),
                       max_length=max(train_split.max_length, val_split.max_length if val_split else 0),
                       encoder_description=spec.encoder_description(),
                       vocab_sha256=info.vocab.sha256()).validate()

    def prepare(self, run):
        import tensorflow as tf
        self.run, cfg, info, split, val = run, run.cfg, run.info, run.train_split, run.val_split
        self.eval_step = tf.function(self._eval_step, input_signature=[{
            "feature": tf.TensorSpec([None] + list(info.feature_shape), tf.float32),
            "input": tf.TensorSpec([None, None], tf.int32), "target": tf.TensorSpec([None, None], tf.int32)}])
        return (f"data {cfg.data}: {split.images} train images / {split.examples} captions / {split.tokens} target "
                f"tokens in {len(split.files)} file(s){f'; {val.examples} {cfg.val_split} captions' if val else ''}"
                f"; vocabulary {len(info.vocab)}; features {tuple(info.feature_shape)} ({info.features_spec.encoder});"
                f" global batch {run.global_batch} = {cfg.batch_size} per replica x {run.dist.replicas}; "
                f"{run.steps_per_epoch} steps/epoch")

    def dataset(self, run, epoch, batch_size, num_pipelines, pipeline_index, skip_batches):
        from captionbeam.model.data import training_dataset
        return training_dataset(run.train_split.files, run.info.feature_shape, batch_size,
                                seed=run.cfg.seed * 100003 + epoch, shuffle_buffer=run.cfg.shuffle_buffer,
                                num_pipelines=num_pipelines, pipeline_index=pipeline_index, skip_batches=skip_batches,
                                bucket_by_length=run.cfg.bucket_by_length, max_length=run.config.max_length)

    def replica_step(self, batch, step):
        import tensorflow as tf
        target, model = batch["target"], self.run.model
        maskf = tf.cast(tf.not_equal(target, 0), tf.float32)
        tokens = tf.reduce_sum(maskf)
        global_tokens = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tokens)
        with tf.GradientTape() as tape:
            logits, attention = model.forward(batch["feature"], batch["input"], training=True)
            nll = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits) * maskf)
            objective = nll
            if attention is not None:
                objective += model.attention_penalty(attention, maskf)
            objective = objective / tf.maximum(global_tokens, 1.0)
        self.run.apply_gradients(tape, objective)
        return nll, tokens

    def _eval_step(self, batch):
        import tensorflow as tf
        logits, _ = self.run.model.forward(batch["feature"], batch["input"], training=False)
        mask = tf.cast(tf.not_equal(batch["target"], 0), tf.float32)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["target"], logits) * mask
        return tf.reduce_sum(nll), tf.reduce_sum(mask)

    def progress(self, sums, seconds):
        loss, tokens_per_s = sums[0] / max(sums[1], 1.0), sums[1] / max(seconds, 1e-9)
        return f"loss {loss:.4f} tokens/s {tokens_per_s:,.0f}", {"loss": loss, "tokens_per_s": tokens_per_s}

    def validation_loss(self, run):
        # Every worker evaluates the whole split locally with the same weights: same number everywhere.
        from captionbeam.model.data import evaluation_dataset
        if run.val_split is None:
            return None
        total = count = 0.0
        ds = evaluation_dataset(run.val_split.files, run.info.feature_shape, run.global_batch)
        for batch in ds.take(run.cfg.max_val_batches) if run.cfg.max_val_batches else ds:
            nll, n = self.eval_step(batch)
            total, count = total + float(nll), count + float(n)
        return total / max(count, 1.0)

    def end_epoch(self, run, epoch, sums, seconds):
        nll, tokens = sums if sums is not None else (0.0, 0.0)
        train_loss, val_loss = nll / max(tokens, 1.0) if tokens else float("nan"), self.validation_loss(run)
        record = {"train_loss": train_loss, "val_loss": val_loss, "tokens_per_s": tokens / max(seconds, 1e-9),
                  "seconds": seconds, "learning_rate": run.current_lr(int(run.state.step) - 1)}
        if epoch == 0 or not run.history:
            first = run.first_sums
            record["first_loss"] = first[0] / max(first[1], 1.0) if first is not None else None
        monitored = val_loss if val_loss is not None else train_loss
        if run.dev_cider is not None:
            record["val_cider"] = run.dev_cider()[0]
            monitored = -record["val_cider"]            # best_val holds minus the best dev CIDEr-D
        val_text = "-" if val_loss is None else f"{val_loss:.4f}"
        cider_text = f", CIDEr-D {record['val_cider']:.4f}" if "val_cider" in record else ""
        text = (f"train loss {train_loss:.4f}, {run.cfg.val_split} loss {val_text}{cider_text}, "
                f"{record['tokens_per_s']:,.0f} tokens/s")
        scalars = {("validation", "loss"): val_loss, ("train", "epoch_loss"): train_loss} if val_loss is not None else {}
        return EpochResult(record, monitored, text, scalars)

    def history_meta(self, run):
        return {"global_batch": run.global_batch}

    def summary(self, run):
        first = run.history[0] if run.history else {}
        return {"final_train_loss": run.history[-1]["train_loss"] if run.history else None,
                "first_train_loss": first.get("train_loss"), "first_val_loss": first.get("val_loss")}


def train(cfg, model_overrides) -> Dict[str, object]:
    """Train (or resume) into ``cfg.model_dir``. ``model_overrides``: a ``ModelConfig`` with the
    architecture fields set (vocab size, feature shape, encoder ... are filled from ``cfg.data``).
    Returns a summary dict (also logged). Cross-entropy only: ``--objective scst`` is
    ``model.scst.train_scst``."""
    cfg.validate()
    if cfg.objective != "xent":
        raise ValueError(f"--objective {cfg.objective}: model.train.train is cross-entropy training; self-critical "
                         f"training is model.scst.train_scst")
    return run_training(cfg, CrossEntropy(model_overrides))
