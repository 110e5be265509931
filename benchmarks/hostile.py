"""Peak memory of ``captionbeam features`` and ``captionbeam bulk`` on a hostile input set vs a clean one.

The clean set: 3 loose JPEGs and a ``.tar.gz`` of 2 more. The hostile set: the same good images plus a
``.tar.gz`` member of ``--huge-gib`` GiB of zeros (a few MB compressed), an 8 GiB sparse file, a symlink
to ``/dev/zero``, a FIFO, dangling / looping symlinks, a directory named ``x.jpg``, non-regular tar
members, tars cut before their end, a TFRecord with an oversized record and a forged record length
(``tests/plugins/hostile.py``). Each job runs in its own child process (``--child``), which reports its
own peak RSS (VmHWM) and its counts; the parent prints one line per job and set and the ratio
hostile / clean. Before the byte limit, the hostile set OOM-killed both jobs (the tar member was read
whole, the FIFO hung features forever).

    .venv/bin/python benchmarks/hostile.py [--huge-gib 4] [--max-bytes 67108864] [--workdir work/bench/hostile]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(argv) -> int:
    """Run one captionbeam command in this process; print {rc, peak_rss_mb, seconds} as JSON."""
    import contextlib
    import io
    from captionbeam.launch.cli import main
    t0 = time.monotonic()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    print(json.dumps({"rc": rc, "peak_rss_mb": round(peak_rss_mb(), 1), "seconds": round(time.monotonic() - t0, 1),
                      "stdout": out.getvalue()[-4000:]}))
    return 0


def tiny_model_dir(directory: str) -> str:
    """A random-weight merge model on 32 px MobileNet features (weights none): enough to run bulk."""
    import keras
    from captionbeam.model import records
    from captionbeam.model.architectures import build_model
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.encoders import build_encoder
    from captionbeam.model.vocab import RESERVED, Vocabulary
    os.makedirs(directory, exist_ok=True)
    enc = build_encoder("mobilenet", weights="none", image_size=32)
    vocab = Vocabulary(RESERVED + ("a", "dog", "cat", "runs"))
    keras.utils.set_random_seed(0)
    config = ModelConfig(arch="merge", vocab_size=len(vocab), max_length=8, feature_shape=list(enc.feature_shape),
                         units=16, embedding_dim=16, dropout=0.0, encoder_description=enc.description, vocab_sha256=vocab.sha256())
    model = build_model(config)
    config.save(directory)
    vocab.save(os.path.join(directory, "vocab.txt"))
    records.FeaturesSpec(encoder="mobilenet", feature_shape=list(enc.feature_shape), image_size=[32, 32],
                         preprocessing=enc.preprocessing, weights="none",
                         encoder_spec=enc.description, resize_method="bilinear").save(directory)
    model.save_weights(os.path.join(directory, "best.weights.h5"))
    return directory


def run_child(argv) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--", *argv], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1800)
    if p.returncode != 0 or not p.stdout.strip():
        raise SystemExit(f"child failed ({p.returncode}): {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _accounting(job: str, out: str) -> str:
    """What the job's own outputs say: records + dead letters (features), the bulk counters."""
    import glob
    if job == "features":
        spec = json.load(open(os.path.join(out, "features_spec.json")))
        return f"{spec['count']} records + {spec['dead_letters']} dead letters"
    c = json.load(open(sorted(glob.glob(os.path.join(out, "runs", "*.json")))[-1]))["counters"]
    return f"matched {c['matched']} = captioned {c['captioned']} + failed {c['failed']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--huge-gib", type=float, default=4.0, help="size of the zero tar member (default 4 GiB)")
    ap.add_argument("--max-bytes", type=int, default=None, help="--max-bytes of both jobs (default: theirs, 64 MiB)")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "work", "bench", "hostile"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.rest)
    from tests.plugins.hostile import write_hostile
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    t0 = time.monotonic()
    sets = {"clean": write_hostile(os.path.join(args.workdir, "clean"), clean_only=True),
            "hostile": write_hostile(os.path.join(args.workdir, "hostile"), int(args.huge_gib * (1 << 30)))}
    tgz = os.path.join(args.workdir, "hostile", "shards", "hostile.tar.gz")
    print(f"inputs written in {time.monotonic() - t0:.1f}s; hostile.tar.gz is {os.path.getsize(tgz) / 1e6:.1f} MB "
          f"holding a {args.huge_gib:g} GiB zero member")
    model_dir = tiny_model_dir(os.path.join(args.workdir, "model"))
    limit = ["--max-bytes", str(args.max_bytes)] if args.max_bytes else []
    from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
    max_bytes = args.max_bytes or DEFAULT_MAX_BYTES
    results = {}
    for job in ("features", "bulk"):
        for name, h in sets.items():
            out = os.path.join(args.workdir, f"{job}-{name}")
            if job == "features":
                cmd = ["--log-level", "ERROR", "features", "--images", *h.globs, "--output", out, "--encoder",
                       "mobilenet", "--weights", "none", "--image-size", "32", *limit]
            else:
                cmd = ["--log-level", "ERROR", "bulk", "--images", *h.globs, "--model-dir", model_dir,
                       "--output", out, *limit]
            r = run_child(cmd)
            results[(job, name)] = r
            print(f"{job:<9} {name:<8} exit {r['rc']}  peak RSS {r['peak_rss_mb']:7.1f} MiB  {r['seconds']:6.1f}s  "
                  f"({h.inputs} inputs -> {_accounting(job, out)})")
    print()
    for job in ("features", "bulk"):
        c, h = results[(job, "clean")], results[(job, "hostile")]
        delta = h["peak_rss_mb"] - c["peak_rss_mb"]
        print(f"{job}: hostile / clean peak RSS = {h['peak_rss_mb'] / c['peak_rss_mb']:.2f} "
              f"(+{delta:.0f} MiB; bound: --max-bytes {max_bytes >> 20} MiB x 1 worker = {max_bytes >> 20} MiB; "
              f"the zero member alone is {args.huge_gib * 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
