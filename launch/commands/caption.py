"""``captionbeam caption``: caption image files with a trained model, end to end.

Each file is read and decoded (Pillow: EXIF orientation, any mode -> RGB, alpha on white, size
guard), squashed to the encoder's input size, preprocessed and encoded as the features job did, then
decoded (greedy or beam search). Output: ``PATH<TAB>CAPTION`` per image, or JSON lines with
``--json``. A file that cannot be read or decoded is reported on its own (stderr; with ``--json`` also
a ``{"path", "error", "message"}`` line) and the others are still captioned.

Exit status: 0 all captioned; 1 some files failed, the rest captioned; 2 nothing captioned (or bad flags).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from launch.commands.evaluate import add_decoding_arguments, check_decoding_arguments

HELP = "caption image files with a trained model"
log = logging.getLogger("captionbeam.caption")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="trained model directory (captionbeam train --model-dir)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local paths or gs://)")
    add_decoding_arguments(parser)
    parser.add_argument("--attention-plot", metavar="DIR",
                        help="write DIR/<image id>.attention.png: the attention map of every word over the image "
                             "(attention models only)")
    parser.add_argument("--max-pixels", type=int, default=89_478_485,
                        help="refuse images with more pixels than this (decompression-bomb guard; default Pillow's)")
    parser.add_argument("--json", action="store_true",
                        help='JSON lines: {"path", "image_id", "caption", "tokens", "log_prob"} per image')


def read_bytes(path: str) -> bytes:
    if "://" in path:
        import tensorflow as tf
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


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


def main(args, pipeline_args) -> int:
    check_decoding_arguments(args)
    from pipelines.images import ImageDecodeError, decode_image
    from model.caption_files import image_id as to_image_id
    from model.captioner import Captioner
    try:
        captioner = Captioner.load(args.model_dir, beam_size=args.beam_size, max_length=args.max_length,
                                   batch_size=args.batch_size, alpha=args.length_penalty, which=args.weights)
        captioner.encoder   # build it now: a model dir without a usable encoder fails before any image
    except (OSError, ValueError) as e:
        print(f"captionbeam caption: error: --model-dir {args.model_dir}: {e}", file=sys.stderr)
        return 2
    if args.attention_plot:
        if not captioner.has_attention:
            log.warning("caption: --attention-plot ignored: the %s model has no attention", captioner.config.arch)
        else:
            os.makedirs(args.attention_plot, exist_ok=True)

    failed = done = 0

    def report_error(path: str, e: Exception) -> None:
        nonlocal failed
        failed += 1
        print(f"captionbeam caption: {path}: {type(e).__name__}: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"path": path, "error": type(e).__name__, "message": str(e)}), flush=True)

    # decode in chunks of --batch-size so memory stays bounded for long file lists
    paths = list(args.images)
    for start in range(0, len(paths), args.batch_size):
        chunk: List[str] = []
        images = []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(decode_image(read_bytes(path), max_pixels=args.max_pixels))
                chunk.append(path)
            except (OSError, ImageDecodeError, ValueError) as e:
                report_error(path, e)
        if not chunk:
            continue
        try:
            results = captioner.caption_images(images)
        except Exception as e:  # noqa: BLE001 - isolate the image that breaks a batch
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
            done += 1
            iid = to_image_id(path)
            if args.json:
                print(json.dumps({"path": path, "image_id": iid, "caption": res.caption, "tokens": res.tokens,
                                  "log_prob": round(res.log_prob, 6), "finished": res.finished},
                                 ensure_ascii=False), flush=True)
            else:
                print(f"{path}\t{res.caption}", flush=True)
            if args.attention_plot and res.attention is not None:
                out = os.path.join(args.attention_plot, f"{iid}.attention.png")
                plot_attention(path, img, res.tokens, res.attention, captioner.config.feature_shape, out)
    if done == 0:
        return 2
    return 1 if failed else 0
