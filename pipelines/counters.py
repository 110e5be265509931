"""Beam metrics of the captionbeam jobs: the namespace their counters live in, and reading them back.

A portable runner's job service answers with one MonitoringInfo per counter *and per container it kept
it in*: the Spark runner keeps one container per fused stage (``SparkExecutableStageFunction`` files a
bundle's metrics under its stage's input), and a transform after a Flatten of two branches (bulk's loose
files and tar shards) runs in one stage per branch, so its counter comes back twice under the same
transform. Beam's own reader (``portable_metrics.from_monitoring_infos``) keeps the last of those and
drops the others (Spark 2.78: ``matched`` 30 of 40, ``captioned`` 10 of 40). :func:`query_counters`
reads the job service's answer itself and sums every part.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

NAMESPACE = "captionbeam"                      # features, captions, pack, shards, dead letters
BULK_NAMESPACE = f"{NAMESPACE}.bulk"           # the bulk job's accounting (matched = captioned + skipped + failed)
BULK_INFERENCE_NAMESPACE = f"{BULK_NAMESPACE}.inference"  # RunInference's own metrics in the bulk job


def sum_user_counters(infos: Iterable, namespace: str) -> Dict[str, int]:
    """``{counter name: sum}`` of the user counters in ``namespace`` among ``infos`` (MonitoringInfo
    protos): every part counts, however many a runner reports for one transform or one name."""
    from apache_beam.metrics import monitoring_infos as mi
    out: Dict[str, int] = {}
    for info in infos:
        if not (mi.is_user_monitoring_info(info) and mi.is_counter(info)):
            continue
        ns, name = mi.parse_namespace_and_name(info)
        if ns == namespace:
            out[name] = out.get(name, 0) + int(mi.extract_metric_result_map_value(info) or 0)
    return out


def _portable_job_metrics(result) -> Optional[Tuple[list, list]]:
    """(committed, attempted) MonitoringInfos of a job run through a portable job service (Flink, Spark,
    Prism, ``--job_endpoint``), asked of it directly; None for other results (DirectRunner's, Dataflow's)."""
    try:
        from apache_beam.portability.api import beam_job_api_pb2
        from apache_beam.runners.portability.portable_runner import PipelineResult
    except ImportError:  # pragma: no cover - Beam without the portability package
        return None
    service, job_id = getattr(result, "_job_service", None), getattr(result, "_job_id", None)
    if not isinstance(result, PipelineResult) or service is None or job_id is None:
        return None
    metrics = service.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id)).metrics
    return list(metrics.committed), list(metrics.attempted)


def query_counters(result, namespace: str = NAMESPACE) -> Dict[str, int]:
    """``{counter name: value}`` of a finished pipeline ``result`` in ``namespace`` (committed values
    where the runner has them, else attempted; summed over steps, and over a step's parts where a portable
    runner reports it more than once, see the module doc). Empty when the runner reports no metrics."""
    try:
        portable = _portable_job_metrics(result)
    except Exception:  # noqa: BLE001 - a job service that does not answer: Beam's own reader below
        portable = None
    if portable is not None:
        committed, attempted = (sum_user_counters(infos, namespace) for infos in portable)
        return {name: committed.get(name, attempted.get(name, 0)) for name in {*committed, *attempted}}
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
