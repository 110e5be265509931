"""``DecodeImages``: ``(ImageBlob, sha256)`` -> :class:`~pipelines.image_items.DecodedImage` at an
encoder's input size (Pillow, :func:`pipelines.images.load_image`); what cannot be decoded becomes a
dead letter (stage ``decode``) and the job goes on. Shared by ``features`` and ``bulk``."""
from __future__ import annotations

import apache_beam as beam

from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.deadletter import DeadLetter
from captionbeam.pipelines.io import sha256_hex
from captionbeam.pipelines.image_items import DecodedImage
from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS, load_image

DEAD = "dead_letters"


class _DecodeFn(beam.DoFn):
    def __init__(self, image_size: int, max_pixels: int, resize_method: str):
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.resize_method = resize_method

    def setup(self):
        self.decoded = beam.metrics.Metrics.counter(NAMESPACE, "images_decoded")

    def process(self, item):
        blob, sha256 = item if isinstance(item, tuple) else (item, sha256_hex(item.data))
        try:
            pixels = load_image(blob.data, self.image_size, self.max_pixels, self.resize_method)
        except Exception as e:  # noqa: BLE001 - ImageDecodeError, or a decoder bug: the file is not lost either way
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.from_exception(blob.source, e, "decode"))
            return
        self.decoded.inc()
        yield DecodedImage(path=blob.source, image_id=blob.image_id, sha256=sha256, pixels=pixels)


class DecodeImages(beam.PTransform):
    """``(ImageBlob, sha256)`` (or an ``ImageBlob``, hashed here) -> ``{"images": DecodedImage (uint8 (size, size, 3)), "dead_letters": DeadLetter}``."""

    def __init__(self, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, resize_method: str = "bilinear"):
        super().__init__()
        self.fn = _DecodeFn(image_size, max_pixels, resize_method)

    def expand(self, hashed_blobs):
        out = hashed_blobs | "Decode" >> beam.ParDo(self.fn).with_outputs(DEAD, main="images")
        return {"images": out.images, "dead_letters": out[DEAD]}
