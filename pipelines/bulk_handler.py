"""RunInference ModelHandlers of the bulk job: encoder and decoder together, one batched call.

Two handlers, one per kind of ``--model-dir`` (a job uses one of them):

- :class:`CaptionerModelHandler` (a training model directory): ``load_model()`` returns
  :class:`model.captioner.Captioner` (CNN encoder + caption decoder, greedy or beam search, batched
  inside compiled TensorFlow functions); ``run_inference`` captions a batch of decoded images
  (:class:`DecodedImage`, pixels decoded and resized by Pillow in Beam).
- :class:`SavedModelHandler` (an export of ``captionbeam export``, a directory with ``saved_model.pb``):
  ``load_model()`` is ``tf.saved_model.load``; ``run_inference`` feeds the raw file bytes of a batch
  (:class:`ImageBytes`) to its ``serving_default(images=...)`` signature, which decodes, resizes,
  encodes and decodes the captions in one graph, deciding per image. Rows whose ``valid`` output is
  False (not an image, truncated or corrupt, over the export's pixel limit) become dead letters (stage
  ``decode``) with the Pillow reader's reason.

Both return one output row (or one ``DeadLetter``) per image, and share the failure isolation of
:class:`_IsolatingHandler`, the one policy of :mod:`pipelines.isolation` (``features`` uses it too): a
batch that raises is retried image by image so a bad image costs only itself.

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
from typing import Any, List, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler

from captionbeam.pipelines.bulk_rows import CaptionRow
from captionbeam.pipelines.counters import BULK_INFERENCE_NAMESPACE
from captionbeam.pipelines.deadletter import MAX_MESSAGE_CHARS, DeadLetter
from captionbeam.pipelines.image_items import DecodedImage
from captionbeam.pipelines.isolation import run_isolated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionerConfig:
    """What a worker needs to load the captioner (pickled into the pipeline)."""
    model_dir: str
    beam_size: int = 1
    max_length: Optional[int] = None
    batch_size: int = 32
    length_penalty: float = 0.0
    model_copies: Optional[int] = None  # None: one model per process; N: N per machine, shared

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"--beam-size must be >= 1, got {self.beam_size}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.length_penalty < 0:
            raise ValueError(f"--length-penalty must be >= 0, got {self.length_penalty}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max-length must be >= 1, got {self.max_length}")
        if self.model_copies is not None and self.model_copies < 1:
            raise ValueError(f"--model-copies must be >= 1, got {self.model_copies}")


@dataclass(frozen=True)
class ImageBytes:
    """One image file's undecoded bytes on their way to an exported SavedModel (which decodes them)."""
    path: str
    image_id: str
    sha256: str
    data: bytes


def caption_row(item, caption: str, log_prob: float, model_version: str, encoder: str) -> CaptionRow:
    """The bulk job's output row for one image (``item``: DecodedImage or ImageBytes)."""
    return CaptionRow(path=item.path, image_id=item.image_id, sha256=item.sha256, caption=caption,
                      log_prob=float(log_prob), model_version=model_version, encoder=encoder)


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


class _IsolatingHandler(ModelHandler):
    """What both handlers share: batches of up to ``config.batch_size``, one model per process (or
    ``model_copies`` per machine), progress logs, and failure isolation in :meth:`run_inference`.
    Subclasses give ``load_model``, ``_caption(batch, model)`` (rows, or DeadLetters for images the
    model itself rejects) and ``get_num_bytes``."""

    def __init__(self, config: CaptionerConfig):
        super().__init__(min_batch_size=1, max_batch_size=config.batch_size,
                         model_copies=config.model_copies)
        self.config = config
        self._progress = None

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> List[Any]:
        """Rows for the batch, through the one failure policy (:func:`pipelines.isolation.run_isolated`):
        an image that fails alone comes back as a ``DeadLetter`` (:meth:`_dead_letter`)."""
        out = run_isolated(batch, lambda b: self._caption(b, model), self._dead_letter, "bulk")
        if self._progress is None:
            self._progress = _Progress()
        self._progress.add(len(batch))
        return out

    def _dead_letter(self, item, exc: BaseException) -> DeadLetter:
        return DeadLetter.from_exception(item.path, exc, "inference")

    def _caption(self, batch: Sequence[Any], model) -> List[Any]:
        raise NotImplementedError

    def get_metrics_namespace(self) -> str:
        return BULK_INFERENCE_NAMESPACE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def tf_error_summary(exc: BaseException) -> str:
    """TensorFlow's actual message out of a graph error, plus the failing node: ``jpeg::Uncompress failed.
    Invalid JPEG data or crop window. (node map/while/cond/decode_image/DecodeImage)`` instead of the
    ``Graph execution error:`` + stack dump that ``str()`` gives."""
    import re
    text = str(exc)
    lines = [line.rstrip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line[0].isspace() and not line.startswith(_TF_NOISE)]
    summary = kept[-1] if kept else _first_line(exc)
    node = re.search(r"\{\{node ([^}]+)\}\}", text)
    return f"{summary} (node {node.group(1)})" if node else summary


class CaptionerModelHandler(_IsolatingHandler):
    """RunInference handler of a training model directory: ``DecodedImage`` in, ``CaptionRow`` out."""

    def load_model(self):
        from captionbeam.model.captioner import Captioner
        _enable_gpu_memory_growth()
        t0 = time.monotonic()
        captioner = Captioner.load(self.config.model_dir, beam_size=self.config.beam_size,
                                   max_length=self.config.max_length, batch_size=self.config.batch_size,
                                   alpha=self.config.length_penalty)
        _ = captioner.encoder  # build the image encoder now (it is lazy): failures surface at load time
        log.info("bulk: loaded captioner %s (encoder %s, version %s) in %.1fs", self.config.model_dir,
                 captioner.encoder_name, captioner.model_version, time.monotonic() - t0)
        return captioner

    def _caption(self, batch: Sequence[DecodedImage], model) -> List[CaptionRow]:
        results = model.caption_images([item.pixels for item in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"captioner returned {len(results)} results for {len(batch)} images")
        return [caption_row(item, r.caption, r.log_prob, model.model_version, model.encoder_name)
                for item, r in zip(batch, results)]

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        return int(sum(item.pixels.nbytes for item in batch))


def rejected_by_export(item: ImageBytes) -> DeadLetter:
    """Dead letter of an image the export refused (``valid`` False): the export cannot say why, so the
    bytes are checked here with the Pillow reader (only the rejected ones) for the same reasons as
    everywhere else (``NotAnImageError``, ``TruncatedImageError``, ``DecompressionBombError`` ...);
    ``UnsupportedByExportError`` when Pillow decodes what the export's decoder does not (e.g. WebP)."""
    from captionbeam.pipelines.images import decode_image
    try:
        decode_image(item.data)
        error, why = "UnsupportedByExportError", "Pillow decodes it, the export's JPEG/PNG/GIF/BMP decoder does not"
    except Exception as e:  # noqa: BLE001 - the reason is the point
        error, why = type(e).__name__, str(e)
    return DeadLetter(path=item.path, error=error, stage="decode",
                      message=(f"the export's serving_default returned valid=False: {why}")[:MAX_MESSAGE_CHARS])


class SavedModelHandler(_IsolatingHandler):
    """RunInference handler of an exported SavedModel (``captionbeam export``): ``ImageBytes`` in, output
    row or ``DeadLetter`` out. Decoding (beam size, max length, resize) is baked into the export.

    ``model_version`` and ``encoder`` come from the launcher (hash over the export's files, and its
    ``captionbeam_export.json``), so workers do not hash the files again."""

    def __init__(self, config: CaptionerConfig, model_version: str, encoder: str):
        super().__init__(config)
        self.model_version = model_version
        self.encoder = encoder

    def load_model(self):
        import tensorflow as tf
        _enable_gpu_memory_growth()
        t0 = time.monotonic()
        # keep the loaded root object: its signatures hold only weak references to its variables
        loaded = tf.saved_model.load(self.config.model_dir)
        log.info("bulk: loaded export %s (encoder %s, version %s) in %.1fs", self.config.model_dir,
                 self.encoder, self.model_version, time.monotonic() - t0)
        return loaded

    def _caption(self, batch: Sequence[ImageBytes], model) -> List[Any]:
        import tensorflow as tf
        out = model.signatures["serving_default"](images=tf.constant([item.data for item in batch], tf.string))
        captions, log_probs, valid = (out[k].numpy() for k in ("captions", "log_probs", "valid"))
        if not len(captions) == len(log_probs) == len(valid) == len(batch):
            raise RuntimeError(f"serving_default returned {len(captions)} captions for {len(batch)} images")
        return [caption_row(item, c.decode("utf-8"), lp, self.model_version, self.encoder) if ok
                else rejected_by_export(item)
                for item, c, lp, ok in zip(batch, captions, log_probs, valid)]

    def _dead_letter(self, item: ImageBytes, exc: BaseException) -> DeadLetter:
        """An image that fails the export alone: TensorFlow's InvalidArgumentError comes from the in-graph
        image decoder (corrupt data behind a valid header): stage ``decode``; anything else ``inference``."""
        import tensorflow as tf
        stage = "decode" if isinstance(exc, tf.errors.InvalidArgumentError) else "inference"
        message = f"the export's serving_default failed on this image alone: {tf_error_summary(exc)}"
        return DeadLetter(path=item.path, error=type(exc).__name__, stage=stage, message=message[:MAX_MESSAGE_CHARS])

    def get_num_bytes(self, batch: Sequence[ImageBytes]) -> int:
        return int(sum(len(item.data) for item in batch))
