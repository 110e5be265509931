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

import logging
import time
from typing import Dict, List

import numpy as np

from captionbeam.model.loop import EpochResult, Objective, run_training
from captionbeam.model.progress import Curve

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


def sample_and_reward(model, batch, step, cfg, max_length: int, rewards):
    """In a replica: ``--samples`` K captions per image of ``batch`` (multinomial at ``--temperature``,
    seeded by (seed, step, replica)), their CIDEr-D rewards and baselines (``reward_function``)
    -> (features [B*K, ...], tokens [B*K, T], lengths [B*K], rewards [B*K], baselines [B*K])."""
    import tensorflow as tf
    from captionbeam.model.decode import greedy_search, sample_search
    ctx = tf.distribute.get_replica_context()
    features = tf.repeat(batch["feature"], int(cfg.samples), axis=0)
    seed = tf.stack([tf.cast(cfg.seed, tf.int64), step * 4096 + tf.cast(ctx.replica_id_in_sync_group, tf.int64)])
    sampled = sample_search(model, features, max_length, seed, float(cfg.temperature))
    tokens, lengths = sampled["tokens"], sampled["length"]
    g = greedy_search(model, batch["feature"], max_length) if cfg.baseline == "greedy" else \
        {"tokens": tf.zeros([1, 1], tf.int32), "length": tf.zeros([1], tf.int32)}
    reward, base = tf.numpy_function(rewards, [tokens, lengths, batch["refs"], g["tokens"], g["length"]],
                                     [tf.float32, tf.float32], stateful=False)
    reward.set_shape([None])
    base.set_shape([None])
    return features, tokens, lengths, reward, base


class SelfCritical(Objective):
    name, log_prefix, batch_unit, history_head, mixed_precision = "scst", "scst ", "images", 1, False
    curve = Curve("captionbeam {arch}: self-critical training", train_key="reward", val_key="val_cider",
                  ylabel="CIDEr-D", higher_is_better=True,
                  train_label="train: mean sampled reward", val_label="validation: greedy captions")

    def model_config(self, cfg, info, train_split, val_split):
        if val_split is None:
            raise ValueError("--val-split none: self-critical training selects by dev CIDEr-D on a validation split")
        config, self.init_weights = load_init(cfg.init_from, info)
        if cfg.model_dir.rstrip("/") == cfg.init_from.rstrip("/"):
            raise ValueError("--model-dir must differ from --init-from (SCST writes a new model dir)")
        return config

    def prepare(self, run):
        from captionbeam.model.decode import token_mask, default_max_length
        self.run, cfg, split, val = run, run.cfg, run.train_split, run.val_split
        scorer, ref_images = training_scorer(split.files, run.info.feature_shape, run.config.vocab_size)
        self.rewards = reward_function(scorer, cfg.samples, cfg.baseline)
        self.token_mask, self.max_length = token_mask(run.config.vocab_size), default_max_length(run.config)
        return (f"scst: {run.config.arch} model from {cfg.init_from}; data {cfg.data}: {split.images} train images "
                f"({ref_images} reference sets for CIDEr-D document frequencies), {val.images} {cfg.val_split} images;"
                f" {cfg.samples} samples per image at temperature {cfg.temperature:g}, baseline {cfg.baseline}; "
                f"global batch {run.global_batch} images = {cfg.batch_size} per replica x {run.dist.replicas} "
                f"({run.global_batch * cfg.samples} samples); {run.steps_per_epoch} steps/epoch")

    def fresh_start(self, run):
        from captionbeam.model.checkpoints import load_weights
        load_weights(run.model, self.init_weights)
        return f"from {self.init_weights}"

    def start(self, run, restored):
        """A fresh run measures the init model first: epoch 0 in history.json, the first best weights."""
        if restored:
            return
        from captionbeam.model.checkpoints import export_weights
        from captionbeam.model.model_dir import BEST_WEIGHTS
        score, mean_len, secs = self.validate()
        run.state.best_val.assign(-score)
        log.info("init model %s: %s CIDEr-D %.4f (greedy, %d images, mean length %.1f, %.1fs)", run.cfg.init_from,
                 run.cfg.val_split, score, run.dev_cider.images, mean_len, secs)
        if run.dist.is_chief:
            run.history = [{"epoch": 0, "step": 0, "val_cider": score, "val_length": mean_len}]
            export_weights(run.model, f"{run.model_dir}/{BEST_WEIGHTS}")
            run.save_history()
        run.save_checkpoint("initial weights")

    def dataset(self, run, epoch, batch_size, num_pipelines, pipeline_index, skip_batches):
        from captionbeam.model.data import image_dataset
        return image_dataset(run.train_split.files, run.info.feature_shape, batch_size,
                             seed=run.cfg.seed * 100003 + epoch, shuffle_buffer=min(run.cfg.shuffle_buffer, 2000),
                             num_pipelines=num_pipelines, pipeline_index=pipeline_index, skip_batches=skip_batches)

    def replica_step(self, batch, step):
        import tensorflow as tf
        from captionbeam.model.vocab import START_ID
        cfg, model, K = self.run.cfg, self.run.model, int(self.run.cfg.samples)
        features, tokens, lengths, reward, base = sample_and_reward(model, batch, step, cfg, self.max_length,
                                                                    self.rewards)
        advantage = tf.stop_gradient(reward - base)
        inputs = tf.concat([tf.fill([tf.shape(tokens)[0], 1], START_ID), tokens[:, :-1]], axis=1)
        mask = tf.sequence_mask(lengths, tf.shape(tokens)[1], tf.float32)
        with tf.GradientTape() as tape:
            logits, _ = model.forward(features, inputs, training=False)
            logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) / float(cfg.temperature) + self.token_mask, axis=-1)
            token_lp = tf.gather(logp, tokens, batch_dims=2) * mask                    # [B*K, T]
            objective = -tf.reduce_sum(advantage * tf.reduce_sum(token_lp, 1)) / float(self.run.global_batch * K)
        self.run.apply_gradients(tape, objective)
        n = tf.cast(tf.size(reward), tf.float32)
        return tf.reduce_sum(reward), tf.reduce_sum(base), tf.reduce_sum(tf.cast(lengths, tf.float32)), n

    def progress(self, sums, seconds):
        n, rate = max(sums[3], 1.0), sums[3] / max(seconds, 1e-9)
        text = (f"reward {sums[0] / n:.4f} baseline {sums[1] / n:.4f} sampled length {sums[2] / n:.2f} "
                f"samples/s {rate:.1f} images/s {rate / self.run.cfg.samples:.1f}")
        return text, {"reward": sums[0] / n, "baseline": sums[1] / n, "sampled_length": sums[2] / n,
                      "samples_per_s": rate}

    def validate(self):
        t0 = time.perf_counter()
        score, hyps = self.run.dev_cider()
        return score, float(np.mean([len(h) for h in hyps])) if hyps else 0.0, time.perf_counter() - t0

    def end_epoch(self, run, epoch, sums, seconds):
        sums = sums if sums is not None else np.zeros(4)
        n = max(sums[3], 1.0)
        score, mean_len, val_secs = self.validate()
        record = {"reward": sums[0] / n, "baseline": sums[1] / n, "sampled_length": sums[2] / n, "val_cider": score,
                  "val_length": mean_len, "samples_per_s": sums[3] / max(seconds, 1e-9), "seconds": seconds}
        text = (f"reward {record['reward']:.4f}, {run.cfg.val_split} CIDEr-D {score:.4f} (greedy, mean length "
                f"{mean_len:.1f}, {val_secs:.1f}s)")
        return EpochResult(record, -score, text, {("validation", "cider"): score})

    def history_meta(self, run):
        return {"objective": "scst", "init_from": run.cfg.init_from, "samples": run.cfg.samples,
                "baseline": run.cfg.baseline, "global_images": run.global_batch}

    def summary(self, run):
        return {"objective": "scst"}


def train_scst(cfg) -> Dict[str, object]:
    """SCST fine-tuning of ``cfg.init_from`` into ``cfg.model_dir`` (or resume it). Returns a summary."""
    cfg.validate()
    return run_training(cfg, SelfCritical())
