"""Benchmark (not a test): images/s reading N small generated images as loose files vs tar shards vs
TFRecord shards, through captionbeam's Beam sources (``ReadImages`` -> ``DecodeImages``; no encoder),
locally and through a GCS emulator started by this script. Baseline: loose files, in the same run.

    .venv/bin/python benchmarks/shards.py                       # 10,000 images of 64x64, shards of 1,000
    .venv/bin/python benchmarks/shards.py --images 2000 --no-gcs
    .venv/bin/python benchmarks/shards.py --gcs-images 1000     # 10,000 locally, the first 1,000 on the emulator

Also reports ``captionbeam pack`` throughput (local -> local) and the raw streaming-reader speed (plain
Python over the shard files, no Beam, no decode) as a ceiling. Beam figures are wall time of the whole
pipeline (start-up, matching, reading, decoding); DirectRunner, in one process unless Beam flags say
otherwise (``--beam-arg=--direct_num_workers=2 --beam-arg=--direct_running_mode=multi_processing``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import io
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def generate(directory: str, n: int, size: int, seed: int = 0) -> int:
    """n small JPEGs (smooth random colour fields, like photos compress), deterministic."""
    import numpy as np
    from PIL import Image
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        with open(os.path.join(directory, f"img_{i:06d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        total += len(buf.getvalue())
    return total


def beam_read_decode(patterns, input_format: str, size: int, beam_args) -> tuple:
    """Run ReadImages -> DecodeImages; returns (images decoded, dead letters, seconds)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from captionbeam.pipelines.decoding import DecodeImages
    from captionbeam.pipelines.options import pipeline_options
    from captionbeam.pipelines.sources import ReadImages

    start = time.time()
    p = beam.Pipeline(options=pipeline_options(["--runner=DirectRunner"] + list(beam_args)))
    read = p | "Read" >> ReadImages(patterns, input_format)
    decoded = read["images"] | "Decode" >> DecodeImages(size)
    dead = (read["dead_letters"], decoded["dead_letters"]) | beam.Flatten()
    _ = dead | "CountDead" >> beam.Map(lambda d: beam.metrics.Metrics.counter("bench", "dead").inc())
    result = p.run()
    result.wait_until_finish()
    secs = time.time() - start
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    return counters.get("images_decoded", 0), counters.get("dead", 0), secs


def raw_read(paths, fmt: str) -> tuple:
    """Plain-Python streaming read of shard files (or loose files): (images, seconds)."""
    from captionbeam.pipelines import io as pio
    from captionbeam.pipelines.image_items import ShardRecord
    from captionbeam.pipelines.shards.read import iter_shard
    start, n = time.time(), 0
    for path in paths:
        if fmt == "files":
            pio.read_bytes(path)
            n += 1
        else:
            n += sum(isinstance(i, ShardRecord) for i in iter_shard(path, fmt))
    return n, time.time() - start


def start_emulator():
    import socket
    from gcp_storage_emulator.server import create_server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    import captionbeam.pipelines.io
    captionbeam.pipelines.io.use_anonymous_gcs_if_emulated()
    from google.cloud import storage
    return server, storage.Client.create_anonymous_client()


def upload(client, bucket: str, files, prefix: str, threads: int = 8) -> None:
    b = client.bucket(bucket)

    def put(path):
        b.blob(f"{prefix}/{os.path.basename(path)}").upload_from_filename(path)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000, help="number of generated images (default: 10000)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: 1000)")
    ap.add_argument("--decode-size", type=int, default=32, help="DecodeImages output size (default: 32)")
    ap.add_argument("--no-gcs", action="store_true", help="skip the GCS-emulator half")
    ap.add_argument("--gcs-images", type=int, default=0,
                    help="use only the first N images (and the shards holding them) on the emulator; 0 = all. "
                         "The emulator is one Python process: on a loaded 2-core machine it took ~3 uploads/s and "
                         "~10 object reads/s, so 10,000 loose images there take about an hour")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary directory)")
    ap.add_argument("--beam-arg", action="append", default=[], help="extra Beam flag (repeatable)")
    args = ap.parse_args(argv)

    import logging
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or tempfile.mkdtemp(prefix="shards-bench-")
    loose = os.path.join(work, "loose")
    rows = []

    def report(where, fmt, n, secs, note=""):
        rows.append((where, fmt, n, secs, note))
        print(f"  {where:<6} {fmt:<22} {n:>6} images {secs:7.1f}s {n / secs:8.0f} images/s {note}", flush=True)

    print(f"# {args.images} images {args.size}x{args.size} JPEG, shards of {args.shard_size}, "
          f"decode to {args.decode_size}px; {os.cpu_count()} CPUs; workdir {work}", flush=True)
    if not glob.glob(os.path.join(loose, "*.jpg")):
        t = time.time()
        nbytes = generate(loose, args.images, args.size)
        print(f"generated {args.images} images ({nbytes / 1e6:.1f} MB) in {time.time() - t:.1f}s", flush=True)
    from captionbeam.pipelines.pack import PackConfig, run as pack
    packs = {}
    for fmt in ("tar", "tfrecord"):
        out = os.path.join(work, fmt)
        if os.path.exists(out):
            shutil.rmtree(out)
        summary = pack(PackConfig(images=(os.path.join(loose, "*.jpg"),), output=out, format=fmt,
                                  shard_size=args.shard_size), ["--runner=DirectRunner"] + args.beam_arg)
        packs[fmt] = out
        report("local", f"pack -> {fmt}", summary.images, summary.seconds, f"({summary.shards} shards)")
    suffix = {"tar": "*.tar", "tfrecord": "*.tfrecord"}
    local = {"files": [os.path.join(loose, "*.jpg")],
             "tar": [os.path.join(packs["tar"], suffix["tar"])],
             "tfrecord": [os.path.join(packs["tfrecord"], suffix["tfrecord"])]}
    for fmt in ("files", "tar", "tfrecord"):
        paths = sorted(glob.glob(local[fmt][0]))
        n, secs = raw_read(paths, fmt)
        report("local", f"raw read {fmt}", n, secs, "(plain Python, no Beam, no decode)")
    base = {}
    for fmt in ("files", "tar", "tfrecord"):
        n, dead, secs = beam_read_decode(local[fmt], fmt, args.decode_size, args.beam_arg)
        base.setdefault("local", secs)
        report("local", f"beam read+decode {fmt}", n, secs,
                f"x{base['local'] / secs:.2f} vs loose" + (f", {dead} dead letters" if dead else ""))
    if not args.no_gcs:
        server, client = start_emulator()
        try:
            client.create_bucket("bench")
            t = time.time()
            files = sorted(glob.glob(os.path.join(loose, "*.jpg")))
            n_shards = len(glob.glob(local["tar"][0]))
            if args.gcs_images:
                files = files[:args.gcs_images]
                n_shards = -(-len(files) // args.shard_size)
            upload(client, "bench", files, "loose")
            for fmt in ("tar", "tfrecord"):
                upload(client, "bench", sorted(glob.glob(local[fmt][0]))[:n_shards], fmt)
            print(f"uploaded to the emulator in {time.time() - t:.1f}s", flush=True)
            remote = {"files": ["gs://bench/loose/*.jpg"], "tar": ["gs://bench/tar/*.tar"],
                      "tfrecord": ["gs://bench/tfrecord/*.tfrecord"]}
            for fmt in ("files", "tar", "tfrecord"):
                n, dead, secs = beam_read_decode(remote[fmt], fmt, args.decode_size, args.beam_arg)
                base.setdefault("gcs", secs)
                report("gcs", f"beam read+decode {fmt}", n, secs,
                        f"x{base['gcs'] / secs:.2f} vs loose" + (f", {dead} dead letters" if dead else ""))
        finally:
            server.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| where | what | images | seconds | images/s | note |\n|---|---|---:|---:|---:|---|")
    for where, fmt, n, secs, note in rows:
        print(f"| {where} | {fmt} | {n} | {secs:.1f} | {n / secs:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
