"""ModelHandlers for Beam's ``RunInference``.

:class:`EncoderModelHandler` runs a :mod:`model.encoders` encoder on batches of decoded uint8 images
(``(size, size, 3)`` arrays) and returns one float32 feature array per image. Wrap it in Beam's
``KeyedModelHandler`` (see :func:`keyed_encoder_handler`) to carry each image's key (id, path,
sha256) through inference.

Model sharing: by default ``RunInference`` loads the model once per worker *process* through Beam's
``shared.Shared`` handle, and every DoFn thread of that process uses that one copy (Keras models and
the traced ``tf.function`` are safe to call from several threads; the TFLite encoder serialises its
interpreter with a lock). With ``model_copies=N`` the handler asks Beam to share N copies across all
processes of a worker machine instead (``share_model_across_processes``), which is what one wants for a
GPU or a very large model on a many-process worker (e.g. Dataflow with one SDK process per vCPU).

Batching and model sharing are Beam's own ``ModelHandler`` constructor arguments (``min_batch_size`` =
``max_batch_size`` = ``batch_size``: ``BatchElements`` emits batches of exactly ``batch_size`` images, the
last of a bundle may be smaller; ``model_copies``), read back through Beam's public
``batch_elements_kwargs()`` / ``share_model_across_processes()`` / ``model_copies()``.

Beam's ``TFModelHandlerTensor`` cannot load Keras 3 models, hence this handler.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler

from captionbeam.model.encoder_description import EncoderDescription
from captionbeam.model.encoders import Encoder, build_described
from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.isolation import InferenceFailure, run_isolated

log = logging.getLogger(__name__)


class EncoderModelHandler(ModelHandler[np.ndarray, np.ndarray, Encoder]):
    """uint8 image ``(size, size, 3)`` -> float32 features ``feature_shape``, or an
    :class:`~pipelines.isolation.InferenceFailure` for an image the encoder fails on alone (the one
    failure policy: a failing batch is retried image by image)."""

    def __init__(self, description: EncoderDescription, batch_size: int = 32, model_copies: Optional[int] = None,
                 namespace: str = NAMESPACE):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies)
        self.description = description
        self.batch_size = batch_size
        self.namespace = namespace

    def load_model(self) -> Encoder:
        start = time.time()
        encoder = build_described(self.description)
        log.info("loaded encoder %s (%s weights, %dpx, features %s) in %.1f s", encoder.name, self.description.weights,
                 encoder.image_size, encoder.feature_shape, time.time() - start)
        return encoder

    def run_inference(self, batch: Sequence[np.ndarray], model: Encoder,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[np.ndarray]:
        def encode(images):
            return [np.asarray(f, np.float32) for f in model.encode(np.stack([np.asarray(x, np.uint8) for x in images]))]
        return run_isolated(batch, encode, lambda _, e: InferenceFailure.from_exception(e), "features")

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return self.namespace

    def __repr__(self) -> str:
        return f"EncoderModelHandler({self.description}, batch_size={self.batch_size})"


def keyed_encoder_handler(description: EncoderDescription, batch_size: int = 32, model_copies: Optional[int] = None
                          ) -> KeyedModelHandler:
    """``(key, uint8 image)`` -> ``(key, float32 features)``; workers build the encoder from its
    description (``model.encoders.build_described``), as everything later does."""
    return KeyedModelHandler(EncoderModelHandler(description, batch_size, model_copies))
