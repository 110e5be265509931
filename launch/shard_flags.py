"""Command-line flags that name the fields of image TFRecord shards, shared by the jobs that read shards."""
from __future__ import annotations

import argparse

from captionbeam.pipelines.shards.image_examples import TfrecordFields


def add_tfrecord_field_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tfrecord-image-field``, ``--tfrecord-id-field``, ``--tfrecord-caption-field``: comma lists,
    the first name present in a record wins; empty keeps the defaults (im2txt, TF OD API, ``pack``)."""
    defaults = TfrecordFields()
    for flag, attr, what in (("--tfrecord-image-field", "image", "encoded image bytes"),
                             ("--tfrecord-id-field", "image_id", "the image id"),
                             ("--tfrecord-caption-field", "caption", "captions (optional)")):
        parser.add_argument(flag, default="", metavar="NAME[,NAME...]",
                            help=f"TFRecord shards: feature name(s) holding {what}; the first present one "
                                 f"wins (default: {','.join(getattr(defaults, attr))})")


def tfrecord_fields(args: argparse.Namespace) -> TfrecordFields:
    return TfrecordFields.from_flags(args.tfrecord_image_field, args.tfrecord_id_field,
                                     args.tfrecord_caption_field)
