"""Benchmark (not a test): peak memory of a ``captionbeam bulk`` re-run over a finished archive.

For each archive size (``--sizes``) the images are generated once (tiny JPEGs, ``--image-px``; loose
files, or with ``--format tar`` packed into tar shards of ``--per-shard`` images), captioned once by a
first run (kept under ``--workdir``: later invocations reuse the finished archive), then captioned
again by a re-run with the default ``--skip-existing``: nothing is new, every image is ``skipped``.
Each re-run is the in-process DirectRunner in a child process of its own, which reports its peak RSS
(``VmHWM``). The growth between the two sizes, in KB per image, is what the re-run holds per image:
flat means close to 0.

The model is ``benchmarks/hostile.py``'s tiny random-weight merge model (MobileNet ``--weights none``
at 32 px): the re-run never runs it, the first run only cheaply.

    nice -n 10 .venv/bin/python benchmarks/bulk_rerun_memory.py --sizes 5000,20000 [--format tar] \\
        [--workdir work/bench/bulk_rerun] [--json-out F]

``--fresh`` also times a first run into a new output at each size (what a first run pays: with
``--skip-existing``, the default, loose files are read twice, once to hash and once to caption).

The children import ``captionbeam`` from this checkout (the first line names the ``bulk.py`` that ran):
to compare code, run the same command with the other code checked out, on the same ``--workdir``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bulk import generate_images  # noqa: E402
from benchmarks.hostile import run_child, tiny_model_dir  # noqa: E402


def pack_tar_shards(images_dir: str, shards_dir: str, per_shard: int) -> str:
    """The generated JPEGs packed into ``shard-NNNNN.tar`` files of ``per_shard`` members; returns a glob."""
    import glob
    stamp = os.path.join(shards_dir, f".done-{per_shard}")
    if not os.path.exists(stamp):
        os.makedirs(shards_dir, exist_ok=True)
        files = sorted(glob.glob(os.path.join(images_dir, "*", "*.jpg")))
        for s in range(0, len(files), per_shard):
            with tarfile.open(os.path.join(shards_dir, f"shard-{s // per_shard:05d}.tar"), "w") as tar:
                for f in files[s:s + per_shard]:
                    tar.add(f, arcname=os.path.basename(f))
        open(stamp, "w").close()
    return os.path.join(shards_dir, "*.tar")


def which_code() -> str:
    import subprocess
    return subprocess.run([sys.executable, "-c", "import captionbeam.pipelines.bulk as b; print(b.__file__)"],
                          stdout=subprocess.PIPE, text=True, env=os.environ).stdout.strip()


def bulk_argv(images: str, model_dir: str, output: str) -> List[str]:
    return ["--log-level", "ERROR", "bulk", "--images", images, "--model-dir", model_dir, "--output", output,
            "--json"]


def counters_of(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):]).get("counters", {}) if "{" in stdout else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000", help="comma-separated archive sizes (generated images)")
    ap.add_argument("--format", choices=("files", "tar"), default="files")
    ap.add_argument("--per-shard", type=int, default=1000, help="images per tar shard (--format tar)")
    ap.add_argument("--image-px", type=int, default=32, help="side of the generated JPEGs")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "work", "bench", "bulk_rerun"))
    ap.add_argument("--fresh", action="store_true", help="also time a first run into a new output per size")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    os.makedirs(args.workdir, exist_ok=True)
    model_dir = os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "best.weights.h5")):
        tiny_model_dir(model_dir)
    code = which_code()
    print(f"code: {code}", flush=True)
    rows = []
    for n in sizes:
        images = generate_images(os.path.join(args.workdir, f"gen-{n}"), n, args.image_px)
        if args.format == "tar":
            images = pack_tar_shards(os.path.join(args.workdir, f"gen-{n}"),
                                     os.path.join(args.workdir, f"tar-{n}-{args.per_shard}"), args.per_shard)
        output = os.path.join(args.workdir, "out", f"{args.format}-{n}")
        if not os.path.isdir(os.path.join(output, "runs")):
            first = run_child(bulk_argv(images, model_dir, output))
            print(f"[first]  {n:>7} images ({args.format}): exit {first['rc']}, {first['seconds']}s, "
                  f"peak RSS {first['peak_rss_mb']} MiB, counters {counters_of(first['stdout'])}", flush=True)
        if args.fresh:
            fresh_out = os.path.join(args.workdir, "out", f"fresh-{args.format}-{n}")
            shutil.rmtree(fresh_out, ignore_errors=True)
            load = os.getloadavg()[0]
            f = run_child(bulk_argv(images, model_dir, fresh_out))
            print(f"[fresh]  {n:>7} images ({args.format}): exit {f['rc']}, {f['seconds']}s, peak RSS "
                  f"{f['peak_rss_mb']} MiB, load {load:.1f}, counters {counters_of(f['stdout'])}", flush=True)
            shutil.rmtree(fresh_out, ignore_errors=True)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        r = run_child(bulk_argv(images, model_dir, output))
        c = counters_of(r["stdout"])
        row = {"images": n, "format": args.format, "rc": r["rc"], "seconds": round(time.monotonic() - t0, 1),
               "peak_rss_mib": r["peak_rss_mb"], "counters": c,
               "load_avg_1m": [round(load, 1), round(os.getloadavg()[0], 1)]}
        rows.append(row)
        print(f"[rerun]  {n:>7} images ({args.format}): exit {r['rc']}, {row['seconds']}s, "
              f"peak RSS {r['peak_rss_mb']} MiB, load {row['load_avg_1m'][0]}->{row['load_avg_1m'][1]}, "
              f"counters {c}", flush=True)
    report = {"code": code, "format": args.format, "image_px": args.image_px, "reruns": rows}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        kb = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 / (b["images"] - a["images"])
        report["kb_per_image"] = round(kb, 2)
        print(f"growth {a['images']} -> {b['images']} images: {a['peak_rss_mib']} -> {b['peak_rss_mib']} MiB "
              f"= {kb:.2f} KB per image", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
