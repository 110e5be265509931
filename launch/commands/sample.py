"""``captionbeam sample``: write the small, deterministic sample captioning dataset."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List

from captionbeam.launch.arg_types import fractions, positive_int, output_dir
from captionbeam.launch.command_args import CommandError

HELP = "write the small, deterministic sample captioning dataset (images, captions, splits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (HELP + ". Procedurally drawn scenes (1-3 objects: circle, square, triangle, star, "
                          "diamond; six colours; small/large; left/right/top/bottom/centre; plain or gradient "
                          "background) with five varied captions each that describe what is drawn. Image k depends "
                          "only on (--seed, k).")
    parser.add_argument("--output", required=True, type=output_dir, metavar="DIR",
                        help="directory to write (local or gs://): images/*.jpg, captions.txt (Flickr8k token "
                             "format), train.txt, dev.txt, test.txt (Flickr8k split files), scenes.jsonl")
    parser.add_argument("--images", type=positive_int, default=100, metavar="N", help="number of images (default: 100)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives byte-identical files (default: 0)")
    parser.add_argument("--size", type=positive_int, default=128, metavar="PX", help="image side in pixels, 16..2048 (default: 128)")
    parser.add_argument("--captions-per-image", type=positive_int, default=5, metavar="N", help="captions per image (default: 5)")
    parser.add_argument("--splits", type=fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,DEV,TEST",
                        help="relative sizes of the train, dev and test splits (default: 80,10,10)")
    parser.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="JPEG quality 1..95 (default: 90)")


def config_from_args(args: argparse.Namespace):
    from captionbeam.pipelines.sample import SampleConfig
    if not 1 <= args.jpeg_quality <= 95:
        raise CommandError(f"--jpeg-quality must be between 1 and 95, got {args.jpeg_quality}")
    try:
        return SampleConfig(output=args.output, images=args.images, seed=args.seed, size=args.size,
                            captions_per_image=args.captions_per_image, fractions=tuple(args.splits),
                            jpeg_quality=args.jpeg_quality)
    except ValueError as e:
        raise CommandError(str(e)) from None


def run(config, progress=None):
    """Write the sample dataset -> ``pipelines.sample.SampleSummary``."""
    from captionbeam.pipelines.sample import write_sample
    return write_sample(config, progress=progress)


def summary(config, result, seconds: float) -> List[str]:
    return [f"sample dataset: {result.images} images ({config.size}x{config.size}), {result.captions} captions "
            f"-> {result.output}",
            "  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()),
            "  objects per image: " + ", ".join(f"{k}: {v}" for k, v in result.objects_per_image.items()),
            "  shapes: " + ", ".join(f"{k} {v}" for k, v in result.shapes.items()),
            "  colours: " + ", ".join(f"{k} {v}" for k, v in result.colours.items()),
            f"  {result.bytes_written / 1e6:.2f} MB in {seconds:.1f}s "
            f"({result.images / max(seconds, 1e-9):.0f} images/s)"]


def main(args: argparse.Namespace, pipeline_args=None) -> int:
    try:
        config = config_from_args(args)
    except CommandError as e:
        print(f"captionbeam sample: error: {e}", file=sys.stderr)
        return 2
    start = time.time()

    def progress(done: int, total: int) -> None:
        elapsed = time.time() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"  {done}/{total} images  {rate:.0f} images/s  ETA {eta:.0f}s", file=sys.stderr)

    result = run(config, progress=progress if args.images >= 500 else None)
    print("\n".join(summary(config, result, time.time() - start)))
    return 0
