"""The cost of the guarantees: the output protocol (lease + atomic commits) and the bounded reader of users'
files, against the plain alternative, related to a real features job and a bulk job on Flickr8k images,
all measured in the same run. Production code has no switch to turn the mechanisms off, so each one is
timed on its own, next to what it replaces:

- reader: ``pipelines.user_files.read_user_file`` (stat checks, byte limit, Beam's FileSystems) of N Flickr8k
  images vs a plain ``open(p, "rb").read()`` of the same files (warm page cache, both), time and the
  Python-level peak allocation (tracemalloc) of one pass;
- protocol: ``output_lease`` acquire / one heartbeat / release, and ``write_text_atomic`` (fsync + rename) vs
  a plain ``open().write()`` of the same 4 KiB, on the local disk and on the GCS emulator (on gs:// an
  upload is atomic already: the atomic write is a plain upload there);
- jobs: ``captionbeam features`` over the N images (mobilenet, ``--weights none``, 96 px) and ``captionbeam
  bulk`` over them (a tiny random merge model), each in its own child process: wall time, peak RSS
  (VmHWM), the files each job commits. The mechanisms' share of a job = (acquire + release + one
  heartbeat a minute + commits x (atomic - plain) + N x (bounded - plain read)) / the job's wall time.

The load average (1 min) is printed next to every figure: the machine is shared.

    .venv/bin/python benchmarks/guarantees.py [--images 300] [--repeats 20] [--workdir work/bench/guarantees]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.hostile import child  # noqa: E402  (one child runner for the benchmarks)
FLICKR = os.path.join(os.path.dirname(ROOT), "shared", "data", "flickr8k", "images")
if not os.path.isdir(FLICKR):
    FLICKR = "/work/shared/data/flickr8k/images"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reader_cost(paths):
    from captionbeam.pipelines.user_files import read_user_file

    def bounded():
        return sum(len(read_user_file(p)) for p in paths)

    def plain():
        total = 0
        for p in paths:
            with open(p, "rb") as f:
                total += len(f.read())
        return total
    assert bounded() == plain()                      # warm the page cache; same bytes
    out = {}
    for name, fn in (("bounded", bounded), ("plain", plain)):
        seconds = timed(fn, 3)
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {"seconds": seconds, "peak_mib": peak / 2**20, "load": load()}
    return out


def protocol_cost(base: str, repeats: int):
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.lease import OutputLease
    out = {}
    n = [0]

    def lease_cycle():
        n[0] += 1
        lease = OutputLease(pio.join(base, f"out{n[0]}"), f"bench-{n[0]}", command="bench")
        t0 = time.perf_counter()
        lease.acquire()
        t1 = time.perf_counter()
        lease._write_alive()
        t2 = time.perf_counter()
        lease.release()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2
    cycles = [lease_cycle() for _ in range(repeats)]
    for i, name in enumerate(("acquire", "heartbeat", "release")):
        out[name] = statistics.median(c[i] for c in cycles)
    text = "x" * 4096
    target = pio.join(base, "commit", "file.json")
    pio.makedirs(pio.join(base, "commit"))

    def plain():
        if pio.is_gcs(target):
            pio.write_text(target, text)
        else:
            with open(target, "w") as f:
                f.write(text)
    out["atomic_commit"] = timed(lambda: pio.write_text_atomic(target, text), repeats)
    out["plain_write"] = timed(plain, repeats)
    out["load"] = load()
    return out


def run_job(argv, out) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--", *argv], env=env,
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0 or not p.stdout.strip():
        raise SystemExit(f"child failed ({p.returncode}): {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["files"] = sum(len(fs) for _, _, fs in os.walk(out))
    r["load"] = load()
    return r


def emulator():
    """The GCS emulator in this process (benchmarks/shards.py starts it as tests/plugins/gcs.py does), with a
    bucket; returns the server and the bucket url."""
    from benchmarks.shards import start_emulator
    server, client = start_emulator()
    client.create_bucket("bench")
    return server, "gs://bench"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="Flickr8k images (default 300)")
    ap.add_argument("--repeats", type=int, default=20, help="repeats of each protocol operation (median)")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "work", "bench", "guarantees"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.rest)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    paths = sorted(glob.glob(os.path.join(FLICKR, "*.jpg")))[: args.images]
    images = os.path.join(args.workdir, "images")
    os.makedirs(images)
    for p in paths:                                    # a glob of exactly these N images
        os.symlink(p, os.path.join(images, os.path.basename(p)))
    paths = sorted(glob.glob(os.path.join(images, "*.jpg")))
    mib = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"{len(paths)} Flickr8k images, {mib:.1f} MiB; {os.cpu_count()} CPUs; {load()}")

    from benchmarks.hostile import tiny_model_dir
    model_dir = tiny_model_dir(os.path.join(args.workdir, "model"))
    jobs = {}
    out = os.path.join(args.workdir, "features")
    jobs["features"] = run_job(["--log-level", "ERROR", "features", "--images", os.path.join(images, "*.jpg"),
                                "--output", out, "--encoder", "mobilenet", "--weights", "none", "--image-size", "96"],
                               out)
    out = os.path.join(args.workdir, "bulk")
    jobs["bulk"] = run_job(["--log-level", "ERROR", "bulk", "--images", os.path.join(images, "*.jpg"), "--model-dir",
                            model_dir, "--output", out], out)
    for name, r in jobs.items():
        print(f"job {name:<8} exit {r['rc']}  wall {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:7.1f} MiB  "
              f"{r['files']} files committed  ({r['load']})")

    reader = reader_cost(paths)
    for name, r in reader.items():
        print(f"reader {name:<8} {len(paths)} images  {r['seconds'] * 1e3:8.1f} ms  "
              f"({r['seconds'] / len(paths) * 1e6:6.1f} us/image)  peak {r['peak_mib']:6.2f} MiB  ({r['load']})")

    server, bucket = emulator()
    try:
        proto = {"local": protocol_cost(os.path.join(args.workdir, "protocol"), args.repeats),
                 "emulator": protocol_cost(f"{bucket}/protocol", max(3, args.repeats // 4))}
    finally:
        server.stop()
    for where, p in proto.items():
        print(f"protocol {where:<8} acquire {p['acquire'] * 1e3:7.1f} ms  heartbeat {p['heartbeat'] * 1e3:6.1f} ms  "
              f"release {p['release'] * 1e3:6.1f} ms  atomic commit {p['atomic_commit'] * 1e3:6.2f} ms vs plain write "
              f"{p['plain_write'] * 1e3:6.2f} ms  ({p['load']})")

    print()
    extra_read = max(0.0, reader["bounded"]["seconds"] - reader["plain"]["seconds"])
    for name, r in jobs.items():
        p = proto["local"]
        beats = int(r["seconds"] // 60)
        protocol = (p["acquire"] + p["release"] + beats * p["heartbeat"]
                    + r["files"] * max(0.0, p["atomic_commit"] - p["plain_write"]))
        print(f"{name}: protocol {protocol * 1e3:.0f} ms = {protocol / r['seconds'] * 100:.2f}% of the job's "
              f"{r['seconds']:.1f} s (every one of its {r['files']} files counted as an atomic commit); bounded reader "
              f"+{extra_read * 1e3:.0f} ms = {extra_read / r['seconds'] * 100:.2f}%; reader peak "
              f"{reader['bounded']['peak_mib']:.2f} vs {reader['plain']['peak_mib']:.2f} MiB against the job's "
              f"{r['peak_rss_mb']:.0f} MiB peak RSS  ({load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
