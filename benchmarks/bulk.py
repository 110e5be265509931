"""Benchmark (not a test): ``captionbeam bulk`` throughput and peak memory, against the tutorial's
one-at-a-time captioning in the same run.

What it measures, each a real ``captionbeam bulk`` subprocess (so start-up, Beam and model loading
are in the figures, as a user sees them):

* throughput (captioned images / wall second) and peak memory (sum of RSS over the whole process
  tree: launcher + Beam worker processes, sampled every 0.2 s) for archives of growing size
  (``--sizes``): memory must stay flat as the archive grows;
* throughput against ``--direct_num_workers`` (``--workers``);
* a re-run with ``--skip-existing`` over the largest archive (hashing + manifest anti-join only);
* the tutorial's approach on a subset (``--baseline-images``): per-image ``predict`` on the encoder,
  then one ``predict`` of the whole caption model per word, re-running the prefix each time;
  and ``captionbeam bulk`` over the same subset.

Usage::

    .venv/bin/python benchmarks/bulk.py --model-dir M --sizes 1000,10000 --workers 1,2 \\
        [--flickr /work/shared/data/flickr8k/images --flickr-images 2000] --json-out bulk.json

Generated images are small JPEGs (``--image-px``, default 64) of random blocks, written once per size
under ``--workdir``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONBEAM = [sys.executable, "-m", "captionbeam.launch"]


# ----------------------------------------------------------------------------- data
def generate_images(directory: str, n: int, px: int, seed: int = 0, per_dir: int = 1000) -> str:
    """``n`` small JPEGs of random coloured blocks in sub-directories of ``per_dir``; returns a '**' glob."""
    from PIL import Image
    stamp = os.path.join(directory, f".done-{n}-{px}")
    if not os.path.exists(stamp):
        shutil.rmtree(directory, ignore_errors=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            sub = os.path.join(directory, f"{i // per_dir:05d}")
            if i % per_dir == 0:
                os.makedirs(sub, exist_ok=True)
            blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(blocks, "RGB").resize((px, px), Image.Resampling.NEAREST)
            img.save(os.path.join(sub, f"img{i:07d}.jpg"), quality=85)
        open(stamp, "w").close()
    return os.path.join(directory, "**.jpg")


# ----------------------------------------------------------------------------- measuring a process tree
def _tree_rss_bytes(root_pid: int) -> int:
    """Sum of RSS of ``root_pid`` and all its descendants (Linux /proc)."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * page
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(cmd: List[str], env: Optional[dict] = None, timeout: float = 3600) -> dict:
    """Run ``cmd``; wall seconds, peak tree RSS (MiB), exit code, stdout."""
    peak = [0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    import resource
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    t.start()
    out, err = proc.communicate(timeout=timeout)
    wall = time.monotonic() - t0
    done.set()
    t.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # whole tree, once reaped
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak[0] / 2 ** 20,
            "stdout": out, "stderr": err}


def bulk_run(images_glob: str, model_dir: str, output: str, workers: int, batch_size: int,
             extra: Optional[List[str]] = None) -> dict:
    cmd = CAPTIONBEAM + ["--log-level", "WARNING", "bulk", "--images", images_glob, "--model-dir", model_dir,
                         "--output", output, "--batch-size", str(batch_size), "--json"]
    if workers >= 1:  # 0: the in-process DirectRunner; N: N worker processes
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    cmd += extra or []
    r = run_measured(cmd)
    summary = json.loads(r["stdout"][r["stdout"].index("{"):]) if r["rc"] == 0 else {}
    c = summary.get("counters", {})
    return {
        "workers": workers, "batch_size": batch_size, "rc": r["rc"], "wall_s": round(r["wall_s"], 2),
        "peak_rss_mib": round(r["peak_rss_mib"], 1), "counters": c,
        "images_per_s": round(c.get("captioned", 0) / r["wall_s"], 2) if r["wall_s"] else 0.0,
        "cpu_s": round(r["cpu_s"], 1),
        "images_per_cpu_s": round(c.get("captioned", 0) / r["cpu_s"], 2) if r["cpu_s"] else 0.0,
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "matched_per_s": round(c.get("matched", 0) / r["wall_s"], 2) if r["wall_s"] else 0.0,
        "pipeline_s": summary.get("seconds"),
        "command": " ".join(cmd[2:]),
    }


# ----------------------------------------------------------------------------- the tutorial's way
def tutorial_baseline(model_dir: str, paths: List[str]) -> dict:
    """One image at a time: encoder ``predict`` on one image, then per word a ``predict`` of the whole
    caption model on the prefix so far (the classic merge-model tutorial's ``generate_desc``).
    Runs in this process; returns images/s and the captions (to compare with bulk's)."""
    from captionbeam.model.captioner import Captioner
    from captionbeam.pipelines.images import load_image
    cap = Captioner.load(model_dir)
    parts = tutorial_parts(cap)
    size = cap.image_size[0]
    t0 = time.monotonic()
    captions = {}
    for p in paths:
        with open(p, "rb") as f:
            pixels = load_image(f.read(), size)
        captions[p] = parts(pixels)
    wall = time.monotonic() - t0
    return {"images": len(paths), "wall_s": round(wall, 2), "images_per_s": round(len(paths) / wall, 3),
            "captions": captions}


def tutorial_parts(cap):
    """A per-image, per-word captioner over the Captioner's own encoder and caption model: the classic
    tutorial's ``generate_desc`` (``model.predict([photo, sequence])`` once per word on the padded prefix,
    argmax, stop at the end token). Greedy, like bulk's default ``--beam-size 1``."""
    from captionbeam.model.vocab import END_ID, START_ID
    encoder = cap.encoder            # model.encoders.Encoder (KerasEncoder: .model is the keras.Model)
    model = cap.model                # model.architectures.CaptionModel: model((features, tokens)) -> logits
    vocab = cap.vocab
    max_length = cap.max_length
    keras_encoder = getattr(encoder, "model", None)

    def caption(pixels: np.ndarray) -> str:
        x = encoder.preprocess(cap.prepare([pixels]).astype(np.float32))
        feature = keras_encoder.predict(x, verbose=0) if keras_encoder is not None else encoder(x)
        ids = [START_ID]
        for _ in range(max_length):
            seq = np.zeros((1, max_length + 1), np.int32)
            seq[0, :len(ids)] = ids
            logits = model.predict((np.asarray(feature, np.float32), seq), verbose=0)
            step = logits[0, len(ids) - 1].copy()
            step[[0, START_ID]] = -np.inf  # never <pad> / <start>, as the batched decoder
            nxt = int(np.argmax(step))
            if nxt == END_ID:
                break
            ids.append(nxt)
        return " ".join(vocab.decode(ids[1:]))

    return caption


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="trained model directory")
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated archive sizes (generated images)")
    ap.add_argument("--workers", default="0,1,2",
                    help="comma-separated --direct_num_workers to compare; 0 = in-process DirectRunner "
                         "(the largest is used for the archive-size runs)")
    ap.add_argument("--scaling-size", type=int, default=None,
                    help="archive size for the workers comparison (default: the smallest of --sizes)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-px", type=int, default=64, help="side of the generated JPEGs")
    ap.add_argument("--baseline-images", type=int, default=30,
                    help="subset for the tutorial comparison (0 = skip it)")
    ap.add_argument("--flickr", default=None, help="directory of Flickr8k images (optional)")
    ap.add_argument("--flickr-images", type=int, default=0, help="how many Flickr8k images (0 = all)")
    ap.add_argument("--workdir", default="/tmp/captionbeam-bench-bulk")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]
    report: Dict[str, object] = {"model_dir": args.model_dir, "cpus": os.cpu_count(), "batch_size": args.batch_size,
                                 "image_px": args.image_px}

    def out_dir(name):
        d = os.path.join(args.workdir, "out", name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    # 1) growing archives, most workers: throughput and memory
    growth = []
    w_max = max(workers)
    for n in sizes:
        g = generate_images(os.path.join(args.workdir, f"gen-{n}"), n, args.image_px)
        r = bulk_run(g, args.model_dir, out_dir(f"gen-{n}"), w_max, args.batch_size)
        r["images"] = n
        growth.append(r)
        print(f"[size] {n:>7} images, {w_max} workers: {r['images_per_s']:.1f} images/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.0f}s, cpu {r['cpu_s']:.0f}s "
              f"({r['images_per_cpu_s']:.1f} images/cpu-s), load {r['load_avg_1m']}, counters {r['counters']}", flush=True)
    report["growth"] = growth

    # 2) the largest archive again with --skip-existing: nothing to caption
    if not sizes:
        return _finish_without_archives(args, report, w_max)
    n = sizes[-1]
    g = os.path.join(args.workdir, f"gen-{n}", "**.jpg")
    skip_out = os.path.join(args.workdir, "out", f"gen-{n}")
    r = bulk_run(g, args.model_dir, skip_out, w_max, args.batch_size, ["--skip-existing"])
    r["images"] = n
    report["skip_existing_rerun"] = r
    print(f"[skip] {n:>7} images re-run with --skip-existing: {r['matched_per_s']:.1f} images/s checked, "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB, counters {r['counters']}", flush=True)

    # 3) workers scaling
    n = args.scaling_size or sizes[0]
    if len(workers) < 2:
        n = 0
    g = generate_images(os.path.join(args.workdir, f"gen-{n}"), n, args.image_px) if n else ""
    scaling = []
    for w in (workers if n else []):
        r = bulk_run(g, args.model_dir, out_dir(f"workers-{w}"), w, args.batch_size)
        r["images"] = n
        scaling.append(r)
        print(f"[workers] {w} worker(s), {n} images: {r['images_per_s']:.1f} images/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, cpu {r['cpu_s']:.0f}s, load {r['load_avg_1m']}", flush=True)
    report["workers"] = scaling

    return _finish_without_archives(args, report, w_max, largest=growth[-1])


def _finish_without_archives(args, report, w_max, largest=None) -> int:
    """Flickr8k and the tutorial comparison (also run alone with ``--sizes ''``)."""
    def out_dir(name):
        d = os.path.join(args.workdir, "out", name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    # 4) Flickr8k
    if args.flickr:
        files = sorted(glob.glob(os.path.join(args.flickr, "*.jpg")))
        if args.flickr_images:
            files = files[:args.flickr_images]
        d = os.path.join(args.workdir, f"flickr-{len(files)}")
        if not os.path.isdir(d):
            os.makedirs(d)
            for f in files:
                os.symlink(f, os.path.join(d, os.path.basename(f)))
        r = bulk_run(os.path.join(d, "*.jpg"), args.model_dir, out_dir("flickr"), w_max, args.batch_size)
        r["images"] = len(files)
        report["flickr8k"] = r
        print(f"[flickr8k] {len(files)} images: {r['images_per_s']:.1f} images/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
              flush=True)

    # 5) the tutorial's one-at-a-time approach against bulk, same subset
    if not args.baseline_images:
        return _write(args, report)
    if args.flickr:  # the tutorial comparison on real photos when there are some
        subset_dir = os.path.join(args.workdir, f"flickr-subset-{args.baseline_images}")
        if not os.path.isdir(subset_dir):
            os.makedirs(subset_dir)
            for f in sorted(glob.glob(os.path.join(args.flickr, "*.jpg")))[:args.baseline_images]:
                os.symlink(f, os.path.join(subset_dir, os.path.basename(f)))
        g = os.path.join(subset_dir, "*.jpg")
        paths = sorted(glob.glob(g))
    else:
        subset_dir = os.path.join(args.workdir, f"subset-{args.baseline_images}")
        g = generate_images(subset_dir, args.baseline_images, args.image_px)
        paths = sorted(glob.glob(os.path.join(subset_dir, "*", "*.jpg")))
    base = tutorial_baseline(args.model_dir, paths)
    bulk_subset = bulk_run(g, args.model_dir, out_dir("subset"), 1, args.batch_size)
    rows = {}
    for f in glob.glob(os.path.join(args.workdir, "out", "subset", "captions", "*.jsonl")):
        for line in open(f):
            row = json.loads(line)
            rows[row["path"]] = row["caption"]
    same = sum(rows.get(p) == c for p, c in base["captions"].items())
    largest = largest or report.get("flickr8k") or bulk_subset
    report["tutorial"] = {k: v for k, v in base.items() if k != "captions"}
    report["tutorial"]["same_captions_as_bulk"] = f"{same}/{len(paths)}"
    report["bulk_subset"] = bulk_subset
    print(f"[tutorial] {len(paths)} images one at a time: {base['images_per_s']:.2f} images/s "
          f"(bulk, 1 worker, same subset incl. start-up: {bulk_subset['images_per_s']:.2f} images/s; "
          f"bulk at scale: {largest['images_per_s']:.1f} images/s = "
          f"{largest['images_per_s'] / base['images_per_s']:.1f}x the tutorial); same captions {same}/{len(paths)}",
          flush=True)
    return _write(args, report)


def _write(args, report) -> int:
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
