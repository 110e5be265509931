"""Explaining a Beam job that failed on a real engine (Flink, Spark, Prism, a portable job server): which
engine, and what to do. Fetching the engines is :mod:`launch.engines`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class EngineTarget:
    """Which engine a job's Beam flags send it to, as far as a failure message needs to know."""
    engine: str            # flink, spark, prism, portable, or "" (DirectRunner, Dataflow, ...)
    master: str = ""       # --flink_master / --spark_master_url / --job_endpoint


def engine_of(options: Mapping[str, object]) -> EngineTarget:
    """The engine of a job's Beam options as parsed once (``RunnerFlags.options``: dest -> value)."""
    def get(name: str, default: str = "") -> str:
        value = options.get(name)
        return default if value is None else str(value)
    runner = get("runner").lower().replace("runner", "")
    if runner == "flink":
        return EngineTarget("flink", get("flink_master", "[auto]"))
    if runner == "spark":
        return EngineTarget("spark", get("spark_master_url", "local[4]"))
    if runner in ("prism", "portable"):
        return EngineTarget(runner, get("job_endpoint"))
    return EngineTarget("")


# Prism's own check that a job can make no more progress (engine/elementmanager.go): "Jobs must never get
# stuck so this indicates a bug in prism" -- seen once in ~30 jobs (the Prism journey's 5 runs) on a loaded
# machine with Beam 2.78's Prism, at features' count of a file write's finalised names (timestamped at the
# end of the global window)
PRISM_STUCK = "nothing in progress and no refreshes with non zero pending elements"

_CONNECTION_WORDS = ("unavailable", "connection refused", "socket closed", "failed to connect", "cancelled",
                     "connection reset", "deadline exceeded", "broken pipe", "rst_stream", "goaway")


_JOB_MODULES = ("apache_beam", "grpc")


def raised_outside_the_job(exc: BaseException) -> bool:
    """True where ``exc`` was raised and no frame of its traceback is Beam's or gRPC's: our own code failed
    before or after the job (a bug to show as it is), not the engine or the job on it. An exception with no
    traceback (never raised) counts as the job's."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(_JOB_MODULES):
            return False
        tb = tb.tb_next
    return True


def explain_failure(exc: BaseException, options: Mapping[str, object]) -> Optional[str]:
    """A short message naming the engine and what to do for a job that failed on a portable engine, or
    None where the job did not run on one (the caller re-raises). ``options``: ``RunnerFlags.options``."""
    target = engine_of(options)
    if not target.engine or isinstance(exc, (KeyboardInterrupt, SystemExit)) or raised_outside_the_job(exc):
        return None
    text = f"{type(exc).__name__}: {exc}"
    lower = text.lower()
    first = next((l.strip() for l in str(exc).splitlines() if l.strip()), type(exc).__name__)[:400]
    name = target.engine if target.engine != "portable" else f"the job server at {target.master}"
    remote = target.master not in ("", "[local]", "[auto]") and not target.master.startswith("local")
    if target.engine == "flink" and remote and ("flink" in lower or "connect" in lower or "refused" in lower
                                                or "jobsubmission" in lower or "rest" in lower):
        hint = (f"check that --flink_master={target.master} is the REST address (host:port, usually 8081) of a "
                "running Flink JobManager reachable from here, or use --profile flink-local for an embedded Flink")
    elif PRISM_STUCK in lower:
        hint = (f"{name} stopped the job as stuck (Prism's own check; a scheduling bug of the engine, cf. "
                "apache/beam#31338, not a fault of the job or its input): its output folder holds no completion "
                "marker from this run; rerun the command (features and captions: with --overwrite when they say "
                "the stopped run left files)")
    elif any(w in lower for w in _CONNECTION_WORDS):
        hint = (f"the {name} job server stopped answering during the job (killed, out of memory, or the "
                "machine went away); look at its log, then rerun the job: its output folder holds no "
                "completion marker from this run (features_spec.json, stats.json, runs/<run>.json), so "
                "nothing it left there counts as done")
    else:
        hint = (f"the job failed on {name}; the engine's own reason is above. Rerun with --log-level DEBUG "
                "for the job server's log")
    return f"{name}: the Beam job failed: {first}\n{name}: {hint}"
