"""The custom training loop: tf.distribute (one device / mirrored / multi-worker), streaming tf.data,
Adam with a schedule and global-norm clipping, validation each epoch, early stopping, best-model
export, checkpoints with resume, TensorBoard, progress lines.

Loss: cross-entropy per target token, padding masked, summed over every replica's tokens and divided
by the global token count of the step (so 1 replica × batch 2B and 2 replicas × batch B give the same
gradients). The attention model adds the doubly-stochastic penalty (summed per caption) to the
objective; reported losses are the plain per-token cross-entropy.

``Model.fit`` fails under MultiWorkerMirroredStrategy with Keras 3 on TF 2.21, so the step is written
with ``strategy.run`` + ``strategy.reduce``. Keras' optimizer sums gradients across replicas; global-norm
clipping must see the summed gradient, so with ``--clip-norm`` the step all-reduces, clips, and hands
the optimizer the clipped sum divided by the replica count (it sums them back).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, replace
from typing import Dict, Optional

import numpy as np

log = logging.getLogger("captionbeam.train")


def _lr_schedule(cfg, steps_per_epoch: int):
    import keras
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch,
                                                      alpha=0.01)
    return keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=steps_per_epoch,
                                                       decay_rate=cfg.lr_decay_rate, staircase=True)


def _check_resumable(model_dir: str, config, is_chief: bool):
    """A model dir that already holds a different model cannot be resumed into."""
    import tensorflow as tf
    from captionbeam.model.config import CONFIG_FILE, ModelConfig
    if not tf.io.gfile.exists(f"{model_dir.rstrip('/')}/{CONFIG_FILE}"):
        return
    old = ModelConfig.load(model_dir)
    if old.architecture_fields() != config.architecture_fields():
        diff = {k: (v, config.architecture_fields()[k]) for k, v in old.architecture_fields().items()
                if config.architecture_fields()[k] != v}
        raise ValueError(f"--model-dir {model_dir} holds a different model (saved vs requested: {diff}); "
                         f"use a new --model-dir to train this one")


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in model.weights:
        h.update(np.ascontiguousarray(np.asarray(v.numpy(), np.float32)).tobytes())
    return h.hexdigest()[:16]


def train(cfg, model_overrides) -> Dict[str, object]:
    """Train (or resume) into ``cfg.model_dir``. ``model_overrides``: a ``ModelConfig`` with the
    architecture fields set (vocab size, feature shape, encoder ... are filled from ``cfg.data``).
    Returns a summary dict (also logged). Cross-entropy only: ``--objective scst`` is
    ``model.scst.train_scst``."""
    cfg.validate()
    if cfg.objective != "xent":
        raise ValueError(f"--objective {cfg.objective}: model.train.train is cross-entropy training; self-critical "
                         f"training is model.scst.train_scst")
    from captionbeam.model.distribute import make_strategy
    dist = make_strategy(cfg.strategy, cfg.cpu_replicas)     # first: logical CPUs before TF initialises devices

    import keras
    import tensorflow as tf
    from captionbeam.model import data as data_lib
    from captionbeam.model.architectures import build_model
    from captionbeam.model.checkpoints import (Checkpointer, TrainingState, end_of_epoch_stop, epoch_to_resume,
                                   export_epoch_weights)
    from captionbeam.model.config import TRAIN_CONFIG_FILE
    from captionbeam.model.integrity import bundle_encoder
    from captionbeam.model.progress import (ProgressMeter, format_duration, load_history, plot_curve, save_history,
                                scalar_summary)

    if cfg.mixed_precision and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--mixed-precision needs a GPU (bfloat16 compute on CPU is slower, not faster)")
    policy = "mixed_bfloat16" if cfg.mixed_precision else None
    keras.utils.set_random_seed(cfg.seed)
    log.info(dist.describe())

    info = data_lib.open_data(cfg.data)
    train_split = data_lib.describe_split(info, cfg.train_split, "--train-split")
    val_split = None
    if cfg.val_split and cfg.val_split.lower() != "none":
        try:
            val_split = data_lib.describe_split(info, cfg.val_split, "--val-split")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; pass --val-split none to train without validation") from None
    spec = info.features_spec
    config = replace(model_overrides, vocab_size=len(info.vocab), feature_shape=list(info.feature_shape),
                     max_length=max(train_split.max_length, val_split.max_length if val_split else 0),
                     encoder=spec.encoder, encoder_weights=spec.weights, image_size=list(spec.image_size),
                     preprocessing=spec.preprocessing, vocab_sha256=info.vocab.sha256()).validate()

    model_dir = cfg.model_dir.rstrip("/")
    _check_resumable(model_dir, config, dist.is_chief)
    global_batch = cfg.batch_size * dist.replicas
    steps_per_epoch = cfg.steps_per_epoch or max(1, train_split.examples // global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    log.info("data %s: %d train images / %d captions / %d target tokens in %d file(s)%s; vocabulary %d; "
             "features %s (%s); global batch %d = %d per replica x %d; %d steps/epoch",
             cfg.data, train_split.images, train_split.examples, train_split.tokens, len(train_split.files),
             f"; {val_split.examples} {cfg.val_split} captions" if val_split else "", len(info.vocab),
             tuple(info.feature_shape), spec.encoder, global_batch, cfg.batch_size, dist.replicas, steps_per_epoch)
    if dist.workers > 1 and len(train_split.files) < dist.workers:
        log.warning("%d training file(s) for %d workers: every worker reads every file (sharding by example)",
                    len(train_split.files), dist.workers)

    schedule = _lr_schedule(cfg, steps_per_epoch)

    def current_lr(step: int) -> float:
        return float(schedule(step)) if callable(schedule) else float(schedule)

    with dist.strategy.scope():
        model = build_model(config, dtype_policy=policy)
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
    state = TrainingState.create()
    ckpt = Checkpointer(model_dir, model, optimizer, state, dist.is_chief, dist.worker_index, cfg.keep_checkpoints)
    restored = ckpt.restore()
    if restored:
        by_cider = cfg.selection == "cider"
        log.info("resumed from %s: step %d, %d epoch(s) done, best %s %.4f", restored, int(state.step),
                 int(state.epoch), "dev CIDEr-D" if by_cider else "val loss",
                 -float(state.best_val) if by_cider else float(state.best_val))
    else:
        log.info("starting from scratch (no checkpoint in %s)", ckpt.directory)

    if dist.is_chief:
        tf.io.gfile.makedirs(model_dir)
        spec = bundle_encoder(spec, model_dir)     # a model-file encoder travels inside the model dir
        config.save(model_dir)
        with tf.io.gfile.GFile(f"{model_dir}/{TRAIN_CONFIG_FILE}", "w") as f:
            f.write(cfg.to_json())
        info.vocab.save(f"{model_dir}/vocab.txt")
        spec.save(model_dir)
    history = load_history(model_dir)[: int(state.epoch)] if dist.is_chief else []
    writers = ({k: tf.summary.create_file_writer(f"{model_dir}/logs/{k}") for k in ("train", "validation")}
               if dist.is_chief else None)

    # ------------------------------------------------------------------ steps
    replicas = dist.replicas
    clip = cfg.clip_norm
    variables = model.trainable_variables

    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        target = batch["target"]
        mask = tf.not_equal(target, 0)
        maskf = tf.cast(mask, tf.float32)
        tokens = tf.reduce_sum(maskf)
        global_tokens = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
        with tf.GradientTape() as tape:
            logits, attention = model.forward(batch["feature"], batch["input"], training=True)
            nll = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits) * maskf)
            objective = nll
            if attention is not None:
                objective += model.attention_penalty(attention, maskf)
            objective = objective / tf.maximum(global_tokens, 1.0)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)]
        if clip > 0:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clip)
            grads = [g / replicas for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return nll, tokens

    traces = {"train": 0, "eval": 0}

    @tf.function
    def train_step(iterator):
        traces["train"] += 1
        nll, tokens = dist.strategy.run(replica_step, args=(next(iterator),))
        return (dist.strategy.reduce(tf.distribute.ReduceOp.SUM, nll, axis=None),
                dist.strategy.reduce(tf.distribute.ReduceOp.SUM, tokens, axis=None))

    eval_signature = [{"feature": tf.TensorSpec([None] + list(info.feature_shape), tf.float32),
                       "input": tf.TensorSpec([None, None], tf.int32),
                       "target": tf.TensorSpec([None, None], tf.int32)}]

    @tf.function(input_signature=eval_signature)
    def eval_step(batch):
        traces["eval"] += 1
        logits, _ = model.forward(batch["feature"], batch["input"], training=False)
        mask = tf.cast(tf.not_equal(batch["target"], 0), tf.float32)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["target"], logits) * mask
        return tf.reduce_sum(nll), tf.reduce_sum(mask)

    split_cider = None
    if cfg.selection == "cider" and val_split is not None:
        from captionbeam.model.selection import SplitCider
        split_cider = SplitCider(model, val_split.files, info.feature_shape, batch_size=max(global_batch, 64),
                                 max_images=cfg.max_val_batches * max(global_batch, 64) if cfg.max_val_batches
                                 else None)

    def evaluate() -> Optional[float]:
        # Every worker evaluates the whole split locally with the same weights: same number everywhere.
        if val_split is None:
            return None
        total = count = 0.0
        ds = data_lib.evaluation_dataset(val_split.files, info.feature_shape, global_batch)
        if cfg.max_val_batches:
            ds = ds.take(cfg.max_val_batches)
        for batch in ds:
            nll, n = eval_step(batch)
            total, count = total + float(nll), count + float(n)
        return total / max(count, 1.0)

    def dataset_for_epoch(epoch: int, skip_steps: int):
        def fn(input_context: tf.distribute.InputContext):
            per_pipeline = dist.replicas // input_context.num_input_pipelines   # batches one step takes
            return data_lib.training_dataset(
                train_split.files, info.feature_shape, input_context.get_per_replica_batch_size(global_batch),
                seed=cfg.seed * 100003 + epoch, shuffle_buffer=cfg.shuffle_buffer,
                num_pipelines=input_context.num_input_pipelines, pipeline_index=input_context.input_pipeline_id,
                skip_batches=skip_steps * per_pipeline, bucket_by_length=cfg.bucket_by_length,
                max_length=config.max_length)
        return dist.strategy.distribute_datasets_from_function(fn)

    def save_checkpoint(reason: str):
        path = ckpt.save(int(state.step))
        if dist.is_chief:
            log.info("checkpoint %s (%s)", path, reason)

    # ------------------------------------------------------------------ loop
    start_step = int(state.step)
    meter = ProgressMeter(total_steps, start_step, cfg.log_every)
    first_loss = history[0].get("first_loss") if history else None
    stopped_by = None
    t_start = time.perf_counter()
    epoch = epoch_to_resume(state, cfg.epochs, cfg.early_stopping_patience, model_dir)
    while epoch < cfg.epochs:
        done_in_epoch = max(0, int(state.step) - epoch * steps_per_epoch)
        iterator = iter(dataset_for_epoch(epoch, done_in_epoch))
        epoch_t0, epoch_nll, epoch_tokens = time.perf_counter(), 0.0, 0.0
        for _ in range(done_in_epoch, steps_per_epoch):
            nll, tokens = train_step(iterator)
            nll, tokens = float(nll), float(tokens)
            step = int(state.step.assign_add(1))
            epoch_nll, epoch_tokens = epoch_nll + nll, epoch_tokens + tokens
            if first_loss is None:
                first_loss = nll / max(tokens, 1.0)
            stats = meter.update(step, nll, tokens)
            if stats:
                lr = current_lr(step - 1)
                log.info("epoch %d/%d step %d/%d (global %d/%d) loss %.4f tokens/s %s lr %.2e ETA %s",
                         epoch + 1, cfg.epochs, step - epoch * steps_per_epoch, steps_per_epoch, step, total_steps,
                         stats["loss"], f"{stats['tokens_per_s']:,.0f}", lr, format_duration(stats["eta_s"]))
                if writers:
                    with writers["train"].as_default():
                        scalar_summary("loss", stats["loss"], step)
                        scalar_summary("tokens_per_s", stats["tokens_per_s"], step)
                        scalar_summary("learning_rate", lr, step)
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(f"every {cfg.checkpoint_every} steps")
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                save_checkpoint("--stop-after-steps")
                log.info("stopping at step %d (--stop-after-steps)", step)
                return {"stopped_at_step": step, "resumed_from": start_step}
        seconds = time.perf_counter() - epoch_t0
        train_loss = epoch_nll / max(epoch_tokens, 1.0) if epoch_tokens else float("nan")
        val_loss = evaluate()
        record = {"epoch": epoch + 1, "step": int(state.step), "train_loss": train_loss, "val_loss": val_loss,
                  "tokens_per_s": epoch_tokens / max(seconds, 1e-9), "seconds": seconds,
                  "learning_rate": current_lr(int(state.step) - 1)}
        if epoch == 0 or not history:
            record["first_loss"] = first_loss
        improved = False
        monitored = val_loss if val_loss is not None else train_loss
        if split_cider is not None:
            record["val_cider"] = split_cider()[0]
            monitored = -record["val_cider"]            # best_val holds minus the best dev CIDEr-D
        if monitored < float(state.best_val) - cfg.min_delta:
            state.best_val.assign(monitored)
            state.bad_epochs.assign(0)
            improved = True
        else:
            state.bad_epochs.assign_add(1)
        state.epoch.assign(epoch + 1)
        log.info("epoch %d/%d done in %s: train loss %.4f, %s loss %s%s, %s tokens/s%s", epoch + 1, cfg.epochs,
                 format_duration(seconds), train_loss, cfg.val_split,
                 f"{val_loss:.4f}" if val_loss is not None else "-",
                 f", CIDEr-D {record['val_cider']:.4f}" if "val_cider" in record else "", f"{record['tokens_per_s']:,.0f}",
                 " (best: exported)" if improved else f" (no improvement for {int(state.bad_epochs)} epoch(s))")
        if dist.is_chief:
            history.append(record)
            export_epoch_weights(model, model_dir, improved)
            if writers and val_loss is not None:
                with writers["validation"].as_default():
                    scalar_summary("loss", val_loss, int(state.step))
                with writers["train"].as_default():
                    scalar_summary("epoch_loss", train_loss, int(state.step))
        epoch += 1
        stopped_by = end_of_epoch_stop(state, cfg.epochs, cfg.early_stopping_patience, epoch)
        save_checkpoint(f"end of epoch {epoch}")
        if dist.is_chief:
            save_history(model_dir, history, {"arch": config.arch, "global_batch": global_batch,
                                              "replicas": dist.replicas, "workers": dist.workers,
                                              "steps_per_epoch": steps_per_epoch, "stopped_by": stopped_by})
            plot_curve(model_dir, history, f"captionbeam {config.arch}: cross-entropy per token")
        if stopped_by:
            break
    if writers:
        for w in writers.values():
            w.flush()
    best_key = "best_val_cider" if cfg.selection == "cider" else "best_val_loss"
    summary = {"model_dir": model_dir, "arch": config.arch, "step": int(state.step), "epochs": int(state.epoch),
               best_key: -float(state.best_val) if cfg.selection == "cider" else float(state.best_val), "resumed_from": start_step,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "worker": dist.worker_index, "weights_sha256": weights_digest(model),
               "seconds": round(time.perf_counter() - t_start, 1), "stopped_by": stopped_by}
    log.debug("tf.function traces: %s", traces)
    log.info("training finished: %s", json.dumps(summary, sort_keys=True))
    return summary
