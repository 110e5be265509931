"""Loading a trained model directory (``captionbeam train --model-dir M``) for decoding, export and
bulk captioning.

``M/config.json`` (``ModelConfig``: architecture, sizes, vocab size, max caption length, encoder name,
weights, image size and preprocessing), ``M/vocab.txt``, ``M/features_spec.json``,
``M/best.weights.h5`` (lowest validation loss) and ``M/last.weights.h5`` (end of the latest epoch),
``M/checkpoints/``, ``M/logs/`` (TensorBoard), ``M/history.json``, ``M/training_curve.png``.
``M`` may be local or ``gs://`` (tf.io.gfile).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional, Tuple

import tensorflow as tf

from captionbeam.model import records
from captionbeam.model.architectures import CaptionModel, build_model
from captionbeam.model.config import ModelConfig
from captionbeam.model.integrity import check_file
from captionbeam.model.vocab import VOCAB_FILE, Vocabulary

log = logging.getLogger("captionbeam.model")
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"


def weights_path(model_dir: str, which: str = "best") -> str:
    """Path of the ``best`` (falls back to ``last`` when there was no validation) or ``last`` weights."""
    base = model_dir.rstrip("/")
    names = {"best": [BEST_WEIGHTS, LAST_WEIGHTS], "last": [LAST_WEIGHTS]}[which]
    for name in names:
        if tf.io.gfile.exists(f"{base}/{name}"):
            if name != names[0]:
                log.warning("%s/%s not found (no validation improved on the first epoch, or the file was "
                            "removed): using %s/%s (the weights at the end of the last epoch) instead",
                            base, names[0], base, name)
            return f"{base}/{name}"
    raise FileNotFoundError(f"no {which} weights in {model_dir} (expected {names[0]}; is training finished "
                            f"with at least one epoch?)")


def load_trained(model_dir: str, which: str = "best", dtype_policy: Optional[str] = None,
                 weights_file: Optional[str] = None
                 ) -> Tuple[CaptionModel, ModelConfig, Vocabulary, records.FeaturesSpec]:
    """config + vocabulary + weights -> (ready CaptionModel, ModelConfig, Vocabulary, FeaturesSpec)."""
    config = ModelConfig.load(model_dir)
    vocab_path = f"{model_dir.rstrip('/')}/{VOCAB_FILE}"
    vocab = Vocabulary.load(vocab_path)
    check_file(vocab_path, config.vocab_sha256, "vocabulary")
    spec = records.FeaturesSpec.load(model_dir)
    if len(vocab) != config.vocab_size:
        raise ValueError(f"{model_dir}: vocab.txt has {len(vocab)} tokens but config.json says {config.vocab_size}")
    model = build_model(config, dtype_policy=dtype_policy)
    path = weights_file or weights_path(model_dir, which)
    if "://" in path:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, os.path.basename(path))
            tf.io.gfile.copy(path, local)
            model.load_weights(local)
    else:
        model.load_weights(path)
    return model, config, vocab, spec
