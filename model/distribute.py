"""Choosing the tf.distribute strategy: one device, mirrored (local GPUs or N logical CPUs), or
multi-worker mirrored from ``TF_CONFIG``.

Logical CPU devices must be configured before TensorFlow initialises its devices, so
``make_strategy`` is called first thing in a training process.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import tensorflow as tf

log = logging.getLogger(__name__)


@dataclass
class Distribution:
    strategy: tf.distribute.Strategy
    kind: str                   # one_device | mirrored | multiworker
    replicas: int               # replicas in sync (all workers)
    workers: int
    worker_index: int
    is_chief: bool

    def describe(self) -> str:
        devices = getattr(self.strategy.extended, "worker_devices", ())
        return (f"strategy {self.kind}: {self.replicas} replica(s) on {self.workers} worker(s) "
                f"[{', '.join(devices)}], this is worker {self.worker_index}{' (chief)' if self.is_chief else ''}")


def tf_config_cluster():
    """(cluster dict, task dict) from TF_CONFIG, or (None, None)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None, None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return cfg.get("cluster") or {}, cfg.get("task") or {}


def _cluster_workers(cluster) -> int:
    return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))


def configure_cpu_replicas(n: int) -> None:
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise RuntimeError(f"--cpu-replicas {n}: TensorFlow devices were already initialised in this process; "
                           f"configure logical CPUs before any TensorFlow op ({e})") from None


def make_strategy(kind: str = "auto", cpu_replicas: int = 0) -> Distribution:
    cluster, task = tf_config_cluster()
    if kind == "auto":
        if cluster and _cluster_workers(cluster) > 1:
            kind = "multiworker"
        elif cpu_replicas > 1 or len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "one_device"
    if kind == "multiworker":
        if not cluster:
            raise ValueError("--strategy multiworker needs TF_CONFIG with the cluster and this task "
                             "(see docs/training.md)")
        if cpu_replicas > 1:
            configure_cpu_replicas(cpu_replicas)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, int(resolver.task_id)
        has_chief = bool(cluster.get("chief"))
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
        index = task_id + (1 if has_chief and task_type == "worker" else 0)
        return Distribution(strategy, kind, strategy.num_replicas_in_sync, _cluster_workers(cluster), index, is_chief)
    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            n = max(cpu_replicas, 1)
            if n > 1:
                configure_cpu_replicas(n)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][:n]
            strategy = tf.distribute.MirroredStrategy(devices=devices,
                                                      cross_device_ops=tf.distribute.ReductionToOneDevice())
        return Distribution(strategy, kind, strategy.num_replicas_in_sync, 1, 0, True)
    if kind == "one_device":
        device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
        return Distribution(tf.distribute.OneDeviceStrategy(device), kind, 1, 1, 0, True)
    raise ValueError(f"--strategy: unknown strategy {kind!r}")
