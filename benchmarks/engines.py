"""Benchmark (not a test): the Beam jobs on each engine of this machine, against DirectRunner in the same run.

For each runner (``direct`` = DirectRunner in-process; ``direct-mp`` = DirectRunner with 2 worker processes;
``flink-local``, ``spark-local``, ``prism`` = the profiles of ``launch/profiles.yaml``, engines from
``make engines``), each a real ``captionbeam``
subprocess, so start-up, the job server and model loading are in the figures as a user sees them:

* start-up: ``captionbeam features`` over one image (job server start + pipeline submission + one image);
* features: ``captionbeam features`` over the same ``--images`` generated images (MobileNet, random
  weights, ``--image-size``): wall seconds and images/s;
* bulk: ``captionbeam bulk`` over the same images with ``--model-dir`` (skipped without one);
* steady state: ``features_steady_img_s``, the rate once the job is up, from the job's own progress lines
  (``... INFO captionbeam.progress: features: 4,000/10,000 images (40%), ...``, every 5 s): the images done
  between the first and the last line with some but not all done, over the seconds between their log times. (It was (images - 1) / (features_s -
  startup_s): the one-image run's start-up is not the big run's, and on the Flink cluster, where the second
  TaskManager's SDK worker starts while the first one already works, that gave 774 images/s for a stage that
  ran at 450.)

``flink-cluster`` and ``spark-cluster`` (the multi-process cluster of ``make cluster``, docs/cluster.md) are
runners too: start the cluster first, then pass them in ``--runners``; ``flink-cluster-per-job`` runs on the
same cluster the way its profile did before it staged no jars (the plain job server, shipping its whole class
path with every job): the baseline of its start-up.

Each figure comes with its ratio to DirectRunner's in the same run. Usage::

    .venv/bin/python benchmarks/engines.py --images 240 --model-dir work/run/model [--runners direct,flink-local]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONBEAM = [sys.executable, "-m", "captionbeam.launch"]
PROGRESS = re.compile(r"features: ([\d,]+)/([\d,]+) images \(")   # pipelines.progress.format_progress
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
RUNNERS = ("direct", "direct-mp", "prism", "flink-local", "spark-local")
CLUSTER_RUNNERS = ("flink-cluster", "spark-cluster")   # need `make cluster`
# the Flink cluster as its profile used it before it staged no jars: the plain job server, which ships its whole
# class path (~160 jars) with every job (the baseline of the cluster's start-up)
STAGING_EVERY_JAR = {
    "flink-cluster-per-job": ["--runner=FlinkRunner", "--flink_master={cluster.flink_master}",
                              "--flink_job_server_jar={engines}/flink/job-server.jar"],
}


def runner_flags(runner: str) -> List[str]:
    if runner == "direct":
        return ["--runner=DirectRunner"]
    if runner == "direct-mp":
        return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    if runner in STAGING_EVERY_JAR:
        return [*STAGING_EVERY_JAR[runner], "--environment_type=EXTERNAL", "--environment_config={cluster.worker_pool}",
                "--parallelism=2"]
    return ["--profile", runner]


def steady_rate(log_text: str) -> Optional[float]:
    """Images/s between the first and the last progress line where some but not all images were done, by the
    lines' log times (``2026-12-07 02:58:03,610 INFO captionbeam.progress: features: 2,274/10,000 ...``): None
    with fewer than two such lines."""
    points = []
    for line in log_text.splitlines():
        found, stamp = PROGRESS.search(line), LOG_TIME.match(line)
        if not (found and stamp):
            continue
        done, total = (int(found.group(i).replace(",", "")) for i in (1, 2))
        if 0 < done < total:
            when = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            points.append((when, done))
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def timed(argv: List[str], log_path: str, log_level: str = "WARNING") -> float:
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ captionbeam " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run([*CAPTIONBEAM, "--log-level", log_level, *argv],   # in the caller's folder
                              stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"`captionbeam {' '.join(argv[:1])}` failed ({proc.returncode}); see {log_path}")
    return seconds


def make_images(directory: str, n: int, size: int) -> str:
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    if not os.path.isdir(os.path.join(directory, "images")):
        write_sample(SampleConfig(output=directory, images=n, seed=0, size=size))
    return os.path.join(directory, "images")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240, help="number of images (default 240)")
    parser.add_argument("--image-px", type=int, default=64, help="side of the generated images (default 64)")
    parser.add_argument("--image-size", type=int, default=64, help="encoder input size (default 64)")
    parser.add_argument("--model-dir", default=os.path.join(REPO, "work", "run", "model"),
                        help="model for the bulk job (default: work/run/model from `make run`)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated (default {','.join(RUNNERS)}; also {', '.join(CLUSTER_RUNNERS + tuple(STAGING_EVERY_JAR))} after `make cluster`)")
    parser.add_argument("--workdir", default=os.path.join(REPO, "work", "bench", "engines"))
    parser.add_argument("--json-out", default=None)
    a = parser.parse_args(argv)
    runners = [r.strip() for r in a.runners.split(",") if r.strip()]
    os.makedirs(a.workdir, exist_ok=True)
    images = make_images(os.path.join(a.workdir, f"sample-{a.images}-{a.image_px}"), a.images, a.image_px)
    one = os.path.join(a.workdir, "one")
    os.makedirs(one, exist_ok=True)
    first = sorted(os.listdir(images))[0]
    shutil.copy(os.path.join(images, first), os.path.join(one, first))
    encoder = ["--encoder", "mobilenet", "--weights", "none", "--image-size", str(a.image_size), "--batch-size", "32"]
    bulk = os.path.isdir(a.model_dir)
    if not bulk:
        print(f"bulk: skipped ({a.model_dir} is not a model dir: run `make run` or pass --model-dir)")
    results: Dict[str, Dict[str, float]] = {}
    for runner in runners:
        out = os.path.join(a.workdir, runner)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        r: Dict[str, float] = {}
        r["startup_s"] = timed(["features", "--images", os.path.join(one, "*.jpg"), "--output", os.path.join(out, "f1"),
                                *encoder, *runner_flags(runner)], os.path.join(out, "startup.log"))
        r["features_s"] = timed(["features", "--images", os.path.join(images, "*.jpg"), "--output",
                                 os.path.join(out, "features"), *encoder, *runner_flags(runner)],
                                os.path.join(out, "features.log"), log_level="INFO")
        r["features_img_s"] = a.images / r["features_s"]
        with open(os.path.join(out, "features.log")) as f:
            steady = steady_rate(f.read())
        if steady is not None:
            r["features_steady_img_s"] = steady
        if bulk:
            # a model-file encoder (the thumbnail encoder of `make run`) is found from the working folder:
            # run the benchmark beside it (cd work/run/encoder)
            r["bulk_s"] = timed(["bulk", "--images", os.path.join(images, "*.jpg"), "--model-dir", a.model_dir,
                                 "--output", os.path.join(out, "bulk"), *runner_flags(runner)],
                                os.path.join(out, "bulk.log"))
            r["bulk_img_s"] = a.images / r["bulk_s"]
        r["load_avg_1m"] = os.getloadavg()[0]
        results[runner] = r
        print(f"{runner:12s} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    base = results.get("direct")
    print(f"\n{a.images} images of {a.image_px}px, MobileNet (random weights) at {a.image_size}px; "
          f"{os.cpu_count()} CPUs; ratio = this runner / DirectRunner (times: higher is slower)")
    cols = (["startup_s", "features_s", "features_img_s", "features_steady_img_s"] + (["bulk_s", "bulk_img_s"] if bulk else [])
            + ["load_avg_1m"])
    print("| runner | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for runner, r in results.items():
        cells = []
        for c in cols:
            if c not in r:
                cells.append("-")
                continue
            ratio = (f" (×{r[c] / base[c]:.2f})" if base and runner != "direct" and base.get(c) and c != "load_avg_1m"
                     else "")
            cells.append(f"{r[c]:.1f}{ratio}")
        print(f"| {runner} | " + " | ".join(cells) + " |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"images": a.images, "image_px": a.image_px, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
