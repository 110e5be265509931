"""RunInference ModelHandler of the bulk job: encoder and decoder together, one batched call.

``load_model()`` returns :class:`model.captioner.Captioner` (CNN encoder + caption decoder, greedy
or beam search, batched inside compiled TensorFlow functions). ``run_inference`` captions a batch
of decoded images and returns one output row per image.

How many models per worker
--------------------------
By default RunInference keeps **one model per worker process**, shared by all of that process's
threads through Beam's ``shared.Shared`` handle: the right default for this model family (tens of
MB; TensorFlow runs a batch on all cores or on the GPU by itself; no pickling between processes).
With ``model_copies=N`` (``--model-copies``) the handler turns on Beam's
``share_model_across_processes()``: Beam's ``multi_process_shared`` loads exactly N copies per
*machine*, served to every SDK process of the worker. Use it on a GPU worker that runs several SDK
processes (Dataflow starts one per vCPU) so they do not each put a model on the one GPU; the price
is that every batch crosses a process boundary.

GPU: TensorFlow places the model on the worker's GPU when it has one (a GPU worker image with
``tensorflow[and-cuda]``, the ``gpu`` extra). ``load_model`` turns on memory growth so that several
processes can share a GPU instead of the first one taking all of its memory.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipelines.deadletter import DeadLetter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionerConfig:
    """What a worker needs to load the captioner (pickled into the pipeline)."""
    model_dir: str
    beam_size: int = 1
    max_length: Optional[int] = None
    batch_size: int = 32
    model_copies: Optional[int] = None  # None: one model per process; N: N per machine, shared

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"--beam-size must be >= 1, got {self.beam_size}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max-length must be >= 1, got {self.max_length}")
        if self.model_copies is not None and self.model_copies < 1:
            raise ValueError(f"--model-copies must be >= 1, got {self.model_copies}")


@dataclass(frozen=True)
class ImageToCaption:
    """One decoded image on its way to the model: pixels are uint8 HxWx3 RGB at the encoder's size."""
    path: str
    image_id: str
    sha256: str
    pixels: np.ndarray


def caption_row(item: ImageToCaption, result, model_version: str, encoder: str) -> Dict[str, Any]:
    """The bulk job's output row for one image."""
    return {
        "path": item.path,
        "image_id": item.image_id,
        "sha256": item.sha256,
        "caption": result.caption,
        "log_prob": float(result.log_prob),
        "model_version": model_version,
        "encoder": encoder,
    }


def _enable_gpu_memory_growth() -> None:
    try:
        import tensorflow as tf
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except (RuntimeError, ValueError) as e:  # already initialised: nothing to change
        log.debug("GPU memory growth not set: %s", e)


class _Progress:
    """Per-process progress log: images captioned and images/s, at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 15.0):
        self.every_s = every_s
        self.lock = threading.Lock()
        self.start = None
        self.last = 0.0
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.start is None:
                self.start = self.last = now
            self.count += n
            if now - self.last >= self.every_s:
                self.last = now
                rate = self.count / max(now - self.start, 1e-9)
                log.info("bulk: this worker captioned %d images, %.1f images/s", self.count, rate)


class CaptionerModelHandler(ModelHandler[ImageToCaption, Dict[str, Any], Any]):
    """RunInference handler: ``ImageToCaption`` in, output row (dict) out; batches of up to
    ``config.batch_size`` images."""

    def __init__(self, config: CaptionerConfig):
        super().__init__(min_batch_size=1, max_batch_size=config.batch_size,
                         model_copies=config.model_copies)
        self.config = config
        self._progress = None

    def load_model(self):
        from model.captioner import Captioner
        _enable_gpu_memory_growth()
        t0 = time.monotonic()
        captioner = Captioner.load(self.config.model_dir, beam_size=self.config.beam_size,
                                   max_length=self.config.max_length, batch_size=self.config.batch_size)
        _ = captioner.encoder  # build the image encoder now (it is lazy): failures surface at load time
        log.info("bulk: loaded captioner %s (encoder %s, version %s) in %.1fs", self.config.model_dir,
                 captioner.encoder_name, captioner.model_version, time.monotonic() - t0)
        return captioner

    def run_inference(self, batch: Sequence[ImageToCaption], model, inference_args=None) -> List[Any]:
        """Rows for the batch. If the batched call fails, each image is retried alone so that one bad
        image costs only itself: those that fail alone come back as ``DeadLetter`` (stage inference)."""
        try:
            out = self._caption(batch, model)
        except Exception as batch_error:  # noqa: BLE001
            if len(batch) == 1:
                raise
            log.warning("bulk: a batch of %d failed (%s: %s); retrying its images one by one",
                        len(batch), type(batch_error).__name__, batch_error)
            out = []
            for item in batch:
                try:
                    out.extend(self._caption([item], model))
                except Exception as e:  # noqa: BLE001
                    out.append(DeadLetter.from_exception(item.path, e, "inference"))
        if self._progress is None:
            self._progress = _Progress()
        self._progress.add(len(batch))
        return out

    @staticmethod
    def _caption(batch: Sequence[ImageToCaption], model) -> List[Dict[str, Any]]:
        results = model.caption_images([item.pixels for item in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"captioner returned {len(results)} results for {len(batch)} images")
        return [caption_row(item, r, model.model_version, model.encoder_name) for item, r in zip(batch, results)]

    def get_num_bytes(self, batch: Sequence[ImageToCaption]) -> int:
        return int(sum(item.pixels.nbytes for item in batch))

    def get_metrics_namespace(self) -> str:
        return "captionbeam.bulk.inference"

    def batch_elements_kwargs(self):
        return dict(self._batching_kwargs)
