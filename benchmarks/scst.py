"""Benchmark (not a test): self-critical training throughput (``captionbeam train --objective scst``)
against cross-entropy training of the same model on the same records, in one run.

Both train the same architecture with the same number of captions per step: cross-entropy on
``--images-per-step x --samples`` reference captions (teacher forcing), SCST on ``--images-per-step``
images with ``--samples`` sampled captions each (sampling through the step interface, the CIDEr-D
reward in NumPy, then the teacher-forced pass on the samples for the gradient). Figures: captions/s
(reference captions for cross-entropy, sampled captions for SCST), images/s, target tokens/s, and the
SCST / cross-entropy ratios. Each figure is from the second epoch (the first includes tracing); the
validation at each epoch end is outside them.

    .venv/bin/python benchmarks/scst.py                                   # synthetic records (no ../shared)
    .venv/bin/python benchmarks/scst.py --data work/flickr8k/data-mobilenet-conv --arch attention

Synthetic records: ``--images`` images with a 7x7x``--channels`` feature map and 5 captions each of 8-16
words from a ``--vocab``-word vocabulary, the words depending on the image's class.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_synthetic(directory: str, images: int, vocab_size: int, channels: int, seed: int = 0) -> str:
    import tensorflow as tf
    from captionbeam.model import records
    from captionbeam.model.vocab import RESERVED, Vocabulary
    os.makedirs(directory, exist_ok=True)
    vocab = Vocabulary(RESERVED + tuple(f"w{i}" for i in range(vocab_size - len(RESERVED))))
    vocab.save(os.path.join(directory, "vocab.txt"))
    records.FeaturesSpec(encoder="synthetic", feature_shape=[7, 7, channels], image_size=[224, 224],
                         preprocessing="none", weights="none").save(directory)
    rng = np.random.default_rng(seed)
    classes = 20
    words = len(vocab) - len(RESERVED)
    topics = [rng.choice(words, 40, replace=False) + len(RESERVED) for _ in range(classes)]
    stats = {"splits": {}}
    for split, n in (("train", images), ("dev", max(images // 10, 16))):
        path = os.path.join(directory, f"{split}-00000-of-00001.tfrecord")
        with tf.io.TFRecordWriter(path) as w:
            for i in range(n):
                k = int(rng.integers(classes))
                feat = rng.normal(0, 0.3, (49, channels)).astype("float32")
                feat[k % 49, k % channels] += 3.0
                caps = [[2] + list(rng.choice(topics[k], int(rng.integers(8, 17)))) + [3] for _ in range(5)]
                w.write(records.training_example(f"{split}_{i}", feat.reshape(7, 7, channels), caps))
        stats["splits"][split] = {"images": n, "captions": 5 * n}
    with open(os.path.join(directory, "stats.json"), "w") as f:
        json.dump(stats, f)
    return directory


def second_epoch(model_dir: str):
    with open(os.path.join(model_dir, "history.json")) as f:
        epochs = [e for e in json.load(f)["epochs"] if e.get("epoch", 0) > 0]
    return epochs[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="a --data dir (default: synthetic records)")
    ap.add_argument("--arch", default="attention", help="architecture of both runs (default: attention)")
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--images-per-step", type=int, default=32, help="SCST images per step (default: 32)")
    ap.add_argument("--samples", type=int, default=5, help="SCST samples per image (default: 5)")
    ap.add_argument("--steps", type=int, default=15, help="steps per epoch, 2 epochs each (default: 15)")
    ap.add_argument("--images", type=int, default=600, help="synthetic: training images (default: 600)")
    ap.add_argument("--vocab", type=int, default=2500, help="synthetic: vocabulary size (default: 2500)")
    ap.add_argument("--channels", type=int, default=256, help="synthetic: feature map channels (default: 256)")
    ap.add_argument("--workdir", default=None, help="where the model dirs go (default: a temporary dir)")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from captionbeam.model.config import ModelConfig, TrainConfig
    from captionbeam.model.scst import train_scst
    from captionbeam.model.train import train
    work = args.workdir or tempfile.mkdtemp(prefix="captionbeam_scst_bench_")
    os.makedirs(work, exist_ok=True)
    data = args.data or write_synthetic(os.path.join(work, "data"), args.images, args.vocab, args.channels)
    xent_dir, scst_dir = os.path.join(work, "xent"), os.path.join(work, "scst")
    for d in (xent_dir, scst_dir):
        shutil.rmtree(d, ignore_errors=True)
    captions_per_step = args.images_per_step * args.samples
    common = dict(data=data, epochs=2, steps_per_epoch=args.steps, strategy="one_device", log_every=args.steps,
                  checkpoint_every=10 ** 6, early_stopping_patience=0, max_val_batches=2, shuffle_buffer=2000)
    train(TrainConfig(model_dir=xent_dir, batch_size=captions_per_step, learning_rate=1e-3, **common),
          ModelConfig(arch=args.arch, units=args.units, embedding_dim=args.units, attention_units=args.units,
                      dropout=0.3))
    train_scst(TrainConfig(model_dir=scst_dir, batch_size=args.images_per_step, objective="scst", init_from=xent_dir,
                           samples=args.samples, learning_rate=5e-5, **common))
    x, s = second_epoch(xent_dir), second_epoch(scst_dir)
    x_caps = captions_per_step * args.steps / x["seconds"]
    s_caps = s["samples_per_s"]
    s_tokens = s_caps * s["sampled_length"]
    rows = [("cross-entropy (teacher forcing)", x_caps, x_caps / args.samples, x["tokens_per_s"]),
            (f"SCST (K={args.samples} samples per image)", s_caps, s_caps / args.samples, s_tokens)]
    print(f"\nscst benchmark: arch {args.arch}, {args.units} units, data {data}, {captions_per_step} captions per "
          f"step ({args.images_per_step} images x {args.samples} for SCST), {args.steps} steps, second epoch")
    print(f"{'':36} {'captions/s':>11} {'images/s':>9} {'tokens/s':>9}")
    for name, caps, imgs, toks in rows:
        print(f"{name:36} {caps:11.1f} {imgs:9.1f} {toks:9.0f}")
    print(f"{'SCST / cross-entropy':36} {s_caps / x_caps:11.2f} {s_caps / x_caps:9.2f} "
          f"{s_tokens / x['tokens_per_s']:9.2f}")
    print(f"(SCST sampled {s['sampled_length']:.1f} tokens per caption, <end> included; mean reward "
          f"{s['reward']:.3f})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
