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
    """This process's own peak RSS: VmHWM of its memory map on Linux. ``ru_maxrss`` is not: Linux keeps it
    across fork + exec, so a child started by a parent holding 1.4 GB reported at least 1.4 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
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
    from captionbeam.model.caption_files import parse_split_file
    text = os.path.join(SHARED, "data", "flickr8k", "text")
    ids = []
    for split in ("train", "dev"):
        with open(os.path.join(text, f"Flickr_8k.{split}Images.txt")) as f:
            ids += parse_split_file(f.read())
    # the weights file itself: KERAS_HOME is read when keras is first imported, which may be before this
    weights = os.path.join(keras_home, "models", "mobilenet_1_0_224_tf_no_top.h5")
    encoder = keras.applications.MobileNet(weights=weights, include_top=False, pooling="avg",
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


# ----------------------------------------------------------------------------- stage 2: records
def load_captions(image_ids):
    from captionbeam.model.caption_files import group, parse_flickr8k
    from captionbeam.model.text import clean_seed, wrap
    with open(os.path.join(SHARED, "data", "flickr8k", "text", "Flickr8k.token.txt"), encoding="utf-8") as f:
        grouped = group(parse_flickr8k(f.read()))
    return {i: [wrap(clean_seed(c)) for c in grouped[i]] for i in image_ids if i in grouped}


def prepare_records(cache: str, size: int, shards: int = 8) -> str:
    """``--data`` dir for the first ``size`` train images (+ the dev split), tutorial cleaning."""
    out = os.path.join(cache, f"data_{size}")
    if os.path.exists(os.path.join(out, "stats.json")):
        return out
    import numpy as np
    import tensorflow as tf
    from collections import Counter
    from captionbeam.model import records
    from captionbeam.model.caption_files import parse_split_file
    from captionbeam.model.vocab import Vocabulary
    npz = np.load(compute_features(cache))
    index = {str(i): k for k, i in enumerate(npz["ids"])}
    feats = npz["features"]
    text = os.path.join(SHARED, "data", "flickr8k", "text")
    splits = {}
    for split in ("train", "dev"):
        with open(os.path.join(text, f"Flickr_8k.{split}Images.txt")) as f:
            splits[split] = parse_split_file(f.read())
    splits["train"] = splits["train"][:size]
    caps = {s: load_captions(ids) for s, ids in splits.items()}
    counts = Counter(t for c in caps["train"].values() for cap in c for t in cap[1:-1])
    vocab = Vocabulary.from_counts(counts, min_count=1)
    os.makedirs(out, exist_ok=True)
    vocab.save(os.path.join(out, "vocab.txt"))
    records.FeaturesSpec(encoder="mobilenet", feature_shape=[int(feats.shape[1])], image_size=[224, 224],
                         preprocessing="mobilenet", weights="imagenet").save(out)
    for split, by_id in caps.items():
        n = shards if split == "train" else 2
        writers = [tf.io.TFRecordWriter(os.path.join(out, f"{split}-{k:05d}-of-{n:05d}.tfrecord")) for k in range(n)]
        for k, (iid, cs) in enumerate(by_id.items()):
            writers[k % n].write(records.training_example(iid, feats[index[iid]], [vocab.encode(c) for c in cs]))
        for w in writers:
            w.close()
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump({"train_images": len(caps["train"]), "vocab": len(vocab)}, f)
    return out


# ----------------------------------------------------------------------------- stage 3: the two trainers
def child_ours(data: str, steps: int, batch: int) -> dict:
    """``captionbeam train --arch merge`` (tutorial sizes) for ``steps`` steps; tokens/s from its log lines."""
    import logging
    import re
    import tempfile
    from captionbeam.launch.cli import main
    records_ = []

    class Grab(logging.Handler):
        def emit(self, record):
            records_.append(record.getMessage())

    logging.getLogger("captionbeam.train").addHandler(Grab())
    model_dir = tempfile.mkdtemp(prefix="cb_bench_")
    argv = ["train", "--data", data, "--model-dir", model_dir, "--arch", "merge", "--epochs", "1",
            "--steps-per-epoch", str(steps), "--batch-size", str(batch), "--log-every", "20",
            "--val-split", "none", "--checkpoint-every", str(10 ** 9), "--strategy", "one_device"]
    rc = main(argv)
    shutil.rmtree(model_dir, ignore_errors=True)
    rates = [float(m.group(1).replace(",", "")) for r in records_ for m in [re.search(r"tokens/s ([0-9,]+) lr", r)] if m]
    steady = rates[1:] or rates                       # the first window includes tf.function tracing
    steady.sort()
    return {"rc": rc, "tokens_per_s": steady[len(steady) // 2], "windows": len(rates),
            "command": "captionbeam " + " ".join(argv), "peak_rss_mb": peak_rss_mb()}


def child_tutorial(data: str, steps: int, batch: int, max_images: int) -> dict:
    """The tutorial: create_sequences (one example per caption prefix, one-hot targets) in memory, then
    model.fit on the per-prefix merge model with the same layer sizes."""
    import numpy as np
    import keras
    import tensorflow as tf
    from captionbeam.model import records
    from captionbeam.model.data import split_files
    from captionbeam.model.vocab import Vocabulary
    vocab = Vocabulary.load(os.path.join(data, "vocab.txt"))
    V = len(vocab)
    feats, caps = [], []
    for path in split_files(data, "train"):
        for raw in tf.data.TFRecordDataset(path):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            feats.append(np.asarray(f["feature"].float_list.value, np.float32))
            caps.append(records.split_captions(f["caption_ids"].int64_list.value, f["caption_lengths"].int64_list.value))
    feats, caps = feats[:max_images], caps[:max_images]
    max_length = max(len(c) for cs in caps for c in cs)
    t0 = time.time()
    # --- the tutorial's create_sequences, vectorised only in bookkeeping, same arrays
    n = sum(len(c) - 1 for cs in caps for c in cs)
    X1 = np.zeros((n, feats[0].shape[0]), np.float32)
    X2 = np.zeros((n, max_length), np.int32)
    y = np.zeros((n, V), np.float32)                     # to_categorical: one-hot targets
    k = 0
    for f, cs in zip(feats, caps):
        for c in cs:
            for i in range(1, len(c)):
                X1[k] = f
                X2[k, max_length - i:] = c[:i]           # pad_sequences pads at the front
                y[k, c[i]] = 1.0
                k += 1
    build_s = time.time() - t0
    inputs1 = keras.Input(shape=(X1.shape[1],))
    fe2 = keras.layers.Dense(256, activation="relu")(keras.layers.Dropout(0.5)(inputs1))
    inputs2 = keras.Input(shape=(max_length,))
    se1 = keras.layers.Embedding(V, 256, mask_zero=True)(inputs2)
    se3 = keras.layers.LSTM(256)(keras.layers.Dropout(0.5)(se1))
    decoder2 = keras.layers.Dense(256, activation="relu")(keras.layers.add([fe2, se3]))
    outputs = keras.layers.Dense(V, activation="softmax")(decoder2)
    model = keras.Model(inputs=[inputs1, inputs2], outputs=outputs)
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    warm = batch * 10
    model.fit([X1[:warm], X2[:warm]], y[:warm], batch_size=batch, epochs=1, verbose=0)
    m = min(n, batch * steps)
    t1 = time.time()
    model.fit([X1[:m], X2[:m]], y[:m], batch_size=batch, epochs=1, verbose=0)
    seconds = time.time() - t1
    return {"tokens_per_s": m / seconds, "examples": n, "images": len(feats), "array_gb": (X1.nbytes + X2.nbytes + y.nbytes) / 1e9,
            "create_sequences_s": build_s, "peak_rss_mb": peak_rss_mb(), "vocab": V, "max_length": max_length}


def run_child(kind: str, data: str, steps: int, batch: int, max_images: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--data", data, "--steps", str(steps),
           "--batch", str(batch), "--max-images", str(max_images)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    t0 = time.time()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr[-1500:]}", "wall_s": time.time() - t0}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 6000], help="training images (default: 1000 6000)")
    ap.add_argument("--cache", default="/tmp/captionbeam_bench", help="features / records cache")
    ap.add_argument("--steps", type=int, default=200, help="timed training steps per run (default: 200)")
    ap.add_argument("--batch", type=int, default=64, help="examples per batch for both (default: 64)")
    ap.add_argument("--tutorial-max-gb", type=float, default=3.0,
                    help="run the tutorial on the largest image subset whose create_sequences arrays fit in this "
                         "many GB (default: 3; the machine is shared)")
    ap.add_argument("--child", choices=["ours", "tutorial"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--max-images", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "ours":
        print(json.dumps(child_ours(args.data, args.steps, args.batch)))
        return 0
    if args.child == "tutorial":
        print(json.dumps(child_tutorial(args.data, args.steps, args.batch, args.max_images or 10 ** 9)))
        return 0
    results = []
    for size in args.sizes:
        data = prepare_records(args.cache, size)
        with open(os.path.join(data, "vocab.txt")) as f:
            vocab = sum(1 for _ in f)
        # tutorial arrays: ~ (captions * ~11.7 prefixes) * (4*V + 4*1024 + 4*max_len) bytes
        per_image_gb = 5 * 11.7 * (4 * vocab + 4 * 1024 + 4 * 40) / 1e9
        tut_images = min(size, int(args.tutorial_max_gb / per_image_gb))
        ours = run_child("ours", data, args.steps, args.batch)
        tut = run_child("tutorial", data, args.steps, args.batch, tut_images)
        row = {"train_images": size, "vocab": vocab, "ours": ours, "tutorial": tut,
               "tutorial_images": tut_images, "tutorial_projected_full_gb": round(per_image_gb * size, 1)}
        if "error" not in ours and "error" not in tut:
            row["tokens_per_s_ratio"] = ours["tokens_per_s"] / tut["tokens_per_s"]
            row["peak_rss_ratio"] = tut["peak_rss_mb"] / ours["peak_rss_mb"]
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
    print("\n| train images | vocab | ours tokens/s | tutorial tokens/s | speed-up | ours peak RSS | tutorial peak RSS "
          "(images used) | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        o, t = r["ours"], r["tutorial"]
        if "error" in o or "error" in t:
            print(f"| {r['train_images']} | {r['vocab']} | {o.get('error', '')[:60]} | {t.get('error', '')[:60]} | | | | |")
            continue
        print(f"| {r['train_images']:,} | {r['vocab']:,} | {o['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s_ratio']:.1f}x | {o['peak_rss_mb']:,.0f} MB | {t['peak_rss_mb']:,.0f} MB "
              f"({r['tutorial_images']:,}; arrays {t['array_gb']:.2f} GB, full set ~{r['tutorial_projected_full_gb']} GB) "
              f"| {r['peak_rss_ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
