"""Benchmark (not a test): ``captionbeam bulk`` over a million photos in tar shards, killed once in the
middle and resumed, then re-run over the finished archive.

    .venv/bin/python benchmarks/million.py --images 1000000 --per-shard 1000 --commit-every 50 \\
        --kill-after-parts 10 [--workdir work/bench/million] [--json-out F] [--plot F.png]

1. Generates ``--images`` small JPEGs (``--image-px``, random blocks, seeded, each distinct) packed in tar
   shards of ``--per-shard`` (once per workdir; a stamp file marks a finished set).
2. **Run 1**: ``captionbeam bulk --commit-every C`` (the in-process DirectRunner), SIGKILLed a few seconds
   into the part after ``--kill-after-parts`` committed parts: the middle of a part, rows not committed.
3. **Run 2**: the same command: the dead run's claim is provably dead (same host, pid gone), the re-run
   skips the committed parts' images and captions the rest.
4. **Run 3**: the same command over the finished archive: every image skipped.
5. Checks the archive: every image in exactly one caption row.

Each run is one child process; the script samples the RSS of its process tree every 0.5 s (kept in the
JSON, plotted with ``--plot``), its CPU time (``RUSAGE_CHILDREN``) and wall time, and reports peak memory
per run and per part (flat means the part, not the archive, sets it), CPU per image and the cost per
million images that follows at Dataflow list prices (docs/bulk.md#cost-per-million-images).

The model is ``benchmarks/hostile.py``'s tiny merge model (MobileNet ``--weights none`` at 32 px): the
encoder is the cheapest there is, so the figures are the pipeline's own cost per image (reading shards,
hashing, the manifest join, decoding, batching, writing rows and manifest) plus a small network; a real
encoder adds its own CPU per image (docs/bulk.md has MobileNet at 224 px: ≈17 ms).
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bulk import _tree_rss_bytes  # noqa: E402
from benchmarks.hostile import tiny_model_dir  # noqa: E402

VCPU_HOUR, GB_HOUR, GB_PER_VCPU = 0.056, 0.003557, 3.75   # Dataflow batch, us-central1 list prices


def generate_shards(directory: str, images: int, per_shard: int, px: int, seed: int = 0) -> str:
    """``images`` JPEGs of random 4x4 blocks scaled to ``px`` in tar shards; returns the shards' glob."""
    from PIL import Image
    stamp = os.path.join(directory, f".done-{images}-{per_shard}-{px}")
    pattern = os.path.join(directory, "shard-*.tar")
    if os.path.exists(stamp):
        return pattern
    for old in glob.glob(pattern):
        os.remove(old)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    for s in range(0, images, per_shard):
        path = os.path.join(directory, f"shard-{s // per_shard:06d}.tar")
        with tarfile.open(path + ".tmp", "w") as tar:
            for i in range(s, min(s + per_shard, images)):
                blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(blocks, "RGB").resize((px, px), Image.Resampling.NEAREST).save(buf, "JPEG", quality=85)
                info = tarfile.TarInfo(f"img{i:07d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
        os.replace(path + ".tmp", path)
        if (s // per_shard) % 100 == 0:
            print(f"[generate] {s + per_shard:,}/{images:,} images, {time.monotonic() - t0:.0f}s", flush=True)
    open(stamp, "w").close()
    return pattern


def run_sampled(cmd, log_path, kill_when=None) -> dict:
    """Run ``cmd`` (stderr to ``log_path``), sampling its tree's RSS every 0.5 s; ``kill_when()``: SIGKILL
    it once this returns true. Wall, CPU, peak RSS and the samples ``[(seconds, MiB)]``."""
    samples = []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        killed = False
        while proc.poll() is None:
            samples.append((round(time.monotonic() - t0, 1), round(_tree_rss_bytes(proc.pid) / 2 ** 20, 1)))
            if kill_when is not None and not killed and kill_when():
                proc.send_signal(signal.SIGKILL)
                killed = True
            time.sleep(0.5)
        reader.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - t0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    stdout = "".join(out)
    summary = json.loads(stdout[stdout.index("{"):]) if proc.returncode == 0 and "{" in stdout else {}
    return {"rc": proc.returncode, "killed": killed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mib": max((m for _, m in samples), default=0.0), "load_avg_1m": round(os.getloadavg()[0], 2),
            "counters": summary.get("counters", {}), "run": summary.get("run"), "samples": samples}


def part_peaks(samples, output: str, run_started: float, parts_of: str) -> list:
    """Peak RSS within each part of run ``parts_of`` (part boundaries from the part records' times)."""
    import datetime as dt
    ends = []
    for path in sorted(glob.glob(os.path.join(output, "runs", f"{parts_of}-p*.json"))):
        rec = json.load(open(path))
        ends.append(dt.datetime.fromisoformat(rec["finished"]).timestamp() - run_started)
    peaks, start = [], 0.0
    for end in ends:
        inside = [m for t, m in samples if start <= t <= end]
        peaks.append(max(inside, default=0.0))
        start = end
    return peaks


def check_archive(output: str, images: int) -> dict:
    paths, rows = set(), 0
    for f in glob.glob(os.path.join(output, "captions", "*.jsonl")):
        with open(f) as fh:
            for line in fh:
                if line.strip():
                    rows += 1
                    paths.add(json.loads(line)["path"])
    return {"rows": rows, "distinct_paths": len(paths), "every_image_once": rows == len(paths) == images}


def cost_per_million(cpu_s_per_image: float) -> dict:
    vcpu_hours = cpu_s_per_image * 1e6 / 3600
    return {"vcpu_hours": round(vcpu_hours, 2),
            "usd": round(vcpu_hours * (VCPU_HOUR + GB_PER_VCPU * GB_HOUR), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--image-px", type=int, default=32)
    ap.add_argument("--commit-every", type=int, default=50, help="shards per committed part")
    ap.add_argument("--kill-after-parts", type=int, default=10, help="SIGKILL run 1 in the part after this many")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "work", "bench", "million"))
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--plot", default=None, help="PNG of the runs' RSS over time")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.monotonic()
    shards = generate_shards(os.path.join(args.workdir, f"shards-{args.images}"), args.images, args.per_shard,
                             args.image_px)
    generated_s = time.monotonic() - t0
    model = os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model, "best.weights.h5")):
        tiny_model_dir(model)
    output = os.path.join(args.workdir, f"out-{args.images}")
    if os.path.exists(output):
        import shutil
        shutil.rmtree(output)
    cmd = [sys.executable, "-m", "captionbeam.launch", "bulk", "--images", shards, "--model-dir", model,
           "--output", output, "--commit-every", str(args.commit_every), "--batch-size", str(args.batch_size), "--json"]
    report = {"images": args.images, "per_shard": args.per_shard, "image_px": args.image_px,
              "commit_every_shards": args.commit_every, "generate_s": round(generated_s, 1),
              "command": " ".join(cmd[2:]), "runs": {}}

    marker = {}

    def after_parts():
        done = glob.glob(os.path.join(output, "runs", f"*-p{args.kill_after_parts - 1:05d}.json"))
        if done and "at" not in marker:
            marker["at"] = time.monotonic()
        return "at" in marker and time.monotonic() - marker["at"] > 20   # 20 s into the next part
    for name, kill in (("killed", after_parts), ("resumed", None), ("rerun", None)):
        started = time.time()
        r = run_sampled(cmd, os.path.join(args.workdir, f"{name}.log"), kill)
        run_tokens = sorted({os.path.basename(p).split("-p")[0] for p in glob.glob(os.path.join(output, "runs", "*-p*.json"))
                             if os.path.getmtime(p) >= started})
        if run_tokens:
            r["part_peak_rss_mib"] = part_peaks(r["samples"], output, started, run_tokens[-1])
        report["runs"][name] = r
        c = r["counters"]
        print(f"[{name}] rc {r['rc']}{' (SIGKILL)' if r['killed'] else ''}: wall {r['wall_s']:.0f}s, cpu {r['cpu_s']:.0f}s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, counters {c}, load {r['load_avg_1m']}", flush=True)
    report["archive"] = check_archive(output, args.images)
    first, second = report["runs"]["killed"], report["runs"]["resumed"]
    captioned = args.images
    cpu = first["cpu_s"] + second["cpu_s"]
    report["cpu_ms_per_image"] = round(1000 * cpu / captioned, 3)
    report["wall_s_total"] = round(first["wall_s"] + second["wall_s"], 1)
    report["cost_per_million"] = cost_per_million(cpu / captioned)
    print(f"[archive] {report['archive']}; captioning wall {report['wall_s_total']:.0f}s (killed + resumed), "
          f"CPU {report['cpu_ms_per_image']} ms/image, cost per million {report['cost_per_million']}", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 3.5))
        offset = 0.0
        for name, r in report["runs"].items():
            ts = [t + offset for t, _ in r["samples"]]
            ax.plot(ts, [m for _, m in r["samples"]], label=f"{name} ({r['wall_s']:.0f} s)")
            offset = ts[-1] if ts else offset
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS of the process tree, MiB")
        ax.set_ylim(bottom=0)
        ax.set_title(f"captionbeam bulk, {args.images:,} images, parts of {args.commit_every} shards")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0 if report["archive"]["every_image_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
