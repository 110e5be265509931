"""``captionbeam pack``: pack loose images into tar or TFRecord shards, with a manifest (a Beam job).

Example::

    captionbeam pack --images 'gs://bucket/photos/**.jpg' --output gs://bucket/shards \\
        --format tar --shard-size 1000 --captions gs://bucket/captions.txt --profile dataflow
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import List, Optional, Tuple

from captionbeam.launch.arg_types import output_dir, positive_int
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.command_face import require_matches
from captionbeam.launch.exit_codes import OK
from captionbeam.pipelines.options import Runner
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


def config_from_args(args: argparse.Namespace):
    """``pipelines.pack.PackConfig`` of these flags (``--json`` is main's); :class:`CommandError` for a
    bad combination."""
    from captionbeam.pipelines.pack import PackConfig
    try:
        return PackConfig(images=tuple(args.images), output=args.output, format=args.format,
                          shard_size=args.shard_size, captions=args.captions, captions_format=args.captions_format,
                          compress=args.compress, prefix=args.prefix, verify_images=args.verify_images,
                          max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                          overwrite=bool(getattr(args, "overwrite", False)), force=bool(getattr(args, "force", False)))
    except ValueError as e:
        raise CommandError(str(e)) from None


@dataclass(frozen=True)
class PackPlan:
    """The files of an earlier pack that ``--overwrite`` deletes first."""
    output: str
    stale: Tuple[str, ...] = ()

    def summary_lines(self) -> List[str]:
        return [f"pack -> {self.output}" + (f" (--overwrite: deletes {len(self.stale)} file(s) of an earlier pack)"
                                            if self.stale else "")]


def plan(config) -> PackPlan:
    """Every check before any work: the globs match, the caption file exists, --output holds no earlier
    pack (unless --overwrite); :class:`CommandError` naming the flag."""
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.pack import existing_outputs
    require_matches(config.images)
    if config.captions and not pio.exists(config.captions):
        raise CommandError(f"--captions: no such file: {config.captions}")
    stale = existing_outputs(config)
    if stale and not config.overwrite:
        raise CommandError(f"--output {config.output} already holds {len(stale)} files of an earlier pack (e.g. "
                           f"{stale[0]}); choose an empty directory or pass --overwrite")
    return PackPlan(output=config.output, stale=tuple(stale))


@dataclass
class PackResult:
    """The finished job (``pipelines.pack.PackSummary``)."""
    job: object
    captions: bool = False      # a caption file was packed in

    def to_dict(self):
        return dict(self.job.__dict__)

    def summary_lines(self) -> List[str]:
        s = self.job
        rate = s.images / s.seconds if s.seconds else 0.0
        out = s.output.rstrip("/")
        lines = [f"packed {s.images} images ({s.bytes / 1e6:.2f} MB) into {s.shards} {s.format} "
                 f"shards of <= {s.shard_size} -> {s.output}"]
        if s.shard_files:
            lines.append(f"  shards: {s.shard_files[0]} .. {s.shard_files[-1]}")
        if self.captions:
            lines.append(f"  captioned: {s.captioned} of {s.images} images")
        lines.append(f"  manifest: {out}/manifest.jsonl   summary: {out}/pack.json")
        lines.append(f"  dead letters: {s.dead_letters}" + (f" (see {out}/dead_letters/)" if s.dead_letters else ""))
        lines.append(f"  {s.seconds:.1f}s ({rate:.0f} images/s)")
        return lines


def run(config, runner: Runner = None, planned: Optional[PackPlan] = None) -> PackResult:
    """Under the output's lease (the one output protocol: no other run writes here): plan, delete an
    earlier pack's files (--overwrite), pack -> :class:`PackResult`."""
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.lease import output_lease
    from captionbeam.pipelines.pack import run as run_job
    with output_lease(config.output, "pack", config.force):
        p = planned or plan(config)
        if p.stale:
            pio.delete(list(p.stale))
        return PackResult(job=run_job(config, runner), captions=bool(config.captions))


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    result = run(config_from_args(args), runner)
    print(json.dumps(result.to_dict(), sort_keys=True) if args.json else "\n".join(result.summary_lines()))
    return OK
