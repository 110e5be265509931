"""The reader's two limits as flags, one definition for every command that reads users' files
(``features``, ``bulk``, ``pack``, ``caption``, ``retrain``, ``export``'s pixel limit)."""
from __future__ import annotations

import argparse

from captionbeam.launch.arg_types import positive_int


def add_max_bytes(parser) -> None:
    from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
    parser.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES, metavar="N",
                        help="the one byte limit of every reader: a file, tar member or TFRecord record larger than N "
                             "bytes is refused (too_large) and never read into memory; FIFOs, devices, directories "
                             "and dangling or looping links are never opened; there is no unlimited mode, raise N "
                             "for larger images (default: %(default)s = 64 MiB)")


def add_max_pixels(parser, extra: str = "") -> None:
    from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"decompression-bomb guard: refuse images whose header declares more than N pixels, "
                             f"before any pixel is decoded (default: {DEFAULT_MAX_PIXELS}, Pillow's own warning "
                             f"limit){extra}")


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-bytes`` and ``--max-pixels``."""
    add_max_bytes(parser)
    add_max_pixels(parser)
