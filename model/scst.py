"""Self-critical sequence training (Rennie et al. 2017): ``captionbeam train --objective scst
--init-from MODEL_DIR`` fine-tunes a cross-entropy model of any architecture on the CIDEr-D of its own
sampled captions.

Per step and image: K captions are sampled (``--samples``, multinomial at ``--temperature``, through
the model's step interface, seeded statelessly by (seed, step, replica): a resumed run draws the same
captions); each one's reward is its CIDEr-D (``model.cider``, NumPy, inside the step through
``tf.numpy_function``) against every reference caption of the image, ``<end>`` counted, with document
frequencies from all the training split's references; the baseline is the mean reward of the image's
other K-1 samples (``--baseline mean``) or the reward of its greedy caption (``--baseline greedy``). The
loss is REINFORCE's ``-(reward - baseline) * log p(sample)`` (the log-probability summed over the
sample's tokens, ``<end>`` included, from the teacher-forced call on the sample; dropout off, so it is
the distribution that was sampled), averaged over all replicas' samples.

It runs in the same custom ``strategy.run`` loop as cross-entropy training (one device, mirrored,
multi-worker), with the same checkpoints (``kill -9`` and rerun resumes at the checkpointed step), the
same gradient clipping, and a validation at every epoch end: dev CIDEr-D of greedy captions
(``model.selection``) picks ``best.weights.h5`` and drives early stopping. The init model's own dev
CIDEr-D is measured first (epoch 0 in ``history.json``) and its weights are the first best, so the best
weights are never worse on dev than where SCST started.

``--batch-size`` counts images per replica here (each with K samples); an epoch is one pass over the
training images unless ``--steps-per-epoch`` says otherwise.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Dict, List

import numpy as np

log = logging.getLogger("captionbeam.train")


def load_init(init_from: str, info):
    """The ``--init-from`` model's config, checked against ``--data`` (vocabulary, feature shape)."""
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.model_dir import weights_path
    from captionbeam.model.vocab import VOCAB_FILE, Vocabulary
    import tensorflow as tf
    if not tf.io.gfile.exists(f"{init_from.rstrip('/')}/config.json"):
        raise FileNotFoundError(f"--init-from {init_from}: no config.json (is it a `captionbeam train` model dir?)")
    config = ModelConfig.load(init_from)
    vocab = Vocabulary.load(f"{init_from.rstrip('/')}/{VOCAB_FILE}")
    if tuple(vocab.tokens) != tuple(info.vocab.tokens):
        differ = sum(1 for a, b in zip(vocab.tokens, info.vocab.tokens) if a != b) + abs(len(vocab) - len(info.vocab))
        raise ValueError(f"--init-from {init_from}: its vocabulary ({len(vocab)} tokens) is not --data "
                         f"{info.directory}'s ({len(info.vocab)} tokens, {differ} differ): the captions would be "
                         f"read with the wrong words; use records written with the model's vocab.txt")
    if list(config.feature_shape) != list(info.feature_shape):
        raise ValueError(f"--init-from {init_from}: the model reads features {tuple(config.feature_shape)}, --data "
                         f"{info.directory} holds {tuple(info.feature_shape)}")
    return config, weights_path(init_from, "best")


def load_weights(model, path: str) -> None:
    """``model.load_weights`` from any tf.io.gfile path (Keras reads local files: go through a temp file)."""
    if "://" not in path:
        model.load_weights(path)
        return
    import os
    import tempfile
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        tf.io.gfile.copy(path, local)
        model.load_weights(local)


def training_scorer(files, feature_shape, vocab_size):
    """CIDEr-D with document frequencies from every training image's references (``<end>`` kept)."""
    from captionbeam.model.cider import CiderD
    from captionbeam.model.selection import split_references
    _, refs = split_references(files, feature_shape, batch_size=512, keep_end=True)
    return CiderD(refs, vocab_size=vocab_size), len(refs)


def reward_function(scorer, samples: int, baseline: str):
    """NumPy (samples [B*K, T], lengths [B*K], refs [B, R, L], greedy [B, T'], greedy lengths [B])
    -> (rewards [B*K], baselines [B*K]) float32."""
    from captionbeam.model.vocab import PAD_ID

    def rewards(tokens, lengths, refs, greedy, greedy_lengths):
        sets: List[List[np.ndarray]] = []
        for image in refs:
            rows = []
            for row in image:
                n = int(np.count_nonzero(row != PAD_ID))
                if n:
                    rows.append(row[1:n])          # without <start>, with <end>
            sets.append(rows)
        hyps = [tokens[i, :int(lengths[i])] for i in range(len(tokens))]
        r = scorer.scores(hyps, [sets[i // samples] for i in range(len(hyps))])
        if baseline == "greedy":
            g = scorer.scores([greedy[i, :int(greedy_lengths[i])] for i in range(len(greedy))], sets)
            b = np.repeat(g, samples)
        else:
            per_image = r.reshape(-1, samples)
            b = ((per_image.sum(1, keepdims=True) - per_image) / (samples - 1)).reshape(-1)
        return r.astype(np.float32), b.astype(np.float32)

    return rewards


def train_scst(cfg) -> Dict[str, object]:
    """SCST fine-tuning of ``cfg.init_from`` into ``cfg.model_dir`` (or resume it). Returns a summary."""
    cfg.validate()
    from captionbeam.model.distribute import make_strategy
    dist = make_strategy(cfg.strategy, cfg.cpu_replicas)     # first: logical CPUs before TF initialises devices

    import keras
    import tensorflow as tf
    from captionbeam.model import data as data_lib
    from captionbeam.model.architectures import build_model
    from captionbeam.model.checkpoints import (Checkpointer, TrainingState, end_of_epoch_stop, epoch_to_resume,
                                   export_epoch_weights, export_weights)
    from captionbeam.model.config import TRAIN_CONFIG_FILE
    from captionbeam.model.decode import _token_mask, default_max_length, greedy_search, sample_search
    from captionbeam.model.model_dir import BEST_WEIGHTS
    from captionbeam.model.progress import format_duration, load_history, save_history, scalar_summary
    from captionbeam.model.selection import SplitCider
    from captionbeam.model.train import _check_resumable, _lr_schedule, weights_digest
    from captionbeam.model.vocab import START_ID

    if cfg.mixed_precision:
        raise ValueError("--mixed-precision: not supported with --objective scst")
    keras.utils.set_random_seed(cfg.seed)
    log.info(dist.describe())
    info = data_lib.open_data(cfg.data)
    train_split = data_lib.describe_split(info, cfg.train_split, "--train-split")
    val_split = data_lib.describe_split(info, cfg.val_split, "--val-split")
    config, init_weights = load_init(cfg.init_from, info)
    model_dir = cfg.model_dir.rstrip("/")
    if model_dir == cfg.init_from.rstrip("/"):
        raise ValueError("--model-dir must differ from --init-from (SCST writes a new model dir)")
    _check_resumable(model_dir, config, dist.is_chief)

    K = int(cfg.samples)
    global_images = cfg.batch_size * dist.replicas
    global_samples = global_images * K
    steps_per_epoch = cfg.steps_per_epoch or max(1, train_split.images // global_images)
    total_steps = steps_per_epoch * cfg.epochs
    max_length = default_max_length(config)
    scorer, ref_images = training_scorer(train_split.files, info.feature_shape, config.vocab_size)
    log.info("scst: %s model from %s; data %s: %d train images (%d reference sets for CIDEr-D document "
             "frequencies), %d %s images; %d samples per image at temperature %g, baseline %s; global batch %d "
             "images = %d per replica x %d (%d samples); %d steps/epoch", config.arch, cfg.init_from, cfg.data,
             train_split.images, ref_images, val_split.images, cfg.val_split, K, cfg.temperature, cfg.baseline,
             global_images, cfg.batch_size, dist.replicas, global_samples, steps_per_epoch)

    schedule = _lr_schedule(cfg, steps_per_epoch)
    with dist.strategy.scope():
        model = build_model(config)
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
    state = TrainingState.create()
    ckpt = Checkpointer(model_dir, model, optimizer, state, dist.is_chief, dist.worker_index, cfg.keep_checkpoints)
    restored = ckpt.restore()
    if restored:
        log.info("resumed from %s: step %d, %d epoch(s) done, best dev CIDEr-D %.4f",
                 restored, int(state.step), int(state.epoch), -float(state.best_val))
    else:
        load_weights(model, init_weights)
        log.info("starting from %s (no checkpoint in %s)", init_weights, ckpt.directory)
    if dist.is_chief:
        tf.io.gfile.makedirs(model_dir)
        config.save(model_dir)
        with tf.io.gfile.GFile(f"{model_dir}/{TRAIN_CONFIG_FILE}", "w") as f:
            f.write(cfg.to_json())
        info.vocab.save(f"{model_dir}/vocab.txt")
        info.features_spec.save(model_dir)
    history = load_history(model_dir)[: int(state.epoch) + 1] if dist.is_chief else []
    writers = ({k: tf.summary.create_file_writer(f"{model_dir}/logs/{k}") for k in ("train", "validation")}
               if dist.is_chief else None)
    dev = SplitCider(model, val_split.files, info.feature_shape, batch_size=max(global_images, 64),
                     max_images=cfg.max_val_batches * max(global_images, 64) if cfg.max_val_batches else None)

    # ------------------------------------------------------------------ step
    replicas, clip = dist.replicas, cfg.clip_norm
    variables = model.trainable_variables
    rewards_np = reward_function(scorer, K, cfg.baseline)
    token_mask = _token_mask(config.vocab_size)
    temperature = float(cfg.temperature)

    def replica_step(batch, step):
        ctx = tf.distribute.get_replica_context()
        features = tf.repeat(batch["feature"], K, axis=0)                            # [B*K, ...]
        seed = tf.stack([tf.cast(cfg.seed, tf.int64), step * 4096 + tf.cast(ctx.replica_id_in_sync_group, tf.int64)])
        sampled = sample_search(model, features, max_length, seed, temperature)
        tokens, lengths = sampled["tokens"], sampled["length"]
        if cfg.baseline == "greedy":
            g = greedy_search(model, batch["feature"], max_length)
            g_tokens, g_lengths = g["tokens"], g["length"]
        else:
            g_tokens, g_lengths = tf.zeros([1, 1], tf.int32), tf.zeros([1], tf.int32)
        reward, base = tf.numpy_function(rewards_np, [tokens, lengths, batch["refs"], g_tokens, g_lengths],
                                         [tf.float32, tf.float32], stateful=False)
        reward.set_shape([None])
        base.set_shape([None])
        advantage = tf.stop_gradient(reward - base)
        inputs = tf.concat([tf.fill([tf.shape(tokens)[0], 1], START_ID), tokens[:, :-1]], axis=1)
        mask = tf.sequence_mask(lengths, tf.shape(tokens)[1], tf.float32)
        with tf.GradientTape() as tape:
            logits, _ = model.forward(features, inputs, training=False)
            logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature + token_mask, axis=-1)
            token_lp = tf.gather(logp, tokens, batch_dims=2) * mask                    # [B*K, T]
            objective = -tf.reduce_sum(advantage * tf.reduce_sum(token_lp, 1)) / float(global_samples)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)]
        if clip > 0:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clip)
            grads = [g / replicas for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        n = tf.cast(tf.size(reward), tf.float32)
        return tf.reduce_sum(reward), tf.reduce_sum(base), tf.reduce_sum(tf.cast(lengths, tf.float32)), n

    @tf.function
    def train_step(iterator, step):
        out = dist.strategy.run(replica_step, args=(next(iterator), step))
        return [dist.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

    def dataset_for_epoch(epoch: int, skip_steps: int):
        def fn(input_context: tf.distribute.InputContext):
            per_pipeline = dist.replicas // input_context.num_input_pipelines
            return data_lib.image_dataset(
                train_split.files, info.feature_shape, input_context.get_per_replica_batch_size(global_images),
                seed=cfg.seed * 100003 + epoch, shuffle_buffer=min(cfg.shuffle_buffer, 2000),
                num_pipelines=input_context.num_input_pipelines, pipeline_index=input_context.input_pipeline_id,
                skip_batches=skip_steps * per_pipeline)
        return dist.strategy.distribute_datasets_from_function(fn)

    def save_checkpoint(reason: str):
        path = ckpt.save(int(state.step))
        if dist.is_chief:
            log.info("checkpoint %s (%s)", path, reason)

    def validate():
        t0 = time.perf_counter()
        score, hyps = dev()
        mean_len = float(np.mean([len(h) for h in hyps])) if hyps else 0.0
        return score, mean_len, time.perf_counter() - t0

    # ------------------------------------------------------------------ initial model
    start_step = int(state.step)
    if not restored:
        score, mean_len, secs = validate()
        state.best_val.assign(-score)
        log.info("init model %s: %s CIDEr-D %.4f (greedy, %d images, mean length %.1f, %.1fs)", cfg.init_from,
                 cfg.val_split, score, dev.images, mean_len, secs)
        if dist.is_chief:
            history = [{"epoch": 0, "step": 0, "val_cider": score, "val_length": mean_len}]
            export_weights(model, f"{model_dir}/{BEST_WEIGHTS}")
            save_history(model_dir, history, {"objective": "scst", "arch": config.arch, "init_from": cfg.init_from})
        save_checkpoint("initial weights")

    t_start = time.perf_counter()
    stopped_by = None
    epoch = epoch_to_resume(state, cfg.epochs, cfg.early_stopping_patience, model_dir, what="scst")
    window = np.zeros(4)
    window_t0 = time.perf_counter()
    while epoch < cfg.epochs:
        done_in_epoch = max(0, int(state.step) - epoch * steps_per_epoch)
        iterator = iter(dataset_for_epoch(epoch, done_in_epoch))
        epoch_t0, epoch_sums = time.perf_counter(), np.zeros(4)
        for _ in range(done_in_epoch, steps_per_epoch):
            sums = np.array([float(v) for v in train_step(iterator, tf.constant(int(state.step), tf.int64))])
            step = int(state.step.assign_add(1))
            window += sums
            epoch_sums += sums
            if step % cfg.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                rate = window[3] / max(now - window_t0, 1e-9)
                done = step - start_step
                eta = (total_steps - step) * (now - t_start) / max(done, 1)
                n = max(window[3], 1.0)
                log.info("scst epoch %d/%d step %d/%d (global %d/%d) reward %.4f baseline %.4f sampled length %.2f "
                         "samples/s %.1f images/s %.1f lr %.2e ETA %s", epoch + 1, cfg.epochs,
                         step - epoch * steps_per_epoch, steps_per_epoch, step, total_steps, window[0] / n,
                         window[1] / n, window[2] / n, rate, rate / K, float(schedule(step - 1)) if callable(schedule)
                         else float(schedule), format_duration(eta))
                if writers:
                    with writers["train"].as_default():
                        scalar_summary("reward", window[0] / n, step)
                        scalar_summary("baseline", window[1] / n, step)
                        scalar_summary("sampled_length", window[2] / n, step)
                        scalar_summary("samples_per_s", rate, step)
                window, window_t0 = np.zeros(4), now
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(f"every {cfg.checkpoint_every} steps")
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                save_checkpoint("--stop-after-steps")
                log.info("stopping at step %d (--stop-after-steps)", step)
                return {"stopped_at_step": step, "resumed_from": start_step}
        seconds = time.perf_counter() - epoch_t0
        n = max(epoch_sums[3], 1.0)
        score, mean_len, val_secs = validate()
        improved = -score < float(state.best_val) - cfg.min_delta
        if improved:
            state.best_val.assign(-score)
            state.bad_epochs.assign(0)
        else:
            state.bad_epochs.assign_add(1)
        state.epoch.assign(epoch + 1)
        record = {"epoch": epoch + 1, "step": int(state.step), "reward": epoch_sums[0] / n,
                  "baseline": epoch_sums[1] / n, "sampled_length": epoch_sums[2] / n, "val_cider": score,
                  "val_length": mean_len, "samples_per_s": epoch_sums[3] / max(seconds, 1e-9), "seconds": seconds}
        log.info("scst epoch %d/%d done in %s: reward %.4f, %s CIDEr-D %.4f (greedy, mean length %.1f, %.1fs)%s",
                 epoch + 1, cfg.epochs, format_duration(seconds), record["reward"], cfg.val_split, score, mean_len,
                 val_secs, " (best: exported)" if improved else
                 f" (no improvement for {int(state.bad_epochs)} epoch(s))")
        if dist.is_chief:
            history.append(record)
            export_epoch_weights(model, model_dir, improved)
            if writers:
                with writers["validation"].as_default():
                    scalar_summary("cider", score, int(state.step))
        epoch += 1
        stopped_by = end_of_epoch_stop(state, cfg.epochs, cfg.early_stopping_patience, epoch)
        save_checkpoint(f"end of epoch {epoch}")
        if dist.is_chief:
            save_history(model_dir, history, {"objective": "scst", "arch": config.arch, "init_from": cfg.init_from,
                                              "samples": K, "baseline": cfg.baseline, "global_images": global_images,
                                              "replicas": dist.replicas, "workers": dist.workers,
                                              "steps_per_epoch": steps_per_epoch, "stopped_by": stopped_by})
        if stopped_by:
            break
    if writers:
        for w in writers.values():
            w.flush()
    summary = {"model_dir": model_dir, "objective": "scst", "arch": config.arch, "step": int(state.step),
               "epochs": int(state.epoch), "best_val_cider": -float(state.best_val), "resumed_from": start_step,
               "worker": dist.worker_index, "weights_sha256": weights_digest(model),
               "seconds": round(time.perf_counter() - t_start, 1), "stopped_by": stopped_by}
    log.info("training finished: %s", json.dumps(summary, sort_keys=True))
    return summary
