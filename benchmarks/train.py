"""Benchmark (not a test): ``captionbeam train --arch merge`` (streaming tf.data, whole-sequence
teacher forcing, sparse targets) against the classic tutorial's approach (in-memory
``create_sequences`` arrays: one example per caption prefix, one-hot targets, ``model.fit`` on the
per-prefix merge model with the same layer sizes), on Flickr8k MobileNet v1 features, at two
training-set sizes. Reports tokens/s and peak RSS of each, and their ratios, in one run.

Needs ``../shared`` (Flickr8k images + MobileNet weights); the test suite never runs this.

    .venv/bin/python benchmarks/train.py [--sizes 1000 6000] [--seconds 60] [--cache /tmp/captionbeam_bench]

Stages:
1. features (cached): MobileNet v1 1.0 @224 pooled 1024-d features of the Flickr8k train + dev images,
   computed with a direct Keras loop (KERAS_HOME under the cache dir, weights copied from ../shared).
2. records (cached per size): the first N train images' captions (tutorial cleaning, min count 1 over
   those captions, as the tutorial does) as ``records.training_example`` shards + the dev split.
3. each (approach, size) runs in its own subprocess (so peak RSS, ``ru_maxrss``, is its own) for about
   ``--seconds`` of training after setup; tokens/s counts real (non-padding) target tokens.

"Tokens" are the same unit for both: one predicted word. The tutorial predicts one word per
(image, prefix) example, so its tokens/s = examples/s; ours predicts every position of a caption.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"
sys.path.insert(0, ROOT)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- stage 1: features
def compute_features(cache: str, batch: int = 64) -> str:
    out = os.path.join(cache, "mobilenet_features.npz")
    if os.path.exists(out):
        return out
    os.makedirs(cache, exist_ok=True)
    keras_home = os.path.join(cache, "keras_home")
    os.makedirs(os.path.join(keras_home, "models"), exist_ok=True)
    for f in os.listdir(os.path.join(SHARED, "models", "keras")):
        dst = os.path.join(keras_home, "models", f)
        if not os.path.exists(dst):
            shutil.copy(os.path.join(SHARED, "models", "keras", f), dst)
    os.environ["KERAS_HOME"] = keras_home
    import numpy as np
    import keras
    import tensorflow as tf
    from model.caption_files import parse_split_file
    text = os.path.join(SHARED, "data", "flickr8k", "text")
    ids = []
    for split in ("train", "dev"):
        with open(os.path.join(text, f"Flickr_8k.{split}Images.txt")) as f:
            ids += parse_split_file(f.read())
    encoder = keras.applications.MobileNet(weights="imagenet", include_top=False, pooling="avg",
                                           input_shape=(224, 224, 3))
    images = os.path.join(SHARED, "data", "flickr8k", "images")

    def load(path):
        img = tf.image.decode_jpeg(tf.io.read_file(path), channels=3)
        img = tf.image.resize(img, (224, 224))
        return keras.applications.mobilenet.preprocess_input(img)

    ds = tf.data.Dataset.from_tensor_slices([os.path.join(images, i + ".jpg") for i in ids])
    ds = ds.map(load, num_parallel_calls=2).batch(batch).prefetch(2)
    feats, t0 = [], time.time()
    predict = tf.function(lambda x: encoder(x, training=False))
    for k, b in enumerate(ds):
        feats.append(predict(b).numpy())
        done = min((k + 1) * batch, len(ids))
        rate = done / (time.time() - t0)
        print(f"features: {done}/{len(ids)} images, {rate:.1f} images/s, ETA {(len(ids) - done) / rate:.0f}s",
              flush=True)
    np.savez(out + ".tmp.npz", ids=np.array(ids), features=np.concatenate(feats))
    os.replace(out + ".tmp.npz", out)
    return out
