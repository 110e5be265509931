"""Benchmark (not a test): images/s of the ``captionbeam features`` job (DirectRunner, batched
RunInference) against the classic tutorial's loop, which calls the Keras model's ``predict`` once per
image (``load_img`` -> ``img_to_array`` -> ``preprocess_input`` -> ``predict``), with the same encoder on
the same images, in one run. Also checks that both produce the same features.

    .venv/bin/python benchmarks/features.py                      # mobilenet (imagenet) 500 + vgg16 (none) 48
    .venv/bin/python benchmarks/features.py --cases mobilenet:imagenet:200

Uses ../shared (Flickr8k images, offline ImageNet weights copied into a temporary KERAS_HOME); the
pipeline figure is wall time of the whole job, including Beam start-up and the encoder load.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DEFAULT_IMAGES = os.path.join(SHARED, "data", "flickr8k", "images")
DEFAULT_WEIGHTS = os.path.join(SHARED, "models", "keras")


def _setup_keras_home(tmp: str, weights_dir: str) -> None:
    home = os.path.join(tmp, "keras_home")
    os.makedirs(os.path.join(home, "models"), exist_ok=True)
    for f in glob.glob(os.path.join(weights_dir, "*.h5")):
        shutil.copy(f, os.path.join(home, "models"))
    os.environ["KERAS_HOME"] = home


def _subset(images_dir: str, n: int, tmp: str, tag: str):
    files = sorted(glob.glob(os.path.join(images_dir, "*.jpg")))[:n]
    if len(files) < n:
        raise SystemExit(f"only {len(files)} images in {images_dir}, wanted {n}")
    d = os.path.join(tmp, f"images-{tag}")
    os.makedirs(d, exist_ok=True)
    for f in files:
        os.symlink(f, os.path.join(d, os.path.basename(f)))
    return d, files


def tutorial_loop(encoder, files, size: int):
    """The classic tutorial's way: one image at a time through ``model.predict``."""
    from keras.utils import img_to_array, load_img
    import numpy as np
    model = encoder.model
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)  # warm-up, not timed
    feats = {}
    start = time.time()
    for path in files:
        image = img_to_array(load_img(path, target_size=(size, size)))
        x = encoder.preprocess(image[None].astype("uint8"))
        feats[os.path.splitext(os.path.basename(path))[0]] = model.predict(x, verbose=0)[0]
    return time.time() - start, feats


def pipeline_run(name, weights, size, image_dir, out, batch_size, beam_args):
    from captionbeam.model.encoders import EncoderConfig
    from captionbeam.pipelines.features import FeaturesConfig, run
    config = FeaturesConfig(images=(os.path.join(image_dir, "*.jpg"),), output=out,
                            encoder=EncoderConfig(name=name, weights=weights, image_size=size), batch_size=batch_size)
    result = run(config, beam_args)
    return result


def read_features(out):
    from captionbeam.model import records
    from captionbeam.pipelines.io import match
    import tensorflow as tf
    feats = {}
    for rec in tf.data.TFRecordDataset(match([records.shard_pattern(out, records.FEATURES_PREFIX)])):
        r = records.parse_feature_example(rec.numpy())
        feats[r.image_id] = r.feature
    return feats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-dir", default=DEFAULT_IMAGES)
    parser.add_argument("--weights-dir", default=DEFAULT_WEIGHTS)
    parser.add_argument("--cases", nargs="+", default=["mobilenet:imagenet:500", "vgg16:none:48"],
                        help="ENCODER:WEIGHTS:N_IMAGES (default: mobilenet:imagenet:500 vgg16:none:48)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--multi-process", action="store_true",
                        help="also run the job with --direct_running_mode=multi_processing --direct_num_workers=2")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.images_dir):
        print(f"no images at {args.images_dir} (../shared is needed for this benchmark)", file=sys.stderr)
        return 1
    import logging
    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="bench-features-")
    _setup_keras_home(tmp, args.weights_dir)
    import numpy as np
    from captionbeam.model.encoders import build_encoder
    rows = []
    for case in args.cases:
        name, weights, n = case.split(":")
        n = int(n)
        image_dir, files = _subset(args.images_dir, n, tmp, f"{name}-{n}")
        encoder = build_encoder(name, weights)
        size = encoder.image_size
        loop_s, loop_feats = tutorial_loop(encoder, files, size)
        del encoder
        runs = [("pipeline (DirectRunner, in-process)", [])]
        if args.multi_process:
            runs.append(("pipeline (DirectRunner, 2 processes)",
                         ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]))
        for label, beam_args in runs:
            out = os.path.join(tmp, f"out-{name}-{len(rows)}")
            result = pipeline_run(name, weights, size, image_dir, out, args.batch_size, beam_args)
            feats = read_features(out)
            diffs = [float(np.max(np.abs(feats[k] - loop_feats[k]))) for k in loop_feats if k in feats]
            scale = float(np.mean([np.max(np.abs(v)) for v in loop_feats.values()]))
            row = {
                "encoder": name, "weights": weights, "images": n, "image_size": size, "batch_size": args.batch_size,
                "mode": label, "loop_s": round(loop_s, 2), "loop_images_per_s": round(n / loop_s, 2),
                "pipeline_s": round(result.seconds, 2), "pipeline_images_per_s": round(n / result.seconds, 2),
                "speedup": round(loop_s / result.seconds, 2), "encoded": result.images_encoded,
                "dead_letters": result.dead_letters, "max_abs_diff_vs_loop": max(diffs) if diffs else None,
                "feature_scale": scale,
            }
            rows.append(row)
            print(f"{name:10s} {weights:8s} {n:5d} images {size}px | tutorial loop (predict per image): "
                  f"{row['loop_s']:7.1f}s {row['loop_images_per_s']:7.2f} img/s | {label}: {row['pipeline_s']:7.1f}s "
                  f"{row['pipeline_images_per_s']:7.2f} img/s | ratio x{row['speedup']:.2f} | "
                  f"features max |diff| {row['max_abs_diff_vs_loop']:.2e} (scale {scale:.2f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
