"""``captionbeam caption``: caption image files with a trained model, end to end.

Each file is read and decoded (Pillow: EXIF orientation, any mode -> RGB, alpha on white, size
guard), squashed to the encoder's input size, preprocessed and encoded as the features job did, then
decoded (greedy or beam search). Output: ``PATH<TAB>CAPTION`` per image, or JSON lines with
``--json``. A file that cannot be read or decoded is reported on its own (stderr; with ``--json`` also
a ``{"path", "error", "message"}`` line) and the others are still captioned.

Exit status (launch/exit_codes.py): 0 finished (files that failed are reported on stderr, and as ``error``
rows with --json); 2 nothing captioned (or bad flags).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK, USAGE
from captionbeam.launch.commands.evaluate import Decoding, add_decoding_arguments

from captionbeam.launch.arg_types import output_dir
from captionbeam.launch.reader_flags import add_reader_arguments
from captionbeam.model.limits import DEFAULT_MAX_PIXELS
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES

HELP = "caption image files with a trained model"
log = logging.getLogger("captionbeam.caption")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="trained model directory (captionbeam train --model-dir)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local paths or gs://)")
    add_decoding_arguments(parser)
    parser.add_argument("--attention-plot", metavar="DIR", type=output_dir,
                        help="write DIR/<image id>.attention.png: the attention map of every word over the image "
                             "(attention models only)")
    add_reader_arguments(parser)
    parser.add_argument("--encoder-file", default=None, metavar="PATH",
                        help="the model file of a .keras/.h5/.tflite encoder (features_spec.json names it by its "
                             "base name, found in the working directory by default)")
    parser.add_argument("--json", action="store_true",
                        help='JSON lines: {"path", "image_id", "caption", "tokens", "log_prob"} per image')


def plot_attention(path: str, image, words: List[str], attention, feature_shape, out_path: str) -> None:
    """One panel per generated word (and <end>): the image with that step's attention upsampled over it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    h, w = (int(feature_shape[0]), int(feature_shape[1])) if len(feature_shape) == 3 else (1, int(attention.shape[-1]))
    labels = list(words) + ["<end>"]
    steps = min(len(labels), attention.shape[0])
    cols = min(5, steps + 1)
    rows = (steps + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(os.path.basename(path)[:24], fontsize=8)
    for t in range(steps):
        ax = axes[(t + 1) // cols, (t + 1) % cols]
        amap = np.asarray(attention[t], np.float32).reshape(h, w)
        amap = amap / max(float(amap.max()), 1e-9)
        up = np.asarray(Image.fromarray((amap * 255).astype(np.uint8)).resize(
            (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR), np.float32) / 255.0
        ax.imshow(image)
        ax.imshow(up, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(labels[t], fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class CaptionConfig:
    model_dir: str
    images: Tuple[str, ...]
    decoding: Decoding = Decoding()
    attention_plot: Optional[str] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    encoder_file: Optional[str] = None
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class CaptionPlan:
    """The checked flags: what is captioned with which model (the model itself loads in :func:`run`)."""
    model_dir: str
    images: int
    beam_size: int = 1

    def summary_lines(self) -> List[str]:
        return [f"caption: {self.images} file(s) with {self.model_dir}, beam {self.beam_size}"]


def plan(config: "CaptionConfig") -> CaptionPlan:
    """Every check of the flags before any work; :class:`CommandError` naming the flag."""
    config.decoding.check()
    return CaptionPlan(model_dir=config.model_dir, images=len(config.images), beam_size=config.decoding.beam_size)


@dataclass
class CaptionResult:
    rows: List[dict] = field(default_factory=list)      # {"path", "image_id", "caption", "tokens", "log_prob", ...}
    failed: List[dict] = field(default_factory=list)    # {"path", "error", "message"}

    @property
    def exit_code(self) -> int:
        """OK, or USAGE when not one file could be captioned (launch/exit_codes.py)."""
        return OK if self.rows else USAGE

    def summary_lines(self) -> List[str]:
        """The rows are printed as they come (``run``'s ``on_row``); this is the count of failures."""
        return [f"{len(self.rows)} captioned, {len(self.failed)} failed"] if self.failed and self.rows else []


def config_from_args(args: argparse.Namespace) -> CaptionConfig:
    return CaptionConfig(model_dir=args.model_dir, images=tuple(args.images), decoding=Decoding.from_args(args),
                         attention_plot=args.attention_plot, max_pixels=args.max_pixels,
                         encoder_file=args.encoder_file, max_bytes=args.max_bytes)


def run(config: CaptionConfig, on_row: Optional[Callable[[dict], None]] = None,
        on_error: Optional[Callable[[dict], None]] = None, planned: Optional[CaptionPlan] = None) -> CaptionResult:
    """Caption ``config.images``; each row (and each failed file) is also passed to ``on_row``
    (``on_error``) as soon as it is known. :class:`CommandError` when the model dir is unusable."""
    planned or plan(config)
    from captionbeam.pipelines.images import ImageDecodeError, decode_image
    from captionbeam.pipelines.user_files import read_user_file
    from captionbeam.model.caption_files import image_id as to_image_id
    try:
        captioner = config.decoding.load_captioner(config.model_dir, config.encoder_file)
        captioner.encoder   # build it now: a model dir without a usable encoder fails before any image
    except (OSError, ValueError) as e:
        raise CommandError(f"--model-dir {config.model_dir}: {e}") from None
    if config.attention_plot:
        if not captioner.has_attention:
            log.warning("caption: --attention-plot ignored: the %s model has no attention", captioner.config.arch)
        else:
            os.makedirs(config.attention_plot, exist_ok=True)
    result = CaptionResult()

    def report_error(path: str, e: Exception) -> None:
        error = getattr(e, "error", None) or type(e).__name__     # a UserFileError's dead-letter code
        row = {"path": path, "error": error, "message": getattr(e, "message", None) or str(e)}
        result.failed.append(row)
        if on_error:
            on_error(row)

    # decode in chunks of --batch-size so memory stays bounded for long file lists
    paths = list(config.images)
    batch_size = config.decoding.batch_size
    for start in range(0, len(paths), batch_size):
        chunk: List[str] = []
        images = []
        for path in paths[start:start + batch_size]:
            try:
                images.append(decode_image(read_user_file(path, config.max_bytes), max_pixels=config.max_pixels))
                chunk.append(path)
            except (OSError, ImageDecodeError, ValueError) as e:
                report_error(path, e)
        if not chunk:
            continue
        try:
            results = captioner.caption_images(images)
        except Exception:  # noqa: BLE001 - isolate the image that breaks a batch
            results = []
            for path, img in zip(chunk, images):
                try:
                    results += captioner.caption_images([img])
                except Exception as e1:  # noqa: BLE001
                    report_error(path, e1)
                    results.append(None)
        for path, img, res in zip(chunk, images, results):
            if res is None:
                continue
            iid = to_image_id(path)
            row = {"path": path, "image_id": iid, "caption": res.caption, "tokens": res.tokens,
                   "log_prob": round(res.log_prob, 6), "finished": res.finished}
            result.rows.append(row)
            if on_row:
                on_row(row)
            if config.attention_plot and res.attention is not None:
                out = os.path.join(config.attention_plot, f"{iid}.attention.png")
                plot_attention(path, img, res.tokens, res.attention, captioner.config.feature_shape, out)
    return result


def main(args, runner=None) -> int:
    def on_row(row: dict) -> None:
        if args.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            print(f"{row['path']}\t{row['caption']}", flush=True)

    def on_error(row: dict) -> None:
        print(f"captionbeam caption: {row['path']}: {row['error']}: {row['message']}", file=sys.stderr)
        if args.json:
            print(json.dumps(row), flush=True)

    result = run(config_from_args(args), on_row=on_row, on_error=on_error)
    for line in result.summary_lines():
        print(f"captionbeam caption: {line}", file=sys.stderr)
    return result.exit_code
