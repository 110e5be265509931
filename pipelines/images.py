"""Decode and validate image bytes into RGB uint8 arrays (pure functions, Pillow; no Beam, no TF).

What :func:`decode_image` does with each kind of input:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo stored sideways comes out
  upright. A broken EXIF block is ignored (the pixels are still decoded).
* Multi-frame files (GIF, TIFF, WebP animations) use their first frame.
* Mode conversion to RGB: ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` via Pillow's ``convert``;
  16-bit (``I;16*``) and 32-bit integer (``I``, as Pillow decodes 16-bit PNG/TIFF) greyscale are scaled
  from 0..65535 to 0..255 (``v / 257``, rounded), not clipped; float (``F``) images in 0..1 are scaled by
  255, others clipped to 0..255.
* Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour): **alpha is composited on a
  white background**, which is what a viewer shows on a white page. (Keras's ``load_img`` drops alpha
  instead, which exposes whatever colour the transparent pixels happen to hold, often black.)
* Guards, each a subclass of :class:`ImageDecodeError` whose class name ends up in the dead letters:
  ``EmptyImageError`` (zero bytes), ``NotAnImageError`` (Pillow cannot identify the format),
  ``DecompressionBombError`` (width x height above ``max_pixels``, checked from the header before any
  pixel is decoded), ``TruncatedImageError`` (the pixel data ends early), ``CorruptImageError``
  (any other decoder failure).

:func:`resize_image` squashes to a square ``size x size`` (aspect ratio not kept), like the classic
tutorial's ``load_img(target_size=(224, 224))``, with a selectable filter (default bilinear; Keras's
``load_img`` defaults to nearest).
"""
from __future__ import annotations

import io
import warnings
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captionbeam.model.limits import DEFAULT_MAX_PIXELS  # noqa: F401  (re-exported for the jobs' flags)

RESIZE_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class ImageDecodeError(ValueError):
    """Base class of every reason an image is rejected."""


class EmptyImageError(ImageDecodeError):
    """The file has zero bytes."""


class NotAnImageError(ImageDecodeError):
    """Pillow cannot identify the bytes as any image format."""


class DecompressionBombError(ImageDecodeError):
    """The image's declared dimensions exceed the pixel limit."""


class TruncatedImageError(ImageDecodeError):
    """The image data ends before all pixels were decoded."""


class CorruptImageError(ImageDecodeError):
    """Any other failure while decoding pixel data."""


_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _classify(e: Exception, what: str) -> ImageDecodeError:
    text = str(e)
    if isinstance(e, (OSError, SyntaxError, ValueError)) and any(
            k in text.lower() for k in ("truncated", "premature end", "broken data stream", "unexpected end")):
        return TruncatedImageError(f"{what}: {text}")
    return CorruptImageError(f"{what}: {type(e).__name__}: {text}")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise EmptyImageError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own hard limit (2 x its MAX_IMAGE_PIXELS)
        raise DecompressionBombError(f"{e} (limit --max-pixels={max_pixels})") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"not a recognised image format ({len(data)} bytes, starts with {data[:8]!r})") from None
    except Exception as e:  # noqa: BLE001 - malformed headers raise all sorts
        raise _classify(e, "cannot open image") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise DecompressionBombError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (--max-pixels)")
    return img


def _load(img: Image.Image) -> Image.Image:
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
    except Exception as e:  # noqa: BLE001
        raise _classify(e, "cannot decode pixels") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    return img


def _scale_high_depth(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        if np.nanmax(arr, initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.nan_to_num(arr)
    else:  # I;16, I;16L, I;16B, I;16N, I: 16-bit samples (Pillow decodes 16-bit PNG/TIFF greyscale so)
        arr = arr.astype(np.float64) / 257.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (see module doc for the rules)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_high_depth(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> ``uint8`` array of shape ``(height, width, 3)``, RGB, upright.

    Raises a subclass of :class:`ImageDecodeError` for anything that is not a decodable image."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    img = _load(_open(data, max_pixels))
    rgb = to_rgb(img)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CorruptImageError(f"unexpected decoded shape {arr.shape}")
    return arr


def check_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """(width, height) from the header only, no pixel decoded; the same errors as :func:`decode_image`
    for empty bytes, an unknown format or more than ``max_pixels`` pixels."""
    img = _open(data, max_pixels)
    size = img.size
    img.close()
    return size


def image_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from the header only, no pixel decoding."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def resize_image(image: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` -> ``(size, size, 3)`` (squashed, aspect ratio not kept)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {', '.join(RESIZE_METHODS)}")
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image, dtype=np.uint8)
    resized = Image.fromarray(np.asarray(image, np.uint8), "RGB").resize((size, size), RESIZE_METHODS[method])
    return np.asarray(resized, dtype=np.uint8)


def load_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, method: str = "bilinear") -> np.ndarray:
    """Decode, validate and resize: bytes -> ``uint8 (size, size, 3)``, ready for an encoder's preprocessing."""
    return resize_image(decode_image(data, max_pixels=max_pixels), size, method)
