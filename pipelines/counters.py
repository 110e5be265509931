"""Beam metrics of the captionbeam jobs: the namespace their counters live in, and reading them back."""
from __future__ import annotations

from typing import Dict

NAMESPACE = "captionbeam"                      # features, captions, pack, shards, dead letters
BULK_NAMESPACE = f"{NAMESPACE}.bulk"           # the bulk job's accounting (matched = captioned + skipped + failed)
BULK_INFERENCE_NAMESPACE = f"{BULK_NAMESPACE}.inference"  # RunInference's own metrics in the bulk job


def query_counters(result, namespace: str = NAMESPACE) -> Dict[str, int]:
    """``{counter name: value}`` of a finished pipeline ``result`` in ``namespace`` (committed values
    where the runner has them, else attempted; summed over steps). Empty when the runner reports no
    metrics."""
    from apache_beam.metrics.metric import MetricsFilter
    out: Dict[str, int] = {}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return out
    for c in found.get("counters", []):
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out
