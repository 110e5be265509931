"""Run the learning tests (``pytest -m learning``, tests/plugins/learning.py) once per seed and once with
oneDNN off, one pytest process at a time, and write what they gave as a table.

    nice -n 10 .venv/bin/python tests/sweep_learning.py                        # oneDNN off (seed 0), then seeds 1..10
    nice -n 10 .venv/bin/python tests/sweep_learning.py --seeds 1 2 --no-onednn-off
    .venv/bin/python tests/sweep_learning.py --table-only                      # render what is recorded

Each run is one ``pytest -m learning`` process with ``CAPTIONBEAM_TEST_SEED`` set (and
``TF_ENABLE_ONEDNN_OPTS=0`` for the oneDNN-off run, seed 0); its outcomes (junit XML) and the margins the
tests record (``CAPTIONBEAM_TEST_MARGINS``) are appended to ``--record`` (JSON lines), so a sweep cut off
keeps the runs it finished, and a second call skips the runs already recorded. The table (one row per test,
one column per run: ``pass`` / ``FAIL`` and the smallest margin the test recorded) replaces the text between
``<!-- sweep:begin -->`` and ``<!-- sweep:end -->`` of ``--doc``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"
RUN_TIMEOUT_S = 3600


def run_label(seed: int, onednn_off: bool) -> str:
    return f"{seed} oneDNN off" if onednn_off else str(seed)


def outcomes(junit_path: str) -> Dict[str, str]:
    """junit XML -> {test id: "pass" | "FAIL" | "skip"}."""
    out = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "FAIL"
        elif case.find("skipped") is not None:
            out[name] = "skip"
        else:
            out[name] = "pass"
    return out


def run_once(seed: int, onednn_off: bool, pytest_args: List[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        junit, margins = os.path.join(tmp, "junit.xml"), os.path.join(tmp, "margins.jsonl")
        env = dict(os.environ, CAPTIONBEAM_TEST_SEED=str(seed), CAPTIONBEAM_TEST_MARGINS=margins)
        if onednn_off:
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", f"--junitxml={junit}", *pytest_args]
        started = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=RUN_TIMEOUT_S, capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        rows = []
        if os.path.exists(margins):
            with open(margins) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        return {"run": run_label(seed, onednn_off), "seed": seed, "onednn_off": onednn_off, "rc": proc.returncode,
                "seconds": round(time.time() - started), "summary": tail[0],
                "outcomes": outcomes(junit) if os.path.exists(junit) else {}, "margins": rows}


def load(record: str) -> List[dict]:
    if not os.path.exists(record):
        return []
    with open(record) as f:
        return [json.loads(line) for line in f if line.strip()]


def margin_owner(assertion: str, tests: List[str]) -> Optional[str]:
    """The test whose id the margin's name starts with (``loss_falls[merge] ...`` -> test_loss_falls...[merge])."""
    head = assertion.split(" ")[0]
    stem, _, param = head.partition("[")
    for t in tests:
        name = t.split("::")[-1]
        if stem and stem in name and (not param or f"[{param}" in name or f"[{param.rstrip(']')}-" in name):
            return t
    return None


def table(runs: List[dict]) -> str:
    """Markdown: one row per test, one column per run: pass/FAIL and the test's smallest recorded margin."""
    labels = [r["run"] for r in runs]
    tests = sorted({t for r in runs for t in r["outcomes"]})
    cell: Dict[Tuple[str, str], str] = {}
    for r in runs:
        smallest: Dict[str, float] = {}
        for m in r["margins"]:
            owner = margin_owner(m["test"], tests) or m["test"]
            smallest[owner] = min(smallest.get(owner, float("inf")), m["margin"])
        for t in tests:
            state = r["outcomes"].get(t, "-")
            cell[t, r["run"]] = state + (f" {smallest[t]:+.3f}" if t in smallest else "")
    lines = ["| test | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for t in tests:
        lines.append(f"| {t} | " + " | ".join(cell[t, l] for l in labels) + " |")
    lines.append("| (run's wall time, s) | " + " | ".join(str(r["seconds"]) for r in runs) + " |")
    # each assertion's own range over the runs: value, bound and smallest margin
    by_assertion: Dict[str, List[dict]] = {}
    for r in runs:
        for m in r["margins"]:
            by_assertion.setdefault(m["test"], []).append(m)
    lines += ["", "| assertion: value > bound | bound | runs | value min .. max | smallest margin |",
              "|---|---|---|---|---|"]
    for name, ms in sorted(by_assertion.items()):
        values = [m["value"] for m in ms]
        lines.append(f"| {name} | {ms[0]['bound']:g} | {len(ms)} | {min(values):.3f} .. {max(values):.3f} | "
                     f"{min(m['margin'] for m in ms):+.3f} |")
    return "\n".join(lines)


def write_doc(doc: str, text: str) -> None:
    with open(doc) as f:
        content = f.read()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{doc}: no {BEGIN} ... {END} block to replace")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(1, 11)))
    ap.add_argument("--no-onednn-off", dest="onednn_off", action="store_false",
                    help="skip the run with TF_ENABLE_ONEDNN_OPTS=0 (seed 0)")
    ap.add_argument("--record", default=os.path.join(ROOT, "work", "learning-sweep.jsonl"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "reproducibility.md"))
    ap.add_argument("--table-only", action="store_true", help="render the recorded runs, run nothing")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (test paths, -k, --deselect)")
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(args.record), exist_ok=True)
    plan = ([(0, True)] if args.onednn_off else []) + [(s, False) for s in args.seeds]
    if not args.table_only:
        done = {r["run"] for r in load(args.record)}
        for seed, off in plan:
            if run_label(seed, off) in done:
                continue
            result = run_once(seed, off, args.pytest_args or ["tests"])
            with open(args.record, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{result['run']}: rc {result['rc']}, {result['seconds']} s, {result['summary']}", flush=True)
            write_doc(args.doc, table(load(args.record)))
    write_doc(args.doc, table(load(args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
