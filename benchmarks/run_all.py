"""``make bench``: run every benchmark script in ``benchmarks/`` one after another, each in its own
process, with its output shown live and kept in ``work/bench/<name>.log``; a summary table at the
end (status and wall time per benchmark). Benchmarks are not tests: figures are printed by each
script (see the README for the numbers and the commands that produced them).

    .venv/bin/python benchmarks/run_all.py                  # all of them
    .venv/bin/python benchmarks/run_all.py --only features train
    .venv/bin/python benchmarks/run_all.py --skip bulk --model-dir work/run/model

Benchmarks that need ``../shared`` (Flickr8k, offline ImageNet weights) are skipped with a note when
it is absent; ``bulk`` needs a trained model: ``--model-dir``, or ``work/run/model`` from ``make run``.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
NEEDS_SHARED = {"features", "train", "decode"}
ORDER = ["features", "shards", "train", "scst", "decode", "bulk"]   # the rest alphabetically after these


def discover() -> List[str]:
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(HERE, "*.py")))
    names = [n for n in names if n not in ("run_all", "__init__") and not n.startswith("_")]
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


def arguments_for(name: str, model_dir: Optional[str]) -> Optional[List[str]]:
    """Extra arguments for a benchmark, or None to skip it (with the reason printed)."""
    if name in NEEDS_SHARED and not os.path.isdir(SHARED):
        print(f"  skipped: {SHARED} (Flickr8k, offline weights) is not here")
        return None
    if name == "bulk":
        model = model_dir or os.path.join(ROOT, "work", "run", "model")
        if not os.path.exists(os.path.join(model, "config.json")):
            print(f"  skipped: bulk needs a trained model (--model-dir, or run `make run` first for {model})")
            return None
        return ["--model-dir", model]
    return []


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="do not run these")
    ap.add_argument("--model-dir", default=None, help="trained model for the bulk benchmark")
    ap.add_argument("--logs", default=os.path.join(ROOT, "work", "bench"), help="where the logs go")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [n for n in (args.only or []) + args.skip if n not in names]
    if unknown:
        ap.error(f"--only/--skip: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [n for n in (args.only or names) if n not in args.skip]
    os.makedirs(args.logs, exist_ok=True)
    results: Dict[str, tuple] = {}
    for name in chosen:
        print(f"\n=== benchmarks/{name}.py ===", flush=True)
        extra = arguments_for(name, args.model_dir)
        if extra is None:
            results[name] = ("skipped", 0.0)
            continue
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *extra]
        log_path = os.path.join(args.logs, f"{name}.log")
        start = time.time()
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        results[name] = ("ok" if rc == 0 else f"failed ({rc})", time.time() - start)
        print(f"--- {name}: {results[name][0]} in {results[name][1]:.0f}s (log: {log_path})", flush=True)
    print("\nbenchmark      status        seconds")
    for name, (status, secs) in results.items():
        print(f"  {name:<12} {status:<13} {secs:>7.0f}")
    return 0 if all(s in ("ok", "skipped") for s, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
