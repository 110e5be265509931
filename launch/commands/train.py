"""``captionbeam train``: train a merge / inject / attention captioner with tf.distribute, streaming
the training TFRecords of ``captionbeam captions``. Running the same command again resumes from the
model dir's last checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional

from captionbeam.launch.arg_types import non_negative_float, non_negative_int, positive_float, positive_int, rate, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK

HELP = "train a merge / inject / attention / transformer captioner with tf.distribute, streaming TFRecords"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.model.config import ARCHITECTURES, BASELINES, LR_SCHEDULES, OBJECTIVES, POSITIONS, SELECT_BY, STRATEGIES
    io = parser.add_argument_group("input and output")
    io.add_argument("--data", required=True,
                    help="training data directory from `captionbeam captions --features` (local or gs://): "
                         "vocab.txt, features_spec.json, <split>-NNNNN-of-NNNNN.tfrecord")
    io.add_argument("--model-dir", required=True, type=output_dir,
                    help="model directory (local or gs://): config.json, vocab.txt, features_spec.json, "
                         "best.weights.h5, last.weights.h5, checkpoints/, logs/ (TensorBoard), history.json, "
                         "training_curve.png. An existing one with checkpoints is resumed")
    io.add_argument("--train-split", default="train", help="split to train on (default: train)")
    io.add_argument("--val-split", default="dev",
                    help="split for the validation loss each epoch, early stopping and the best model "
                         "(default: dev; 'none' to train without validation)")

    m = parser.add_argument_group("model (defaults: the classic tutorial's merge model)")
    m.add_argument("--arch", default="merge", choices=ARCHITECTURES,
                   help="merge (tutorial / Tanti et al.), inject (Show and Tell), attention (Show, Attend and "
                        "Tell; needs a spatial feature map), transformer (decoder-only Transformer, cross-attention "
                        "over the map's regions or one region for a vector) (default: merge)")
    m.add_argument("--units", type=positive_int, default=256,
                   help="LSTM / projection units; the transformer's width (default: 256)")
    m.add_argument("--embedding-dim", type=positive_int, default=256, help="word embedding size (default: 256)")
    m.add_argument("--layers", type=positive_int, default=1,
                   help="stacked LSTM layers; transformer blocks (default: 1)")
    m.add_argument("--dropout", type=rate, default=0.5, help="dropout rate (default: 0.5)")
    m.add_argument("--attention-units", type=positive_int, default=256,
                   help="attention MLP width, attention only (default: 256)")
    m.add_argument("--attention-lambda", type=non_negative_float, default=1.0,
                   help="doubly-stochastic attention regularisation weight, attention only (default: 1.0)")
    m.add_argument("--heads", type=positive_int, default=4,
                   help="attention heads, transformer only; must divide --units (default: 4)")
    m.add_argument("--ffn-units", type=non_negative_int, default=0,
                   help="feed-forward width, transformer only; 0 = 4 x --units (default: 0)")
    m.add_argument("--positions", default="learned", choices=POSITIONS,
                   help="caption position encoding, transformer only: learned or sinusoidal (default: learned)")

    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=20, help="maximum epochs (default: 20)")
    t.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="steps per epoch (default: one pass over the training captions at the global batch)")
    t.add_argument("--batch-size", type=positive_int, default=64,
                   help="examples (captions) per replica; global batch = this x replicas (default: 64)")
    t.add_argument("--learning-rate", type=positive_float, default=None,
                   help="Adam learning rate (default: 1e-3; 5e-5 with --objective scst)")
    t.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="constant, cosine (to 1%% over all epochs) or exponential (x --lr-decay-rate per epoch) "
                        "(default: constant)")
    t.add_argument("--lr-decay-rate", type=positive_float, default=0.5,
                   help="exponential schedule: factor per epoch (default: 0.5)")
    t.add_argument("--clip-norm", type=non_negative_float, default=5.0,
                   help="clip the global gradient norm (over all replicas); 0 = off (default: 5.0)")
    t.add_argument("--early-stopping-patience", type=non_negative_int, default=3,
                   help="stop after this many epochs without a better validation loss; 0 = off (default: 3)")
    t.add_argument("--min-delta", type=non_negative_float, default=0.0,
                   help="smallest validation-loss decrease that counts as better (default: 0)")
    t.add_argument("--shuffle-buffer", type=positive_int, default=10000,
                   help="shuffle buffer in examples; bounds memory (default: 10000)")
    t.add_argument("--bucket-by-length", action="store_true",
                   help="batch captions of similar length together (less padding)")
    t.add_argument("--max-val-batches", type=positive_int, default=None,
                   help="validate on at most this many batches (default: the whole split)")
    t.add_argument("--seed", type=int, default=42, help="random seed: weights, dropout, shuffling (default: 42)")
    t.add_argument("--mixed-precision", action="store_true",
                   help="bfloat16 compute with float32 weights (GPU only; an error on CPU)")

    o = parser.add_argument_group("objective and model selection")
    o.add_argument("--objective", default="xent", choices=OBJECTIVES,
                   help="xent: cross-entropy (teacher forcing); scst: self-critical sequence training, REINFORCE "
                        "with the CIDEr-D of sampled captions, fine-tuning --init-from (default: xent)")
    o.add_argument("--init-from", metavar="MODEL_DIR", default="",
                   help="scst: the trained model dir to fine-tune (any architecture; its vocabulary must be --data's)")
    o.add_argument("--samples", type=positive_int, default=5,
                   help="scst: captions sampled per image, K (default: 5); --batch-size counts images with scst")
    o.add_argument("--baseline", default="mean", choices=BASELINES,
                   help="scst: reward baseline: mean of the image's other K-1 samples, or its greedy caption's "
                        "reward (default: mean)")
    o.add_argument("--temperature", type=positive_float, default=1.0,
                   help="scst: sampling temperature (default: 1.0)")
    o.add_argument("--select-by", default="", choices=("",) + SELECT_BY, metavar="{loss,cider}",
                   help="what picks best.weights.h5 and drives early stopping: dev loss, or dev CIDEr-D of greedy "
                        "captions (default: loss; cider with --objective scst)")

    d = parser.add_argument_group("distribution")
    d.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="auto: multiworker when TF_CONFIG names several workers, mirrored with several GPUs or "
                        "--cpu-replicas > 1, else one_device. multiworker reads TF_CONFIG (docs/training.md)")
    d.add_argument("--cpu-replicas", type=positive_int, default=None, metavar="N",
                   help="mirrored on a CPU machine: split the CPU into N >= 1 logical devices, one replica each "
                        "(default: not split)")

    c = parser.add_argument_group("checkpoints and logging")
    c.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="checkpoint every N steps (and at every epoch end); a killed run loses at most N steps "
                        "(default: 500)")
    c.add_argument("--keep-checkpoints", type=positive_int, default=3, help="checkpoints kept (default: 3)")
    c.add_argument("--log-every", type=positive_int, default=50,
                   help="a progress line (loss, tokens/s, ETA) every N steps (default: 50)")
    c.add_argument("--stop-after-steps", type=positive_int, default=None,
                   help="debugging: checkpoint and exit once the global step reaches N (rerun to resume)")
    from captionbeam.pipelines.lease import FORCE_HELP
    c.add_argument("--force", action="store_true", help=FORCE_HELP)


# ModelConfig field -> the dest of its flag
_MODEL_FLAGS = {"arch": "arch", "units": "units", "embedding_dim": "embedding_dim", "num_layers": "layers",
                "dropout": "dropout", "attention_units": "attention_units", "attention_lambda": "attention_lambda",
                "heads": "heads", "ffn_units": "ffn_units", "positions": "positions"}


@dataclass(frozen=True)
class TrainJob:
    """What ``captionbeam train`` runs: how to train, and the architecture (vocabulary size, feature
    shape and encoder are filled from the data)."""
    train: "object"     # model.config.TrainConfig
    model: "object"     # model.config.ModelConfig
    force: bool = False  # take --model-dir's lease from a run that holds it (pipelines.lease)


def config_from_args(args: argparse.Namespace) -> TrainJob:
    from captionbeam.model.config import SCST_LEARNING_RATE, ModelConfig, TrainConfig
    cfg = TrainConfig(
        data=args.data, model_dir=args.model_dir, train_split=args.train_split, val_split=args.val_split,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate or (SCST_LEARNING_RATE if args.objective == "scst" else 1e-3),
        lr_schedule=args.lr_schedule, lr_decay_rate=args.lr_decay_rate,
        clip_norm=args.clip_norm, early_stopping_patience=args.early_stopping_patience, min_delta=args.min_delta,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        shuffle_buffer=args.shuffle_buffer, bucket_by_length=args.bucket_by_length,
        max_val_batches=args.max_val_batches, strategy=args.strategy, cpu_replicas=args.cpu_replicas or 0,
        mixed_precision=args.mixed_precision, seed=args.seed, stop_after_steps=args.stop_after_steps,
        objective=args.objective, init_from=args.init_from, samples=args.samples, baseline=args.baseline,
        temperature=args.temperature, select_by=args.select_by)
    model = ModelConfig(**{field: getattr(args, dest) for field, dest in _MODEL_FLAGS.items()})
    return TrainJob(train=cfg, model=model, force=bool(getattr(args, "force", False)))


def architecture_values(model_config) -> Dict[str, object]:
    """The flag values (by dest) that rebuild ``model_config``'s architecture: for a caller that trains
    a model like an existing one (``retrain``)."""
    return {dest: getattr(model_config, field) for field, dest in _MODEL_FLAGS.items()}


def _is_chief() -> bool:
    """This process writes the model dir (the only one, or TF_CONFIG's chief / worker 0 without a chief)."""
    from captionbeam.model.distribute import tf_config_cluster
    cluster, task = tf_config_cluster()
    if not task:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in (cluster or {}))


@dataclass(frozen=True)
class TrainPlan:
    """The checked training config (``TrainConfig.validate``) and whether this process is the chief, which
    writes --model-dir under its lease."""
    job: TrainJob
    chief: bool = True

    def summary_lines(self) -> List[str]:
        t = self.job.train
        arch = "scst fine-tuning of " + t.init_from if t.objective == "scst" else f"{self.job.model.arch} model"
        return [f"train: {arch} on {t.data} ({t.train_split}) -> {t.model_dir}, up to {t.epochs} epochs, "
                f"batch {t.batch_size}, strategy {t.strategy}" + ("" if self.chief else " (not the chief)")]


def plan(job: TrainJob) -> TrainPlan:
    """Every check of the flags before any work (``TrainConfig.validate``, TF_CONFIG's task);
    :class:`CommandError` naming the flag. The data is checked as the loop opens it."""
    try:
        chief = _is_chief()
        job.train.validate()
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    return TrainPlan(job=job, chief=chief)


@dataclass
class TrainResult:
    """The training loop's summary (``model.loop.run_training``: model_dir, step, epochs, best, seconds, ...)."""
    summary: Dict[str, object]

    def summary_lines(self) -> List[str]:
        s = self.summary
        best = next(((k, s[k]) for k in ("best_val_loss", "best_val_cider") if k in s), None)
        return [f"trained to step {s.get('step')} ({s.get('epochs')} epochs) -> {s.get('model_dir')}"
                + (f", {best[0]} {best[1]}" if best and best[1] is not None else "")
                + (f", stopped by {s['stopped_by']}" if s.get("stopped_by") else "")]

    def losses_line(self) -> str:
        """Cross-entropy training's losses in one line (``run``'s train stage), or "" without them."""
        s = self.summary
        first, last = s.get("first_train_loss"), s.get("final_train_loss")
        if first is None or last is None:
            return ""
        val, best = s.get("first_val_loss"), s.get("best_val_loss")
        return (f"{s.get('epochs')} epochs, loss {first:.3f} -> {last:.3f}"
                + (f", val_loss {val:.3f} -> {best:.3f} (best)" if val is not None and best is not None else ""))


def run(job: TrainJob, planned: Optional[TrainPlan] = None) -> TrainResult:
    """Train (or resume) under --model-dir's lease (the chief holds it; two runs into one model dir would
    leave the config of one and the weights of the other) -> :class:`TrainResult`; :class:`CommandError`
    on bad inputs."""
    from contextlib import nullcontext
    from captionbeam.pipelines.lease import output_lease
    p = planned or plan(job)
    lease = output_lease(job.train.model_dir, "train", job.force, flag="--model-dir") if p.chief else nullcontext()
    with lease:
        return TrainResult(_run(job))


def _run(job: TrainJob) -> Dict[str, object]:
    try:
        if job.train.objective == "scst":
            from captionbeam.model.scst import train_scst
            return train_scst(job.train)
        from captionbeam.model.train import train
        return train(job.train, job.model)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None


def main(args, runner=None) -> int:
    """Trains; the loop prints its progress and summary lines as it goes (``model/loop.py``)."""
    run(config_from_args(args))
    return OK
