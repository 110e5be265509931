"""``TF_CONFIG`` for one process of a MultiWorkerMirroredStrategy cluster, and its command-line tool
(``python -m captionbeam.launch.profiles tf-config``; the ``env:`` section of a profile documents it)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Dict, List, Optional, Sequence


def tf_config(workers: Sequence[str], index: int, task_type: str = "worker",
              chief: Optional[str] = None) -> dict:
    """``TF_CONFIG`` for one process of a MultiWorkerMirroredStrategy cluster.

    ``workers`` are ``host:port`` strings, identical and in the same order on every process; ``index``
    is this process's position in them. Worker 0 is the chief unless a separate ``chief`` is given.
    """
    workers = [w.strip() for w in workers if w.strip()]
    if not workers:
        raise ValueError("--workers: need at least one host:port")
    for w in workers + ([chief] if chief else []):
        host, _, port = w.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--workers: expected host:port, got {w!r}")
    cluster: Dict[str, List[str]] = {"worker": list(workers)}
    if chief:
        cluster["chief"] = [chief]
    size = len(cluster.get(task_type, []))
    if task_type not in cluster:
        raise ValueError(f"--task-type: {task_type!r} is not in the cluster ({', '.join(cluster)})")
    if not 0 <= index < size:
        raise ValueError(f"--index: {index} is out of range for {size} {task_type}(s)")
    return {"cluster": cluster, "task": {"type": task_type, "index": int(index)}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", required=True,
                        help="comma-separated host:port of every worker, same order everywhere")
    parser.add_argument("--index", type=int, default=None,
                        help="this worker's index (default: $JOB_COMPLETION_INDEX, set by an indexed Kubernetes Job)")
    parser.add_argument("--task-type", default="worker", choices=["worker", "chief"])
    parser.add_argument("--chief", default=None, help="host:port of a separate chief (default: worker 0 is the chief)")
    parser.add_argument("--export", action="store_true", help="print as a shell `export TF_CONFIG=...` line")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the TF_CONFIG of ``args`` (errors through ``parser.error``: exit 2 naming the flag)."""
    index = args.index
    if index is None:
        env = os.environ.get("JOB_COMPLETION_INDEX")
        if env is None:
            parser.error("--index: required (or set $JOB_COMPLETION_INDEX)")
        index = int(env)
    try:
        cfg = json.dumps(tf_config(args.workers.split(","), index, args.task_type, args.chief), separators=(",", ":"))
    except ValueError as e:
        parser.error(str(e))
    print(f"export TF_CONFIG={shlex.quote(cfg)}" if args.export else cfg)
    return 0
