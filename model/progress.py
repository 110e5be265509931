"""Training progress helpers (the loop in ``model.loop`` writes the lines): durations, TensorBoard scalars,
``history.json`` and the training-curve PNG."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import tensorflow as tf

from captionbeam.model import gfile

log = logging.getLogger("captionbeam.train")
HISTORY_FILE = "history.json"
CURVE_FILE = "training_curve.png"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


MAX_SILENCE_S = 10.0   # a training run logs a progress line at least this often


def progress_due(step: int, start_step: int, total_steps: int, every: int, since_last_s: float,
                 max_silence_s: float = MAX_SILENCE_S) -> bool:
    """Whether step ``step`` gets a progress line: every ``every`` steps, the last step, the run's first
    step (a run shows it is alive within seconds, before its first epoch ends) and whenever
    ``max_silence_s`` passed since the previous line."""
    return (step % every == 0 or step == total_steps or step == start_step + 1 or since_last_s >= max_silence_s)


def scalar_summary(name: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without the ``tensorboard`` package (tensorflow-cpu does not ship it):
    the same event record (plugin ``scalars``), written with core TF ops, that TensorBoard reads."""
    from tensorflow.core.framework import summary_pb2
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)


def load_history(model_dir: str) -> List[Dict[str, float]]:
    history = gfile.read_json(gfile.join(model_dir, HISTORY_FILE))
    return history.get("epochs", []) if history else []


def save_history(model_dir: str, epochs: List[Dict[str, float]], extra: Dict[str, object]) -> None:
    gfile.write_json(gfile.join(model_dir, HISTORY_FILE), {"epochs": epochs, **extra})


@dataclass(frozen=True)
class Curve:
    """What ``training_curve.png`` plots per epoch: a train and a validation value from ``history.json``
    (entries without one are skipped: SCST's epoch 0 has only the init model's validation)."""
    title: str                                  # "{arch}" is filled in
    train_key: str = "train_loss"
    val_key: str = "val_loss"
    ylabel: str = "cross-entropy per token"
    higher_is_better: bool = False              # where the "best" marker goes
    train_label: str = "train"                  # the legend says what each line measures
    val_label: str = "validation"


def plot_curve(model_dir: str, epochs: List[Dict[str, float]], curve: Curve, arch: str = "") -> Optional[str]:
    """The objective's train / validation values per epoch as a PNG (matplotlib, Agg); None when matplotlib
    is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install 'captionbeam[report]'): no training curve")
        return None
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    trains = [(e["epoch"], e[curve.train_key]) for e in epochs if e.get(curve.train_key) is not None]
    if trains:
        ax.plot([t[0] for t in trains], [t[1] for t in trains], "o-", label=curve.train_label)
    vals = [(e["epoch"], e[curve.val_key]) for e in epochs if e.get(curve.val_key) is not None]
    if vals:
        ax.plot([v[0] for v in vals], [v[1] for v in vals], "s-", label=curve.val_label)
        best = (max if curve.higher_is_better else min)(vals, key=lambda v: v[1])
        ax.axvline(best[0], color="gray", ls=":", label=f"best (epoch {best[0]})")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(curve.ylabel)
    ax.set_title(curve.title.format(arch=arch))
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = f"{model_dir.rstrip('/')}/{CURVE_FILE}"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())
    return path
