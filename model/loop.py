"""The one training loop: tf.distribute (one device / mirrored / multi-worker), the model dir's files,
checkpoints with resume, ``--stop-after-steps``, progress lines and TensorBoard, validation each epoch,
best / last weight export, early stopping, ``history.json`` and the summary.

An :class:`Objective` supplies only what differs between objectives (cross-entropy in
``model.train``, self-critical in ``model.scst``): the model config, the input stream, the per-replica
step (it calls :meth:`Run.apply_gradients`) and the end-of-epoch validation.

``Model.fit`` fails under MultiWorkerMirroredStrategy with Keras 3 on TF 2.21, so the step is run with
``strategy.run`` + ``strategy.reduce``. Keras' optimizer sums gradients across replicas; global-norm
clipping must see the summed gradient, so with ``--clip-norm`` the step all-reduces, clips, and hands
the optimizer the clipped sum divided by the replica count (it sums them back).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from captionbeam.model.progress import Curve

log = logging.getLogger("captionbeam.train")


@dataclass(frozen=True)
class EpochResult:
    """An objective's end of epoch: ``record`` goes into ``history.json`` (after epoch and step),
    ``monitored`` picks the best weights (lower is better), ``text`` goes into the epoch's log line,
    ``scalars`` ((writer, name) -> value) into TensorBoard at the epoch's last step."""
    record: Dict[str, object]
    monitored: float
    text: str
    scalars: Dict[Tuple[str, str], float] = field(default_factory=dict)


class Objective:
    """What an objective supplies to :func:`run_training`; see ``model.train.CrossEntropy``."""
    name = ""                   # the --objective value
    log_prefix = ""             # before "epoch ..." in progress lines
    batch_unit = "examples"     # what --batch-size counts: a SplitInfo field (examples | images)
    history_head = 0            # history.json entries before epoch 1 (scst: the init model, epoch 0)
    curve: Optional[Curve] = None     # what training_curve.png plots (model.progress.Curve; None: no curve)
    mixed_precision = True      # whether --mixed-precision is allowed

    def model_config(self, cfg, info, train_split, val_split):
        """The validated ``ModelConfig`` to train."""
        raise NotImplementedError

    def prepare(self, run: "Run") -> str:
        """Set up with the built model (``run.model``); returns the data line to log."""
        raise NotImplementedError

    def fresh_start(self, run: "Run") -> str:
        """No checkpoint: initialise; returns where from (logged as "starting <it>")."""
        return "from scratch"

    def start(self, run: "Run", restored: Optional[str]) -> None:
        """Before the first step of this process."""

    def dataset(self, run: "Run", epoch: int, batch_size: int, num_pipelines: int, pipeline_index: int,
                skip_batches: int):
        raise NotImplementedError

    def replica_step(self, batch, step) -> Sequence:
        """One replica's step (calls ``run.apply_gradients``); returns per-replica sums (reduced by SUM)."""
        raise NotImplementedError

    def progress(self, sums: np.ndarray, seconds: float) -> Tuple[str, Dict[str, float]]:
        """A progress window's sums -> (text for the log line, TensorBoard train scalars)."""
        raise NotImplementedError

    def end_epoch(self, run: "Run", epoch: int, sums: np.ndarray, seconds: float) -> EpochResult:
        raise NotImplementedError

    def history_meta(self, run: "Run") -> Dict[str, object]:
        return {}

    def summary(self, run: "Run") -> Dict[str, object]:
        return {}


def lr_schedule(cfg, steps_per_epoch: int):
    import keras
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch,
                                                      alpha=0.01)
    return keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=steps_per_epoch,
                                                       decay_rate=cfg.lr_decay_rate, staircase=True)


def check_resumable(model_dir: str, config) -> None:
    """A model dir that already holds a different model cannot be resumed into."""
    import tensorflow as tf
    from captionbeam.model.config import CONFIG_FILE, ModelConfig
    if not tf.io.gfile.exists(f"{model_dir.rstrip('/')}/{CONFIG_FILE}"):
        return
    old, new = ModelConfig.load(model_dir).architecture_fields(), config.architecture_fields()
    if old != new:
        diff = {k: (v, new[k]) for k, v in old.items() if new[k] != v}
        raise ValueError(f"--model-dir {model_dir} holds a different model (saved vs requested: {diff}); "
                         f"use a new --model-dir to train this one")


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in model.weights:
        h.update(np.ascontiguousarray(np.asarray(v.numpy(), np.float32)).tobytes())
    return h.hexdigest()[:16]


def write_model_files(model_dir: str, config, cfg, info) -> None:
    """The chief's model dir files before training: config.json, train_config.json, vocab.txt,
    features_spec.json (a model-file encoder is copied into the model dir)."""
    import tensorflow as tf
    from captionbeam.model.config import TRAIN_CONFIG_FILE
    from captionbeam.model.integrity import bundle_encoder
    tf.io.gfile.makedirs(model_dir)
    spec = bundle_encoder(info.features_spec, model_dir)
    config.save(model_dir)
    from captionbeam.model import gfile
    gfile.write_text(f"{model_dir}/{TRAIN_CONFIG_FILE}", cfg.to_json())   # committed atomically
    info.vocab.save(f"{model_dir}/vocab.txt")
    spec.save(model_dir)


class Run:
    """One training run's state, shared by the loop and its objective."""

    def __init__(self, cfg, objective: Objective, dist, info, train_split, val_split, config):
        self.cfg, self.objective, self.dist, self.info = cfg, objective, dist, info
        self.train_split, self.val_split, self.config = train_split, val_split, config
        self.model_dir = cfg.model_dir.rstrip("/")
        self.global_batch = cfg.batch_size * dist.replicas
        self.steps_per_epoch = cfg.steps_per_epoch or max(
            1, getattr(train_split, objective.batch_unit) // self.global_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.schedule = lr_schedule(cfg, self.steps_per_epoch)
        self.history: List[Dict[str, object]] = []
        self.first_sums: Optional[np.ndarray] = None   # this process's first step
        self.model = self.optimizer = self.state = self.ckpt = None
        self.dev_cider = None     # model.selection.SplitCider of the validation split with --select-by cider

    def current_lr(self, step: int) -> float:
        return float(self.schedule(step)) if callable(self.schedule) else float(self.schedule)

    def apply_gradients(self, tape, objective) -> None:
        """In a replica: the gradients of ``objective`` (clipped by global norm over every replica's sum
        with ``--clip-norm``) to the optimizer."""
        import tensorflow as tf
        variables = self.model.trainable_variables
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)]
        if self.cfg.clip_norm > 0:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, self.cfg.clip_norm)
            grads = [g / self.dist.replicas for g in grads]
        self.optimizer.apply_gradients(zip(grads, variables))

    def save_checkpoint(self, reason: str) -> None:
        path = self.ckpt.save(int(self.state.step))
        if self.dist.is_chief:
            log.info("checkpoint %s (%s)", path, reason)

    def save_history(self, stopped_by: Optional[str] = None) -> None:
        from captionbeam.model.progress import save_history
        meta = {"arch": self.config.arch, **self.objective.history_meta(self), "replicas": self.dist.replicas,
                "workers": self.dist.workers, "steps_per_epoch": self.steps_per_epoch, "stopped_by": stopped_by}
        save_history(self.model_dir, self.history, meta)


def run_training(cfg, objective: Objective) -> Dict[str, object]:
    """Train (or resume) ``cfg.model_dir`` with ``objective``. Returns a summary dict (also logged), or
    ``{"stopped_at_step", "resumed_from"}`` after ``--stop-after-steps``."""
    from captionbeam.model.distribute import make_strategy
    dist = make_strategy(cfg.strategy, cfg.cpu_replicas)     # first: logical CPUs before TF initialises devices

    import keras
    import tensorflow as tf
    from captionbeam.model import data as data_lib
    from captionbeam.model.architectures import build_model
    from captionbeam.model.checkpoints import Checkpointer, TrainingState, end_of_epoch_stop, epoch_to_resume, \
        export_epoch_weights
    from captionbeam.model.progress import format_duration, load_history, plot_curve, progress_due, scalar_summary

    if cfg.mixed_precision and not objective.mixed_precision:
        raise ValueError(f"--mixed-precision: not supported with --objective {objective.name}")
    if cfg.mixed_precision and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--mixed-precision needs a GPU (bfloat16 compute on CPU is slower, not faster)")
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
    config = objective.model_config(cfg, info, train_split, val_split)
    run = Run(cfg, objective, dist, info, train_split, val_split, config)
    model_dir = run.model_dir
    check_resumable(model_dir, config)
    if dist.workers > 1 and len(train_split.files) < dist.workers:
        log.warning("%d training file(s) for %d workers: every worker reads every file (sharding by example)",
                    len(train_split.files), dist.workers)

    by_cider = cfg.selection == "cider"
    with dist.strategy.scope():
        run.model = build_model(config, dtype_policy="mixed_bfloat16" if cfg.mixed_precision else None)
        run.optimizer = keras.optimizers.Adam(run.schedule)
        run.optimizer.build(run.model.trainable_variables)
    state = run.state = TrainingState.create()
    run.ckpt = Checkpointer(model_dir, run.model, run.optimizer, state, dist.is_chief, dist.worker_index,
                            cfg.keep_checkpoints)
    if by_cider and val_split is not None:       # greedy dev CIDEr-D: the validation that picks the best weights
        from captionbeam.model.selection import SplitCider
        batch = max(run.global_batch, 64)
        run.dev_cider = SplitCider(run.model, val_split.files, info.feature_shape, batch_size=batch,
                                   max_images=cfg.max_val_batches * batch if cfg.max_val_batches else None)
    log.info("%s", objective.prepare(run))
    restored = run.ckpt.restore()
    if restored:
        log.info("resumed from %s: step %d, %d epoch(s) done, best %s %.4f", restored, int(state.step),
                 int(state.epoch), "dev CIDEr-D" if by_cider else "val loss",
                 -float(state.best_val) if by_cider else float(state.best_val))
    else:
        log.info("starting %s (no checkpoint in %s)", objective.fresh_start(run), run.ckpt.directory)
    if dist.is_chief:
        write_model_files(model_dir, config, cfg, info)
        run.history = load_history(model_dir)[: int(state.epoch) + objective.history_head]
    writers = ({k: tf.summary.create_file_writer(f"{model_dir}/logs/{k}") for k in ("train", "validation")}
               if dist.is_chief else None)
    objective.start(run, restored)

    @tf.function
    def train_step(iterator, step):
        out = dist.strategy.run(objective.replica_step, args=(next(iterator), step))
        return [dist.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

    def dataset_for_epoch(epoch: int, skip_steps: int):
        def fn(input_context: tf.distribute.InputContext):
            per_pipeline = dist.replicas // input_context.num_input_pipelines   # batches one step takes
            return objective.dataset(run, epoch, input_context.get_per_replica_batch_size(run.global_batch),
                                     input_context.num_input_pipelines, input_context.input_pipeline_id,
                                     skip_steps * per_pipeline)
        return dist.strategy.distribute_datasets_from_function(fn)

    start_step = int(state.step)
    stopped_by = None
    t_start = window_t0 = time.perf_counter()
    window = None
    spe = run.steps_per_epoch
    epoch = epoch_to_resume(state, cfg.epochs, cfg.early_stopping_patience, model_dir,
                            what=objective.log_prefix.strip() or "training")
    while epoch < cfg.epochs:
        done_in_epoch = max(0, int(state.step) - epoch * spe)
        iterator = iter(dataset_for_epoch(epoch, done_in_epoch))
        epoch_t0, epoch_sums = time.perf_counter(), None
        for _ in range(done_in_epoch, spe):
            sums = np.array([float(v) for v in train_step(iterator, tf.constant(int(state.step), tf.int64))])
            step = int(state.step.assign_add(1))
            if run.first_sums is None:
                run.first_sums = sums
            window = sums if window is None else window + sums
            epoch_sums = sums if epoch_sums is None else epoch_sums + sums
            if progress_due(step, start_step, run.total_steps, cfg.log_every, time.perf_counter() - window_t0):
                now = time.perf_counter()
                text, scalars = objective.progress(window, now - window_t0)
                lr = run.current_lr(step - 1)
                eta = (run.total_steps - step) * (now - t_start) / max(step - start_step, 1)
                log.info("%sepoch %d/%d step %d/%d (global %d/%d) %s lr %.2e ETA %s", objective.log_prefix,
                         epoch + 1, cfg.epochs, step - epoch * spe, spe, step, run.total_steps, text, lr,
                         format_duration(eta))
                if writers:
                    with writers["train"].as_default():
                        for name, value in {**scalars, "learning_rate": lr}.items():
                            scalar_summary(name, value, step)
                window, window_t0 = None, now
            if step % cfg.checkpoint_every == 0:
                run.save_checkpoint(f"every {cfg.checkpoint_every} steps")
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                run.save_checkpoint("--stop-after-steps")
                log.info("stopping at step %d (--stop-after-steps)", step)
                return {"stopped_at_step": step, "resumed_from": start_step}
        seconds = time.perf_counter() - epoch_t0
        result = objective.end_epoch(run, epoch, epoch_sums, seconds)
        improved = result.monitored < float(state.best_val) - cfg.min_delta
        if improved:
            state.best_val.assign(result.monitored)
            state.bad_epochs.assign(0)
        else:
            state.bad_epochs.assign_add(1)
        state.epoch.assign(epoch + 1)
        log.info("%sepoch %d/%d done in %s: %s%s", objective.log_prefix, epoch + 1, cfg.epochs,
                 format_duration(seconds), result.text, " (best: exported)" if improved else
                 f" (no improvement for {int(state.bad_epochs)} epoch(s))")
        if dist.is_chief:
            run.history.append({"epoch": epoch + 1, "step": int(state.step), **result.record})
            export_epoch_weights(run.model, model_dir, improved)
            for (writer, name), value in result.scalars.items():
                with writers[writer].as_default():
                    scalar_summary(name, value, int(state.step))
        epoch += 1
        stopped_by = end_of_epoch_stop(state, cfg.epochs, cfg.early_stopping_patience, epoch)
        run.save_checkpoint(f"end of epoch {epoch}")
        if dist.is_chief:
            run.save_history(stopped_by)
            if objective.curve:
                plot_curve(model_dir, run.history, objective.curve, config.arch)
        if stopped_by:
            break
    if writers:
        for w in writers.values():
            w.flush()
    best = -float(state.best_val) if by_cider else float(state.best_val)
    summary = {"model_dir": model_dir, **objective.summary(run), "arch": config.arch, "step": int(state.step),
               "epochs": int(state.epoch), "best_val_cider" if by_cider else "best_val_loss": best,
               "resumed_from": start_step, "worker": dist.worker_index, "weights_sha256": weights_digest(run.model),
               "seconds": round(time.perf_counter() - t_start, 1), "stopped_by": stopped_by}
    log.info("training finished: %s", json.dumps(summary, sort_keys=True))
    return summary
