"""Benchmark (not a test): the GPU path in one short run. Writes one JSON file per section into OUT.

    .venv/bin/python benchmarks/gpu.py OUT                # on a machine with a GPU (about 5 minutes)
    .venv/bin/python benchmarks/gpu.py OUT --dry-run      # tiny sizes on the CPU (what the test runs)

Sections (each in ``OUT/<section>.json``; ``OUT/summary.json`` has them all):

- ``env``: backend, TensorFlow / Keras versions, visible GPUs, ``nvidia-smi`` name and driver.
- ``features``: images/s of the VGG16 (``weights=None`` is the same compute as ImageNet weights) and
  MobileNet encoders at batch 32 / 128 / 256, float32 and mixed precision (``mixed_bfloat16``, and
  ``mixed_float16`` on a GPU), with the TFLOP/s that VGG16's 15.5 GMACs per 224x224 image implies and
  its fraction of the chip's ceiling (``--peak-tflops``). The images are uint8 batches already on the
  host, as RunInference hands them to the encoder: the host-to-device copy is in the figure.
- ``training`` (TensorFlow backend only): target tokens/s of the project's own ``CaptionModel``s
  (merge, attention, and every other registered architecture) under the trainer's replica step, with
  one replica and with ``MirroredStrategy`` over all visible GPUs, mixed precision and ``jit_compile``
  on and off. Synthetic features and captions of Flickr8k's shape (7x7x1024 map, vocabulary 3,000,
  22 tokens).
- ``decode_limit``: JPEG decode + resize rate of one CPU core with the bulk job's own loader
  (``pipelines.images.load_image``), against the encoder's images/s: the number of decode cores the
  GPU needs before the CPU side becomes the limit of ``captionbeam bulk`` / ``features``.

Without TensorFlow (the device image of this workplace has Keras' JAX and PyTorch backends, not
TensorFlow, and the TensorFlow wheels are far over what can be carried to it) ``features`` still runs
on ``KERAS_BACKEND=jax``: the encoder compute is Keras' own, whichever backend runs it. ``training``
then says it was skipped and why.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

VGG16_GMACS_224 = 15.5  # multiply-accumulates per 224x224 image, VGG16 with its top (Simonyan & Zisserman)
# H200 SXM dense ceilings (vendor datasheet): fp32 67 TFLOP/s, bf16/fp16 tensor cores 990 TFLOP/s.
DEFAULT_PEAK_TFLOPS = {"float32": 67.0, "mixed_bfloat16": 990.0, "mixed_float16": 990.0}


def _backend() -> str:
    if "KERAS_BACKEND" not in os.environ:
        try:
            import tensorflow  # noqa: F401
            os.environ["KERAS_BACKEND"] = "tensorflow"
        except ImportError:
            os.environ["KERAS_BACKEND"] = "jax"
    return os.environ["KERAS_BACKEND"]


def _timed(fn: Callable[[], object], iters: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` (which must block until its result is ready), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def _block(x):
    """Wait for a backend tensor (JAX and TF run asynchronously on a GPU)."""
    import numpy as np
    return np.asarray(x).ravel()[:1]


def env_section() -> Dict[str, object]:
    import keras
    out: Dict[str, object] = {"backend": keras.backend.backend(), "keras": keras.__version__,
                              "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import tensorflow as tf
        out["tensorflow"] = tf.__version__
        out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        out["tf_built_with_cuda"] = tf.test.is_built_with_cuda()
    except ImportError:
        out["tensorflow"] = None
        try:
            import jax
            out["gpus"] = [str(d) for d in jax.devices() if d.platform == "gpu"]
        except ImportError:
            out["gpus"] = []
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    return out


def _encoder(name: str, size: int):
    import keras
    if name == "vgg16":
        return keras.applications.VGG16(weights=None, include_top=size == 224, input_shape=(size, size, 3))
    return keras.applications.MobileNet(weights=None, include_top=False, pooling="avg",
                                        input_shape=(size, size, 3))


def features_section(dry: bool, gpu: bool, peak: Dict[str, float]) -> List[Dict[str, object]]:
    """images/s of each encoder x batch x precision; the preprocessing (cast, mean) runs in the graph."""
    import keras
    import numpy as np
    size = 32 if dry else 224
    batches = (2,) if dry else (32, 128, 256)
    iters = 1 if dry else 10
    policies = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])
    rows = []
    for name in ("vgg16", "mobilenet"):
        for policy in policies:
            keras.mixed_precision.set_dtype_policy(policy)
            model = _encoder(name, size)
            model.compile(jit_compile=gpu)  # XLA where it helps; the CPU dry run keeps the plain graph
            for batch in batches:
                x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
                x = x.astype("float32") - 127.5  # what preprocess_input does, outside the timed call
                try:
                    sec = _timed(lambda: _block(model.predict_on_batch(x)), iters, warmup=1 if dry else 2)
                except Exception as e:  # out of memory at one batch size must not lose the others
                    rows.append({"encoder": name, "policy": policy, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                row = {"encoder": name, "policy": policy, "batch": batch, "image_size": size,
                       "images_per_s": round(batch / sec, 2), "ms_per_batch": round(sec * 1e3, 3)}
                if name == "vgg16" and size == 224:
                    tflops = batch / sec * VGG16_GMACS_224 * 2 / 1e3
                    row["tflops"] = round(tflops, 2)
                    row["fraction_of_peak"] = round(tflops / peak[policy], 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
            del model
            keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy("float32")
    return rows


def _training_rows(dry: bool, gpu: bool) -> List[Dict[str, object]]:
    import keras
    import numpy as np
    import tensorflow as tf

    from captionbeam.model.config import ARCHITECTURES, ModelConfig
    from captionbeam.model.architectures import build_model

    tf.get_logger().setLevel("ERROR")  # one tf.function per configuration is intended, not retracing
    vocab, length, batch = (50, 6, 4) if dry else (3000, 22, 64)
    grid, channels = (2, 8) if dry else (7, 1024)
    steps = 1 if dry else 20
    gpus = tf.config.list_logical_devices("GPU")
    strategies = [("one_device", lambda: tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0"))]
    if gpus:
        strategies.append((f"mirrored_{len(gpus)}gpu", lambda: tf.distribute.MirroredStrategy()))
    policies = [None, "mixed_bfloat16"] if gpu else [None]
    rows = []
    rng = np.random.default_rng(0)
    for arch in ARCHITECTURES:
        spatial = arch not in ("merge", "inject")
        shape = (grid, grid, channels) if spatial else (channels,)
        for strategy_name, make in strategies:
            for policy in policies:
                for jit in (False, True):
                    strategy = make()
                    global_batch = batch * strategy.num_replicas_in_sync
                    config = ModelConfig(arch=arch, vocab_size=vocab, feature_shape=list(shape), max_length=length)
                    with strategy.scope():
                        model = build_model(config, dtype_policy=policy)
                        optimizer = keras.optimizers.Adam(1e-3)
                        optimizer.build(model.trainable_variables)
                    feats = rng.standard_normal((global_batch,) + shape).astype("float32")
                    toks = rng.integers(4, vocab, (global_batch, length + 1)).astype("int32")
                    ds = tf.data.Dataset.from_tensors({"feature": feats, "input": toks[:, :-1], "target": toks[:, 1:]})
                    it = iter(strategy.experimental_distribute_dataset(ds.repeat()))

                    def replica_step(b):
                        mask = tf.cast(tf.not_equal(b["target"], 0), tf.float32)
                        with tf.GradientTape() as tape:
                            logits, attention = model.forward(b["feature"], b["input"], training=True)
                            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(b["target"], logits) * mask)
                            if attention is not None:
                                loss += model.attention_penalty(attention, mask)
                            loss = loss / float(global_batch * length)
                        grads = tape.gradient(loss, model.trainable_variables)
                        optimizer.apply_gradients(zip(grads, model.trainable_variables))
                        return tf.reduce_sum(mask)

                    # XLA compiles the replica step; the iterator's next() stays outside it (no XLA kernel).
                    compiled = tf.function(replica_step, jit_compile=jit)

                    @tf.function
                    def step():
                        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(compiled, args=(next(it),)),
                                               axis=None)
                    row = {"arch": arch, "strategy": strategy_name, "replicas": strategy.num_replicas_in_sync,
                           "policy": policy or "float32", "jit_compile": jit, "global_batch": global_batch}
                    try:
                        sec = _timed(lambda: float(step()), steps, warmup=1 if dry else 3)
                        row.update(tokens_per_s=round(global_batch * length / sec, 1), ms_per_step=round(sec * 1e3, 3))
                    except Exception as e:  # an XLA or strategy failure is a finding, not a crash of the run
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def training_section(dry: bool, gpu: bool) -> Dict[str, object]:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return {"skipped": "TensorFlow is not installed here: the trainer is TensorFlow code (tf.distribute)"}
    return {"rows": _training_rows(dry, gpu),
            "note": "" if gpu else "no GPU visible: CPU figures, MirroredStrategy over GPUs not run"}


def decode_limit_section(encoder_rows: List[Dict[str, object]], dry: bool) -> Dict[str, object]:
    """One core's JPEG decode + resize rate with the jobs' own loader, against the best encoder rate."""
    import numpy as np
    from PIL import Image
    try:
        from captionbeam.pipelines.images import load_image
    except ImportError as e:  # Beam-side code missing on a bare device image
        return {"skipped": f"pipelines.images not importable: {e}"}
    side, size, n = (64, 32, 8) if dry else (500, 224, 200)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (side, int(side * 0.75), 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    data = buf.getvalue()
    sec = _timed(lambda: load_image(data, size), n, warmup=1)
    per_core = 1.0 / sec
    out: Dict[str, object] = {"jpeg_px": [side, int(side * 0.75)], "resize_to": size,
                              "decode_images_per_s_per_core": round(per_core, 1)}
    for name in ("vgg16", "mobilenet"):
        rates = [r["images_per_s"] for r in encoder_rows if r.get("encoder") == name and "images_per_s" in r]
        if rates:
            best = max(rates)
            out[f"{name}_best_images_per_s"] = best
            out[f"{name}_decode_cores_needed"] = round(best / per_core, 3)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for the JSON figures (created)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU allowed: checks the script, measures nothing")
    ap.add_argument("--sections", default="env,features,training,decode_limit",
                    help="comma-separated subset of env,features,training,decode_limit")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's dense ceiling for the VGG16 fraction (default: H200 datasheet, by precision)")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"env", "features", "training", "decode_limit"}
    if unknown:
        ap.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    _backend()
    os.makedirs(args.out, exist_ok=True)
    env = env_section()
    gpu = bool(env.get("gpus"))
    if not gpu and not args.dry_run:
        print("gpu.py: no GPU visible; measuring on the CPU anyway (use --dry-run for a quick check)", file=sys.stderr)
    peak = dict(DEFAULT_PEAK_TFLOPS)
    if args.peak_tflops:
        peak = {k: args.peak_tflops for k in peak}
    summary: Dict[str, object] = {"dry_run": args.dry_run, "env": env}
    started = time.time()
    if "features" in sections:
        summary["features"] = features_section(args.dry_run, gpu, peak)
    if "training" in sections:
        summary["training"] = training_section(args.dry_run, gpu)
    if "decode_limit" in sections:
        summary["decode_limit"] = decode_limit_section(summary.get("features", []), args.dry_run)
    summary["seconds"] = round(time.time() - started, 1)
    for key, value in summary.items():
        if key in ("env", "features", "training", "decode_limit"):
            with open(os.path.join(args.out, f"{key}.json"), "w") as f:
                json.dump(value, f, indent=2)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"gpu.py: wrote {len(sections) + 1} JSON files to {args.out} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
