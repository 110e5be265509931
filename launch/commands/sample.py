"""``captionbeam sample``: write the small, deterministic sample captioning dataset."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from captionbeam.launch.arg_types import fractions, positive_int, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK

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


@dataclass(frozen=True)
class SamplePlan:
    """What the sample will hold (``config_from_args`` checked the flags; nothing is read)."""
    config: object      # pipelines.sample.SampleConfig

    def summary_lines(self) -> List[str]:
        c = self.config
        return [f"sample dataset: {c.images} images ({c.size}x{c.size}), {c.captions_per_image} captions each, "
                f"seed {c.seed} -> {c.output}"]


def plan(config) -> SamplePlan:
    return SamplePlan(config)


@dataclass
class SampleResult:
    """The written sample (``pipelines.sample.SampleSummary``), its image side and the seconds it took."""
    job: object
    size: int
    seconds: float

    def summary_lines(self) -> List[str]:
        return summary(self.size, self.job, self.seconds)


def run(config, progress: Optional[Callable[[int, int], None]] = None) -> SampleResult:
    """Write the sample dataset -> :class:`SampleResult`; ``progress(done, total)`` as images are written."""
    from captionbeam.pipelines.sample import write_sample
    start = time.time()
    job = write_sample(config, progress=progress)
    return SampleResult(job=job, size=config.size, seconds=time.time() - start)


def summary(size: int, result, seconds: float) -> List[str]:
    return [f"sample dataset: {result.images} images ({size}x{size}), {result.captions} captions "
            f"-> {result.output}",
            "  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()),
            "  objects per image: " + ", ".join(f"{k}: {v}" for k, v in result.objects_per_image.items()),
            "  shapes: " + ", ".join(f"{k} {v}" for k, v in result.shapes.items()),
            "  colours: " + ", ".join(f"{k} {v}" for k, v in result.colours.items()),
            f"  {result.bytes_written / 1e6:.2f} MB in {seconds:.1f}s "
            f"({result.images / max(seconds, 1e-9):.0f} images/s)"]


def main(args: argparse.Namespace, runner=None) -> int:
    config = config_from_args(args)
    start = time.time()

    def progress(done: int, total: int) -> None:
        elapsed = time.time() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"  {done}/{total} images  {rate:.0f} images/s  ETA {eta:.0f}s", file=sys.stderr)

    print("\n".join(run(config, progress=progress if config.images >= 500 else None).summary_lines()))
    return OK
