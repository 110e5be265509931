"""``captionbeam sample``: write the small, deterministic sample captioning dataset."""
from __future__ import annotations

import argparse
import sys
import time

HELP = "write the small, deterministic sample captioning dataset (images, captions, splits)"


def _fractions(text: str):
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 80,10,10, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers like 80,10,10, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (HELP + ". Procedurally drawn scenes (1-3 objects: circle, square, triangle, star, "
                          "diamond; six colours; small/large; left/right/top/bottom/centre; plain or gradient "
                          "background) with five varied captions each that describe what is drawn. Image k depends "
                          "only on (--seed, k).")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory to write (local or gs://): images/*.jpg, captions.txt (Flickr8k token "
                             "format), train.txt, dev.txt, test.txt (Flickr8k split files), scenes.jsonl")
    parser.add_argument("--images", type=_positive, default=100, metavar="N", help="number of images (default: 100)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives byte-identical files (default: 0)")
    parser.add_argument("--size", type=_positive, default=128, metavar="PX", help="image side in pixels, 16..2048 (default: 128)")
    parser.add_argument("--captions-per-image", type=_positive, default=5, metavar="N", help="captions per image (default: 5)")
    parser.add_argument("--splits", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,DEV,TEST",
                        help="relative sizes of the train, dev and test splits (default: 80,10,10)")
    parser.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="JPEG quality 1..95 (default: 90)")


def main(args: argparse.Namespace, pipeline_args=None) -> int:
    from pipelines.sample import SampleConfig, write_sample

    if not 1 <= args.jpeg_quality <= 95:
        print(f"captionbeam sample: error: --jpeg-quality must be between 1 and 95, got {args.jpeg_quality}",
              file=sys.stderr)
        return 2
    try:
        config = SampleConfig(output=args.output, images=args.images, seed=args.seed, size=args.size,
                              captions_per_image=args.captions_per_image, fractions=tuple(args.splits),
                              jpeg_quality=args.jpeg_quality)
    except ValueError as e:
        print(f"captionbeam sample: error: {e}", file=sys.stderr)
        return 2
    start = time.time()

    def progress(done: int, total: int) -> None:
        elapsed = time.time() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"  {done}/{total} images  {rate:.0f} images/s  ETA {eta:.0f}s", file=sys.stderr)

    summary = write_sample(config, progress=progress if args.images >= 500 else None)
    elapsed = time.time() - start
    print(f"sample dataset: {summary.images} images ({config.size}x{config.size}), {summary.captions} captions "
          f"-> {summary.output}")
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
    print("  objects per image: " + ", ".join(f"{k}: {v}" for k, v in summary.objects_per_image.items()))
    print("  shapes: " + ", ".join(f"{k} {v}" for k, v in summary.shapes.items()))
    print("  colours: " + ", ".join(f"{k} {v}" for k, v in summary.colours.items()))
    print(f"  {summary.bytes_written / 1e6:.2f} MB in {elapsed:.1f}s ({summary.images / max(elapsed, 1e-9):.0f} images/s)")
    return 0
