"""pipelines.images: decoding, mode conversion, EXIF orientation and the guards, on images made here.

The ``make_*`` builders are also used by tests/pipelines/test_features.py to mix odd files into a job."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captionbeam.pipelines.images import (DecompressionBombError, EmptyImageError, NotAnImageError, TruncatedImageError,
                              decode_image, load_image, resize_image)


# ----------------------------------------------------------------------------- builders
def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_rgb_jpeg(seed: int, size=(48, 40)) -> bytes:
    """A smooth, seed-dependent picture (JPEG-friendly: gradients plus a block)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    arr = np.stack([(base[c] + 120 * np.sin(xx / (3 + c + seed % 5)) + 80 * np.cos(yy / (4 + c))) % 256
                    for c in range(3)], -1)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    return encode(Image.fromarray(arr.astype(np.uint8), "RGB"), "JPEG", quality=95)


def make_cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (32, 24), (0, 255, 0, 0)), "JPEG", quality=95)  # magenta


def make_rgba_png() -> bytes:
    arr = np.zeros((24, 32, 4), np.uint8)
    arr[..., 0] = 255  # red everywhere ...
    arr[:, :16, 3] = 0  # ... left half fully transparent
    arr[:, 16:, 3] = 255
    return encode(Image.fromarray(arr, "RGBA"))


def make_16bit_png() -> bytes:
    arr = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    return encode(Image.fromarray(arr))


def make_palette_png(transparent: bool = False) -> bytes:
    img = Image.new("P", (32, 24), 1)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)  # index 1 = green
    img.paste(0, (0, 0, 8, 24))
    return encode(img, transparency=0) if transparent else encode(img)


def make_gray_jpeg() -> bytes:
    return encode(Image.new("L", (32, 24), 77), "JPEG", quality=95)


def make_exif_rotated_jpeg() -> bytes:
    """Stored 32 wide x 16 high, left half red / right half blue, EXIF Orientation 6 (display rotated 90° CW)."""
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = (255, 0, 0)
    arr[:, 16:] = (0, 0, 255)
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def make_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (no pixel data to match)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def make_truncated_jpeg() -> bytes:
    data = make_rgb_jpeg(99, (64, 64))
    return data[:len(data) * 2 // 3]


def make_corrupt() -> bytes:
    return b"\x00\x01 this is not an image at all \xff" * 10


# ----------------------------------------------------------------------------- tests
def test_rgb_jpeg_decodes_to_uint8_hwc():
    arr = decode_image(make_rgb_jpeg(0, (48, 40)))
    assert arr.dtype == np.uint8 and arr.shape == (40, 48, 3)
    assert arr.std() > 10


def test_cmyk_becomes_rgb():
    arr = decode_image(make_cmyk_jpeg())
    assert arr.shape == (24, 32, 3)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b > 200  # magenta


def test_rgba_alpha_is_composited_on_white():
    arr = decode_image(make_rgba_png())
    assert arr.shape == (24, 32, 3)
    assert (arr[:, :16] == 255).all()  # transparent -> white background
    assert (arr[:, 16:] == (255, 0, 0)).all()  # opaque red stays red


def test_rgba_half_alpha_blends_with_white():
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 3] = 128  # black at ~50% alpha
    out = decode_image(encode(Image.fromarray(arr, "RGBA")))
    assert np.all(np.abs(out.astype(int) - 127) <= 1)


def test_16bit_grayscale_is_scaled_not_clipped():
    data = make_16bit_png()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = decode_image(data)
    src = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.float64)
    expected = np.rint(src / 257.0).astype(np.uint8)
    assert np.array_equal(arr[..., 0], expected) and np.array_equal(arr[..., 1], expected)
    assert arr.max() > 250 and arr.min() == 0  # full range used; clipping would saturate at 255 early


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_becomes_rgb(transparent):
    arr = decode_image(make_palette_png(transparent))
    assert arr.shape == (24, 32, 3)
    assert (arr[:, 8:] == (0, 200, 0)).all()
    assert (arr[:, :8] == ((255, 255, 255) if transparent else (0, 0, 0))).all()


def test_grayscale_becomes_three_equal_channels():
    arr = decode_image(make_gray_jpeg())
    assert arr.shape == (24, 32, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert abs(int(arr.mean()) - 77) <= 2


def test_exif_orientation_is_applied():
    arr = decode_image(make_exif_rotated_jpeg())
    assert arr.shape == (32, 16, 3)  # now portrait
    top, bottom = arr[:12].reshape(-1, 3).mean(0), arr[20:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_first_frame_of_animation():
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    arr = decode_image(buf.getvalue())
    assert arr.shape == (8, 8, 3) and (arr == 0).all()


def test_zero_bytes():
    with pytest.raises(EmptyImageError):
        decode_image(b"")


def test_not_an_image():
    with pytest.raises(NotAnImageError, match="not a recognised image format"):
        decode_image(make_corrupt())


def test_truncated():
    with pytest.raises(TruncatedImageError):
        decode_image(make_truncated_jpeg())


@pytest.mark.parametrize("side", [10_000, 100_000])  # above our limit / also above Pillow's hard limit
def test_decompression_bomb_header_is_rejected_before_decoding(side):
    with pytest.raises(DecompressionBombError):
        decode_image(make_bomb_png(side, side))


def test_max_pixels_limit_is_configurable():
    data = make_rgb_jpeg(1, (48, 40))
    with pytest.raises(DecompressionBombError, match="--max-pixels"):
        decode_image(data, max_pixels=48 * 40 - 1)
    assert decode_image(data, max_pixels=48 * 40).shape == (40, 48, 3)


def test_resize_squashes_to_square():
    """The whole 48x40 picture ends up in the 32x32 square, each axis scaled on its own: not cropped, not
    padded (four coloured quadrants stay four quadrants of 16x16)."""
    quadrants = np.zeros((40, 48, 3), np.uint8)
    quadrants[:20, :24], quadrants[:20, 24:] = (255, 0, 0), (0, 255, 0)
    quadrants[20:, :24], quadrants[20:, 24:] = (0, 0, 255), (255, 255, 255)
    for method in ("nearest", "bilinear", "bicubic"):
        out = resize_image(quadrants, 32, method)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        inner = lambda y, x: out[y + 2:y + 14, x + 2:x + 14].reshape(-1, 3)  # noqa: E731 (away from the seams)
        for (y, x), colour in {(0, 0): (255, 0, 0), (0, 16): (0, 255, 0), (16, 0): (0, 0, 255),
                               (16, 16): (255, 255, 255)}.items():
            assert (np.abs(inner(y, x).astype(int) - colour) <= 2).all(), (method, y, x)
    arr = decode_image(make_rgb_jpeg(2, (48, 40)))
    assert resize_image(arr, 32).shape == (32, 32, 3)


def test_resize_to_its_own_size_keeps_the_pixels():
    arr = decode_image(make_rgb_jpeg(2, (48, 40)))[:32, :32]
    out = resize_image(arr, 32)
    assert np.array_equal(out, arr) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_resize_rejects_a_bad_size_or_method():
    arr = decode_image(make_rgb_jpeg(2, (48, 40)))
    with pytest.raises(ValueError, match="size must be positive"):
        resize_image(arr, 0)
    with pytest.raises(ValueError, match="resize method"):
        resize_image(arr, 8, "sinc")


def test_load_image_matches_decode_then_resize():
    data = make_rgb_jpeg(3, (48, 40))
    assert np.array_equal(load_image(data, 16), resize_image(decode_image(data), 16))
