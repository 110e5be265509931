"""``captionbeam pack``: pack loose images into tar or TFRecord shards, with a manifest (a Beam job).

Example::

    captionbeam pack --images 'gs://bucket/photos/**.jpg' --output gs://bucket/shards \\
        --format tar --shard-size 1000 --captions gs://bucket/captions.txt --profile dataflow
"""
from __future__ import annotations

import argparse
import json
import sys

from captionbeam.launch.arg_types import output_dir, positive_int
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.reader_flags import add_reader_arguments

HELP = "pack loose images into tar or TFRecord shards, with a manifest (Beam job)"
BEAM = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.model.caption_files import FORMATS as CAPTION_FORMATS
    parser.epilog = (
        "Output under --output: <prefix>-SSSSS-of-NNNNN.tar|.tfrecord[.gz] (tar: WebDataset layout, "
        "<id>.<ext> + <id>.txt captions + <id>.json metadata; TFRecord: tf.train.Example with image/encoded, "
        "image/id, image/filename, image/format, image/sha256, image/caption), manifest.jsonl "
        "({id, shard, member, sha256, bytes, source, captions}), dead_letters/*.jsonl, pack.json. "
        "Images are sorted by id and cut into shards of exactly --shard-size (the last one shorter). "
        "Read the shards back with `captionbeam features --images '<output>/*.tar'`.")
    g = parser.add_argument_group("inputs and outputs")
    g.add_argument("--images", nargs="+", required=True, metavar="GLOB",
                   help="one or more globs of loose images, local or gs:// ('**' recurses); "
                        "extensions .jpg .jpeg .png .webp (other files are dead-lettered)")
    g.add_argument("--output", required=True, type=output_dir, help="output directory for the shards, local or gs://")
    g.add_argument("--format", required=True, choices=["tar", "tfrecord"],
                   help="shard format: WebDataset-layout tar, or TFRecord of tf.train.Example (im2txt fields)")
    g.add_argument("--shard-size", type=positive_int, default=1000,
                   help="images per shard (default: 1000; aim for shards of ~100 MB-1 GB)")
    g.add_argument("--captions", default="",
                   help="optional caption file (Flickr8k token, Kaggle CSV, COCO JSON or JSON lines; local or "
                        "gs://): each image's captions go in as a <id>.txt member / image/caption feature")
    g.add_argument("--captions-format", default="auto", choices=("auto",) + tuple(CAPTION_FORMATS),
                   help="format of --captions (default: auto, from its name and first bytes)")
    g.add_argument("--compress", action="store_true",
                   help="gzip the shards (.tar.gz / .tfrecord.gz); JPEG/PNG barely compress, so off by default")
    g.add_argument("--prefix", default="shard", help="shard file-name prefix (default: shard)")
    g.add_argument("--verify-images", action="store_true",
                   help="open every image with Pillow before packing and dead-letter those that are not "
                        "images (slower; without it bytes are packed as they are and `features` dead-letters them)")
    add_reader_arguments(g)
    g.add_argument("--overwrite", action="store_true",
                   help="delete shards, manifest and dead letters an earlier pack left in --output first "
                        "(without it, a non-empty --output is an error: stale shards would be read as duplicates)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    from captionbeam.pipelines.lease import FORCE_HELP
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def _check_inputs(fail, patterns, captions: str) -> None:
    """Fail fast when a glob matches nothing or the caption file is missing (limit-1 match: cheap)."""
    import captionbeam.pipelines.io as pio
    from apache_beam.io.filesystems import FileSystems
    try:
        results = FileSystems.match(list(patterns), limits=[1] * len(patterns))
    except Exception as e:  # noqa: BLE001 - e.g. a bucket that does not exist
        fail(f"--images: cannot list: {e}")
    empty = [p for p, r in zip(patterns, results) if not r.metadata_list]
    if empty:
        fail(f"--images: no file matches {', '.join(empty)}")
    if captions and not pio.exists(captions):
        fail(f"--captions: no such file: {captions}")


def config_from_args(args: argparse.Namespace):
    """``pipelines.pack.PackConfig`` of these flags (``--overwrite`` and ``--json`` are main's);
    :class:`CommandError` for a bad combination."""
    from captionbeam.pipelines.pack import PackConfig
    try:
        return PackConfig(images=tuple(args.images), output=args.output, format=args.format,
                          shard_size=args.shard_size, captions=args.captions, captions_format=args.captions_format,
                          compress=args.compress, prefix=args.prefix, verify_images=args.verify_images,
                          max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    except ValueError as e:
        raise CommandError(str(e)) from None


def main(args: argparse.Namespace, pipeline_args) -> int:
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.pack import existing_outputs, run

    def fail(message: str) -> None:
        print(f"captionbeam pack: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    try:
        config = config_from_args(args)
    except CommandError as e:
        fail(str(e))
    _check_inputs(fail, config.images, config.captions)
    from captionbeam.pipelines.lease import output_lease
    with output_lease(config.output, "pack", args.force):   # the one output protocol: no other run writes here
        stale = existing_outputs(config)
        if stale and not args.overwrite:
            fail(f"--output {config.output} already holds {len(stale)} files of an earlier pack (e.g. "
                 f"{stale[0]}); choose an empty directory or pass --overwrite")
        if stale:
            pio.delete(stale)
        summary = run(config, pipeline_args)
    if args.json:
        print(json.dumps(summary.__dict__, sort_keys=True))
        return 0
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    print(f"packed {summary.images} images ({summary.bytes / 1e6:.2f} MB) into {summary.shards} {summary.format} "
          f"shards of <= {summary.shard_size} -> {summary.output}")
    if summary.shard_files:
        print(f"  shards: {summary.shard_files[0]} .. {summary.shard_files[-1]}")
    if config.captions:
        print(f"  captioned: {summary.captioned} of {summary.images} images")
    print(f"  manifest: {summary.output.rstrip('/')}/manifest.jsonl   summary: {summary.output.rstrip('/')}/pack.json")
    print(f"  dead letters: {summary.dead_letters}" + (f" (see {summary.output.rstrip('/')}/dead_letters/)"
                                                      if summary.dead_letters else ""))
    print(f"  {summary.seconds:.1f}s ({rate:.0f} images/s)")
    return 0
