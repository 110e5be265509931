"""Decoding throughput: batched greedy and beam search (model.decode) vs the classic tutorial's loop.

The tutorial (``generate_desc``) captions one image at a time and calls ``model.predict`` once per
word with the whole padded prefix (``pad_sequences(maxlen=max_length)``), re-running the LSTM over
the prefix every step. Here its loop runs on the same ``CaptionModel`` (teacher-forced call on the
padded prefix, ``model.predict`` per word), on the same features as the batched decoders.

The model has the tutorial's sizes (256 units, embedding 256, vocabulary 7,579, max length 34) and
random weights: decoding cost does not depend on what the weights say, as long as every caption
runs to the same length, so all decoders are forced to run the full ``max_length`` (``<end>``
masked) for a like-for-like count. Features: random 1024-d vectors (MobileNet's pooled size), or
``--features DIR`` to use real feature records.

    python benchmarks/decode.py [--images 64] [--tutorial-images 8] [--beam-size 3] [--arch merge]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def tutorial_loop(model, features, max_length):
    """The tutorial's generate_desc: per image, per word, model.predict on the padded prefix."""
    from captionbeam.model.vocab import START_ID
    out = []
    for i in range(len(features)):
        seq = [START_ID]
        for _ in range(max_length):
            padded = np.zeros([1, max_length], np.int32)
            padded[0, :len(seq)] = seq
            logits = model.predict([features[i:i + 1], padded], verbose=0)
            word = int(np.argmax(logits[0, len(seq) - 1, 4:])) + 4     # <end> masked: full length
            seq.append(word)
        out.append(seq[1:])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="images for the batched decoders")
    p.add_argument("--tutorial-images", type=int, default=8, help="images for the (slow) tutorial loop")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", default="merge", choices=("merge", "inject", "attention"))
    p.add_argument("--vocab-size", type=int, default=7579)
    p.add_argument("--max-length", type=int, default=34)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from captionbeam.model.architectures import build_model
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.decode import Decoder
    from captionbeam.model.vocab import END_ID
    shape = [1024] if args.arch != "attention" else [7, 7, 1024]
    config = ModelConfig(arch=args.arch, vocab_size=args.vocab_size, max_length=args.max_length + 1,
                         feature_shape=shape, dropout=0.5)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config)
    # <end> never wins: every caption runs max_length tokens in every decoder (like-for-like work)
    bias = model.logits_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [-1e4]))
    feats = np.random.default_rng(0).normal(0, 1, [args.images] + shape).astype("float32")

    results = {"arch": args.arch, "vocab_size": args.vocab_size, "max_length": args.max_length,
               "threads": os.cpu_count(), "tf": tf.__version__}
    for name, beam in (("greedy", 1), (f"beam{args.beam_size}", args.beam_size)):
        dec = Decoder(model, max_length=args.max_length, beam_size=beam)
        dec(feats[:2])                                                   # trace once
        t = time.perf_counter()
        for s in range(0, len(feats), args.batch_size):
            out = dec(feats[s:s + args.batch_size])
        dt = time.perf_counter() - t
        assert (out.length == args.max_length).all()
        results[name] = {"images": len(feats), "seconds": round(dt, 3), "captions_per_s": round(len(feats) / dt, 2)}
        print(f"{name:>8}: {len(feats)} captions in {dt:.2f}s = {len(feats) / dt:.1f} captions/s", flush=True)
    n = args.tutorial_images
    tutorial_loop(model, feats[:1], 2)                                   # warm up predict
    t = time.perf_counter()
    tutorial_loop(model, feats[:n], args.max_length)
    dt = time.perf_counter() - t
    results["tutorial_predict_loop"] = {"images": n, "seconds": round(dt, 3), "captions_per_s": round(n / dt, 3)}
    print(f"tutorial: {n} captions in {dt:.2f}s = {n / dt:.2f} captions/s (model.predict per word, full prefix)")
    base = results["tutorial_predict_loop"]["captions_per_s"]
    for name in ("greedy", f"beam{args.beam_size}"):
        results[name]["speedup_vs_tutorial"] = round(results[name]["captions_per_s"] / base, 1)
        print(f"{name}: {results[name]['speedup_vs_tutorial']}x the tutorial loop")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
