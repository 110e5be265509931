"""A real multi-process cluster on this machine's loopback: a Flink standalone session cluster (one
JobManager, N TaskManagers, each its own JVM), a Spark standalone cluster (one master, N workers) and a
pool of Beam SDK worker processes, all on 127.0.0.1, with their logs, ports and process ids in one folder.

``make cluster`` / ``make cluster-stop`` (``python -m captionbeam.launch.cluster start|stop|status``)::

    .cluster/cluster.json          ports, pids, addresses (what the flink-cluster / spark-cluster profiles read)
    .cluster/logs/*.log            one log per process
    .cluster/flink/conf/config.yaml the Flink configuration (restart strategy, memory, loopback binds)

The distributions come from ``make engines`` (``.engines/flink-dist``, ``.engines/spark-dist``; see
:mod:`launch.engines`). Every JVM is started directly (``java -cp ... <entry point class>``), not through the
distributions' daemon scripts, so each pid is known, carries ``-Dcaptionbeam.cluster=<folder>`` and is
stopped by pid (its process group: a Spark worker's executors, the pool's SDK workers) and by nothing else.

The SDK worker pool (:mod:`launch.worker_pool`: Beam's ``BeamFnExternalWorkerPoolServicer`` in process mode that
starts again a worker killed before the runner let it go), served on 127.0.0.1 only: the engines'
``--environment_type=EXTERNAL --environment_config=127.0.0.1:PORT`` ask it for SDK workers, each a Python process
of this environment.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

CLUSTER_ENV = "CAPTIONBEAM_CLUSTER"
STATE_FILE = "cluster.json"
MARKER = "-Dcaptionbeam.cluster="
HOST = "127.0.0.1"
# placeholder in a profile -> the cluster.json key that holds its value
PLACEHOLDERS = {"{cluster.flink_master}": "flink_master", "{cluster.spark_master_url}": "spark_master_url",
                "{cluster.worker_pool}": "worker_pool"}
# Flink's Java 17 flags, as the distribution's conf/config.yaml sets them (env.java.opts.all)
FLINK_JAVA_OPTS = ("--add-exports=java.base/sun.net.util=ALL-UNNAMED --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED "
                   "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED "
                   "--add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED "
                   "--add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
                   "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED "
                   "--add-opens=java.base/java.time=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED "
                   "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
                   "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED "
                   "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED").split()


class ClusterError(RuntimeError):
    """The cluster cannot start, or is not running: the message names the process, its log and what to do."""


class ProcessExited(ClusterError):
    """One of the cluster's processes exited while the cluster was starting (``start`` tries once more, on
    fresh ports, before it raises this)."""


@dataclass(frozen=True)
class ClusterConfig:
    """What ``start`` builds. Memory per JVM is kept small: the machine is shared."""
    root: str                      # the folder of cluster.json, logs, configuration, work dirs
    engines: str                   # the engines cache holding flink-dist/ and spark-dist/
    python: str = sys.executable   # the Python of the SDK workers (this environment, with captionbeam)
    taskmanagers: int = 2
    slots_per_taskmanager: int = 2     # a job at parallelism 2 still fits after one TaskManager is lost
    spark_workers: int = 2
    spark_worker_cores: int = 1
    spark_worker_memory_mb: int = 768  # offered to executors (the profiles ask 512m each)
    restart_attempts: int = 3          # Flink restart-strategy fixed-delay
    restart_delay_s: int = 2
    start_timeout_s: float = 240.0
    sdk_worker_threads: int = 0        # TensorFlow threads per SDK worker; 0: this machine's cores / workers


def sdk_worker_env(cfg: ClusterConfig, cores: int) -> Dict[str, str]:
    """TensorFlow's thread pools of each SDK worker: every TaskManager (and Spark worker) has one SDK worker
    at a time, and here they share this machine's ``cores``. TensorFlow sizes both pools to every core of
    the machine, so two workers on 2 cores ran 8 busy threads (MobileNet features: 455 images/s in the
    compute stage with 1 thread each, 360 with the default)."""
    threads = cfg.sdk_worker_threads or max(1, cores // max(cfg.taskmanagers, cfg.spark_workers, 1))
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads)}


def default_root() -> str:
    """``$CAPTIONBEAM_CLUSTER``, else ``.cluster/`` in the checkout that holds this package."""
    env = os.environ.get(CLUSTER_ENV, "").strip()
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cluster")


def default_config(root: Optional[str] = None) -> ClusterConfig:
    from captionbeam.launch.engines import default_cache
    return ClusterConfig(root=os.path.abspath(root or default_root()), engines=default_cache())


# ----------------------------------------------------------------------------- pure parts
def flink_config(cfg: ClusterConfig, rpc_port: int, rest_port: int) -> Dict[str, object]:
    """Flink's config.yaml (flat keys): loopback binds, small fixed memory, the restart strategy."""
    return {
        "jobmanager.rpc.address": HOST, "jobmanager.rpc.port": rpc_port, "jobmanager.bind-host": HOST,
        "rest.address": HOST, "rest.bind-address": HOST, "rest.port": rest_port,
        "taskmanager.host": HOST, "taskmanager.bind-host": HOST,
        "taskmanager.numberOfTaskSlots": cfg.slots_per_taskmanager, "parallelism.default": 2,
        # a job's subtasks over every TaskManager, not packed into the first one's slots: each TaskManager
        # has its own SDK worker, so packed subtasks shared one Python process (half the cluster idle)
        "cluster.evenly-spread-out-slots": True,
        # Beam's runner classes (and what they use) come from the JobManager's and TaskManagers' own class path
        # (beam_runner_jars), also for a job that stages its jars (a job server started without the profile's
        # StagedJars): child-first from those, a second copy of Beam's vendored gRPC met the first in one JVM
        # ("loader constraint violation ... IndexedQueueSizeUtil$IndexedQueue") and every later job failed; with
        # Beam's own classes parent-first only, joda-time's two copies clashed (ClassCastException)
        "classloader.resolve-order": "parent-first",
        "taskmanager.cpu.cores": float(cfg.slots_per_taskmanager),
        # every memory component explicit: the JVM flags below follow from them (no BashJavaUtils)
        "jobmanager.memory.heap.size": "256m", "jobmanager.memory.off-heap.size": "64m",
        "jobmanager.memory.jvm-metaspace.size": "192m",
        "jobmanager.memory.jvm-overhead.min": "128m", "jobmanager.memory.jvm-overhead.max": "128m",
        "taskmanager.memory.framework.heap.size": "64m", "taskmanager.memory.task.heap.size": "320m",
        "taskmanager.memory.framework.off-heap.size": "128m", "taskmanager.memory.task.off-heap.size": "0m",
        "taskmanager.memory.managed.size": "96m",
        "taskmanager.memory.network.min": "128m", "taskmanager.memory.network.max": "128m",
        # a blocking (batch) result partition takes 512 buffers by default: 64 lets a Beam job's many fit
        "taskmanager.network.sort-shuffle.min-buffers": 64,
        "taskmanager.memory.jvm-metaspace.size": "192m",
        "taskmanager.memory.jvm-overhead.min": "128m", "taskmanager.memory.jvm-overhead.max": "128m",
        # a lost TaskManager (or SDK worker) fails its tasks; the job restarts up to N times, D s apart
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": cfg.restart_attempts,
        "restart-strategy.fixed-delay.delay": f"{cfg.restart_delay_s} s",
        "jobmanager.execution.failover-strategy": "full",
        "heartbeat.timeout": 20000, "heartbeat.interval": 5000,
        "io.tmp.dirs": os.path.join(cfg.root, "flink", "tmp"),
        "web.tmpdir": os.path.join(cfg.root, "flink", "web"),
        "blob.storage.directory": os.path.join(cfg.root, "flink", "blobs"),
    }


JM_JVM = ["-Xms256m", "-Xmx256m", "-XX:MaxMetaspaceSize=192m", "-XX:MaxDirectMemorySize=64m"]
TM_JVM = ["-Xms384m", "-Xmx384m", "-XX:MaxMetaspaceSize=192m", "-XX:MaxDirectMemorySize=256m"]
SPARK_DAEMON_JVM = ["-Xmx256m"]


# Flink's own jars and logging bindings come from the distribution; the Beam runner's copies are left out
NOT_FROM_BEAM = ("flink-", "slf4j-", "log4j-", "logback-")
STAGED_JARS_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "captionbeam", "engines",
                                  "StagedJars.java")


def beam_runner_jars(engines: str) -> List[str]:
    """The Beam runner's classes for the cluster's JobManager and TaskManagers: the Flink job server's jars
    (``{engines}/flink/lib``) but Flink's own and the logging bindings, which the distribution provides. With
    them there, the ``flink-cluster`` profile's job server stages no jars with a job
    (:func:`flink_job_server_jar`), where Beam's default uploads the job server's whole class path, ~160 jars
    (150 MiB), to the JobManager at every job and every TaskManager fetches them (17-20 s of a 24-image job at
    load 10, and 150 MiB more of blobs on disk per job)."""
    lib = os.path.join(engines, "flink", "lib")
    if not os.path.isdir(lib):
        return []
    return sorted(os.path.join(lib, j) for j in os.listdir(lib) if j.endswith(".jar") and not j.startswith(NOT_FROM_BEAM))


def flink_job_server_jar(engines: str) -> str:
    """``{engines}/cluster/flink-job-server.jar``: Beam's Flink job server (``{engines}/flink/job-server.jar``)
    with :data:`STAGED_JARS_SOURCE` beside it, compiled (``javac``) into ``staged-jars.jar``, so that the job
    server describes Beam's ``--pipeline_resources_detector_factory_class`` and the profile can pick
    ``captionbeam.engines.StagedJars$Factory`` (stage nothing). Built once (again when the source is newer);
    :class:`ClusterError` when it cannot be."""
    from captionbeam.launch.engines import FLINK, write_launcher_jar
    folder = os.path.join(engines, "cluster")
    launcher = os.path.join(folder, "flink-job-server.jar")
    staged = os.path.join(folder, "staged-jars.jar")
    if os.path.exists(launcher) and os.path.exists(staged) and os.path.getmtime(staged) >= os.path.getmtime(STAGED_JARS_SOURCE):
        return launcher
    core = sorted(glob.glob(os.path.join(engines, "flink", "lib", "beam-sdks-java-core-*.jar")))
    if not core:
        raise ClusterError(f"cluster: no Beam core jar in {os.path.join(engines, 'flink', 'lib')}: run `make engines`")
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="staged-jars-", dir=folder) as tmp:
        services = os.path.join(tmp, "META-INF", "services")
        os.makedirs(services)
        with open(os.path.join(services, "org.apache.beam.sdk.options.PipelineOptionsRegistrar"), "w") as f:
            f.write("captionbeam.engines.StagedJars$Registrar\n")
        try:
            subprocess.run(["javac", "--release", "11", "-d", tmp, "-cp", core[-1], STAGED_JARS_SOURCE], check=True,
                           capture_output=True, text=True)
            subprocess.run(["jar", "cf", os.path.join(tmp, "staged-jars.jar"), "-C", tmp, "captionbeam", "-C", tmp,
                            "META-INF"], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            said = getattr(e, "stderr", "") or str(e)
            raise ClusterError(f"cluster: cannot compile {STAGED_JARS_SOURCE} (a JDK's javac is needed: "
                               f"`make sysdeps`): {said.strip()[-500:]}") from None
        os.replace(os.path.join(tmp, "staged-jars.jar"), staged)
    # the job server's own launcher jar first (its manifest names its ~160 jars), then the detector
    return write_launcher_jar(launcher, FLINK.main_class, [os.path.join("..", "flink", "job-server.jar"),
                                                           "staged-jars.jar"])


def flink_command(cfg: ClusterConfig, role: str, log_file: str) -> List[str]:
    dist = os.path.join(cfg.engines, "flink-dist")
    lib = os.path.join(dist, "lib")
    jars = sorted(os.path.join(lib, j) for j in os.listdir(lib) if j.endswith(".jar") and "flink-dist" not in j)
    jars += [os.path.join(lib, j) for j in os.listdir(lib) if j.startswith("flink-dist")]
    jars += beam_runner_jars(cfg.engines)   # after Flink's own: the distribution's classes come first
    main = ("org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint" if role == "jobmanager"
            else "org.apache.flink.runtime.taskexecutor.TaskManagerRunner")
    return ["java", *(JM_JVM if role == "jobmanager" else TM_JVM), *FLINK_JAVA_OPTS, f"{MARKER}{cfg.root}",
            f"-Dlog.file={log_file}", f"-Dlog4j.configurationFile=file:{os.path.join(dist, 'conf', 'log4j.properties')}",
            "-cp", os.pathsep.join(jars), main, "--configDir", os.path.join(cfg.root, "flink", "conf")]


def spark_command(cfg: ClusterConfig, role: str, master_port: int, webui_port: int, index: int = 0) -> List[str]:
    from captionbeam.launch.engines import JAVA17_OPENS
    jars = os.path.join(cfg.engines, "spark-dist", "jars", "*")
    opens = [f"--add-opens={m}=ALL-UNNAMED" for m in JAVA17_OPENS.split()]
    head = ["java", *SPARK_DAEMON_JVM, *opens, f"{MARKER}{cfg.root}", "-cp", jars]
    if role == "master":
        return head + ["org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(master_port),
                       "--webui-port", str(webui_port)]
    # a finished application's folder (the ~260 MiB of jars the job server ships) goes after a minute
    cleanup = ["-Dspark.worker.cleanup.enabled=true", "-Dspark.worker.cleanup.interval=60",
               "-Dspark.worker.cleanup.appDataTtl=60"]
    return head[:-3] + cleanup + head[-3:] + ["org.apache.spark.deploy.worker.Worker", "--host", HOST, "--port", "0", "--webui-port", "0",
                   "--cores", str(cfg.spark_worker_cores), "--memory", f"{cfg.spark_worker_memory_mb}m",
                   "--work-dir", os.path.join(cfg.root, "spark", f"work-{index}"), f"spark://{HOST}:{master_port}"]


def spark_env(cfg: ClusterConfig) -> Dict[str, str]:
    """Spark's daemons (and the executors a worker forks) bind and advertise loopback only."""
    return {**os.environ, "SPARK_HOME": os.path.join(cfg.engines, "spark-dist"), "SPARK_LOCAL_IP": HOST,
            "SPARK_SCALA_VERSION": "2.12",
            "SPARK_NO_DAEMONIZE": "1"}


def pool_command(cfg: ClusterConfig, port: int) -> List[str]:
    return [cfg.python, "-m", "captionbeam.launch.cluster", "worker-pool", "--port", str(port),
            f"{MARKER}{cfg.root}"]


def resolve_cluster_flags(flags: Sequence[str], root: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """Flags with ``{cluster.*}`` replaced from ``cluster.json`` -> (flags, problems). A problem names the
    missing cluster and ``make cluster``."""
    if not any(p in f for f in flags for p in PLACEHOLDERS):
        return list(flags), []
    root = root or default_root()
    state = read_state(root)
    if not state:
        return list(flags), [f"cluster: no cluster is running ({os.path.join(root, STATE_FILE)} is missing): "
                             "run `make cluster` (or `python -m captionbeam.launch.cluster start`)"]
    out = []
    for flag in flags:
        for placeholder, key in PLACEHOLDERS.items():
            flag = flag.replace(placeholder, str(state[key]))
        out.append(flag)
    return out, []


# ----------------------------------------------------------------------------- processes
def read_state(root: str) -> dict:
    try:
        with open(os.path.join(root, STATE_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def gone(pid: int) -> bool:
    """``pid`` has exited (no such process, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def owned(pid: int, root: str) -> bool:
    """``pid`` is alive and is one of this cluster's processes (its command line names the folder)."""
    try:
        args = cmdline(pid).split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
    except OSError:
        return False
    return f"{MARKER}{root}".encode() in args


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.loads(r.read().decode("utf-8"))


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "\n".join("    " + l for l in f.read().splitlines()[-lines:])
    except OSError:
        return "    (no log)"


def _first_errors(path: str, most: int = 4) -> List[str]:
    """The first ERROR and ``Caused by:`` lines of a log (a dying JVM's reason comes before its shutdown noise)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            found = [l.strip()[:300] for l in f if " ERROR " in l or l.startswith("Caused by:")]
    except OSError:
        return []
    return found[:most]


def _exit_report(log: str) -> str:
    """The first errors and the tail of a process's log, and the tail of its console file (``<log>.out``: a
    Flink JVM's stdout and stderr, where a JVM that dies before its logging starts says why) when that holds
    anything."""
    errors = _first_errors(log)
    report = "".join(f"\n    {e}" for e in errors)
    report = (f"its first errors:{report}\n  " if errors else "") + f"its log {log}:\n{_tail(log)}"
    console = log + ".out"
    if os.path.exists(console) and os.path.getsize(console) > 0:
        report += f"\n  its console {console}:\n{_tail(console)}"
    return report


def cmdline(pid: int) -> bytes:
    """``/proc/<pid>/cmdline`` (arguments NUL-separated); empty when there is no such process, or while it is
    still being exec'd."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def spawn(cmd: Sequence[str], log_path: str, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
           exec_timeout_s: float = 30.0) -> int:
    """Start ``cmd`` in a session of its own, output to ``log_path``; returns once its exec has finished (its
    /proc cmdline is ``cmd``), so that :func:`owned` sees it at once. (Python's ``Popen`` returns when the
    vforked child has released the parent's memory, before the kernel has set up the new program's arguments:
    for a while its cmdline reads empty, or this process's own, and a busy machine made that window long enough
    for ``start`` to take a JobManager, or a TaskManager started again, for one that had exited.)"""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env else None, cwd=cwd, start_new_session=True)
    deadline = time.time() + exec_timeout_s
    wanted = b"".join(os.fsencode(arg) + b"\0" for arg in cmd)
    while cmdline(proc.pid) != wanted and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    return proc.pid


def _write_state(root: str, state: dict) -> None:
    tmp = os.path.join(root, STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(root, STATE_FILE))


def status(root: Optional[str] = None) -> dict:
    """The recorded cluster with each process's liveness: ``{"running": bool, "processes": {name: {..., "alive"}}}``."""
    root = os.path.abspath(root or default_root())
    state = read_state(root)
    procs = {name: {**p, "alive": owned(p["pid"], root)} for name, p in state.get("processes", {}).items()}
    return {**state, "root": root, "processes": procs, "running": bool(procs) and all(p["alive"] for p in procs.values())}


def _wait(what: str, ready, pids: Mapping[str, Tuple[int, str]], root: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for name, (pid, log) in pids.items():
            if gone(pid):   # not `owned`: a JVM's command line can read empty for a moment while it starts
                raise ProcessExited(f"cluster: {name} (pid {pid}) exited while starting; {_exit_report(log)}")
        try:
            if ready():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    logs = ", ".join(log for _, log in pids.values())
    raise ClusterError(f"cluster: {what} not ready within {timeout:.0f}s (logs: {logs})")


START_ATTEMPTS = 2   # a process that exits while starting: everything is stopped and started once more


def start(cfg: ClusterConfig, out=None) -> dict:
    """Start the cluster, or return the running one (idempotent). A half-dead recorded cluster is stopped
    first. When a process exits while starting (say a port picked for it was taken before it bound it: every
    port is picked free by this process and bound later by the JVM), all are stopped and started once more on
    fresh ports, the first attempt's reason printed. Raises :class:`ClusterError` naming the process and its
    log (and console) when something does not come up."""
    out = out or sys.stdout
    current = status(cfg.root)
    if current["running"] and current.get("flink_job_server"):
        print(f"cluster: already running ({os.path.join(cfg.root, STATE_FILE)})", file=out)
        return current
    if current["running"]:   # started by an earlier captionbeam: its TaskManagers lack Beam's classes
        print("cluster: the running cluster was started by an earlier captionbeam (its TaskManagers lack Beam's "
              "runner classes): starting it again", file=out)
        stop(cfg.root, out=out)
        current = status(cfg.root)
    if current["processes"]:
        dead = sorted(name for name, p in current["processes"].items() if not p["alive"])
        if all(name.startswith(REPLACEABLE) for name in dead):
            try:
                return _replace_dead(cfg, current, dead, out)
            except ClusterError as e:
                print(f"{e}\ncluster: starting the whole cluster again", file=out)
        stop(cfg.root, out=out)
    from captionbeam.launch.engines import FLINK_DIST, SPARK_DIST, missing_message
    for spec in (FLINK_DIST, SPARK_DIST):
        if not os.path.exists(os.path.join(cfg.engines, spec.name, spec.check)):
            raise ClusterError(missing_message(spec.name, os.path.join(cfg.engines, spec.name, spec.check)))
    attempt = 1
    while True:
        try:
            return _start_once(cfg, out)
        except ProcessExited as e:
            if attempt >= START_ATTEMPTS:
                raise
            attempt += 1
            print(f"{e}\ncluster: starting it once more, on fresh ports", file=out)


def _start_once(cfg: ClusterConfig, out) -> dict:
    """One attempt: pick ports, write the configuration, launch every process and wait until each is ready;
    on any failure everything launched is stopped before the exception goes on."""
    from captionbeam.launch.engines import FLINK_DIST, SPARK_DIST
    logs = os.path.join(cfg.root, "logs")
    for d in (logs, os.path.join(cfg.root, "flink", "conf"), os.path.join(cfg.root, "flink", "tmp")):
        os.makedirs(d, exist_ok=True)
    ports = {"flink_rpc": free_port(), "flink_rest": free_port(), "spark_master": free_port(),
             "spark_webui": free_port(), "worker_pool": free_port()}
    with open(os.path.join(cfg.root, "flink", "conf", "config.yaml"), "w", encoding="utf-8") as f:
        for key, value in flink_config(cfg, ports["flink_rpc"], ports["flink_rest"]).items():
            f.write(f"{key}: {json.dumps(value) if isinstance(value, (str, bool)) else value}\n")
    state = {"root": cfg.root, "config": asdict(cfg), "ports": ports,
             "flink_master": f"{HOST}:{ports['flink_rest']}",
             "flink_rest": f"http://{HOST}:{ports['flink_rest']}",
             "spark_master_url": f"spark://{HOST}:{ports['spark_master']}",
             "spark_webui": f"http://{HOST}:{ports['spark_webui']}",
             "worker_pool": f"{HOST}:{ports['worker_pool']}",
             "versions": {"flink": FLINK_DIST.version, "spark": SPARK_DIST.version},
             "flink_job_server": flink_job_server_jar(cfg.engines),   # raises before anything starts
             "processes": {}}
    procs: Dict[str, dict] = state["processes"]
    started = time.time()

    def launch(name: str) -> None:
        cmd, env, cwd, log, output = process_launch(cfg, ports, name)
        mark = log_mark(log)
        procs[name] = {"pid": spawn(cmd, output, env, cwd), "log": log, "log_mark": mark}
        _write_state(cfg.root, state)   # recorded at once: a failed start is still stopped by `stop`

    try:
        launch("flink-jobmanager")
        for i in range(1, cfg.taskmanagers + 1):
            launch(f"flink-taskmanager-{i}")
        launch("spark-master")
        launch("sdk-worker-pool")
        _wait("the Spark master", lambda: _listening(ports["spark_master"]), _pids(procs), cfg.root, cfg.start_timeout_s)
        for i in range(1, cfg.spark_workers + 1):
            launch(f"spark-worker-{i}")
        _wait_registered(cfg, state, _pids(procs), cfg.start_timeout_s)
    except BaseException:
        stop(cfg.root, out=out)
        raise
    state["start_seconds"] = round(time.time() - started, 1)
    _write_state(cfg.root, state)
    print(f"cluster: started in {state['start_seconds']}s: Flink {state['flink_rest']} (1 JobManager, "
          f"{cfg.taskmanagers} TaskManagers), Spark {state['spark_master_url']} ({cfg.spark_workers} workers), "
          f"SDK worker pool {state['worker_pool']}; logs in {logs}", file=out)
    return status(cfg.root)


def process_launch(cfg: ClusterConfig, ports: Mapping[str, int], name: str):
    """How the cluster's process ``name`` is started (the one source for a first start and a replacement):
    ``(command, environment, working folder, log, the file its output goes to)``."""
    logs = os.path.join(cfg.root, "logs")
    log = os.path.join(logs, f"{name}.log")
    if name == "flink-jobmanager" or name.startswith("flink-taskmanager-"):
        role = "jobmanager" if name == "flink-jobmanager" else "taskmanager"
        return flink_command(cfg, role, log), None, None, log, log + ".out"
    if name == "spark-master":
        return spark_command(cfg, "master", ports["spark_master"], ports["spark_webui"]), spark_env(cfg), None, log, log
    if name.startswith("spark-worker-"):
        index = int(name.rsplit("-", 1)[1])
        return spark_command(cfg, "worker", ports["spark_master"], 0, index), spark_env(cfg), None, log, log
    if name == "sdk-worker-pool":
        env = {**os.environ, "PATH": os.path.dirname(cfg.python) + os.pathsep + os.environ.get("PATH", ""),
               **sdk_worker_env(cfg, os.cpu_count() or 1)}
        return pool_command(cfg, ports["worker_pool"]), env, cfg.root, log, log
    raise ValueError(f"cluster: no process named {name!r}")


# processes that can be started again on their own (the JobManager and the Spark master hold the cluster's state:
# when one of them is gone, the whole cluster is started again)
REPLACEABLE = ("flink-taskmanager-", "spark-worker-", "sdk-worker-pool")
_TASKMANAGER_ID = re.compile(r"Starting TaskManager with ResourceID: (\S+)")
_SPARK_WORKER_ADDRESS = re.compile(r"Starting Spark worker (\S+) with")


def last_logged(path: str, pattern: "re.Pattern", mark: Sequence[int] = (0, 0)) -> Optional[str]:
    """The first group of ``pattern``'s last match in the log ``path`` since ``mark`` (:func:`log_mark` taken
    when the process was started: a Spark process started again appends to its predecessor's log; Flink's
    log4j rolls the file over at start, a new file); None when the process has not logged it yet."""
    found = pattern.findall(logged_since(path, mark))
    return found[-1] if found else None


def logged_since(path: str, mark: Sequence[int] = (0, 0)) -> str:
    """What the log ``path`` holds since ``mark`` (:func:`log_mark`; a file rolled over since is read whole);
    empty when it cannot be read."""
    inode, offset = mark
    try:
        with open(path, "rb") as f:
            f.seek(offset if os.fstat(f.fileno()).st_ino == inode else 0)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def whole(registered: Sequence[str], running: Sequence[Optional[str]]) -> bool:
    """The engine lists exactly the workers that run now: each running one has logged its id and registered,
    and no dead one is still listed (a killed TaskManager stays listed until the JobManager's heartbeat timeout,
    a killed Spark worker until the master sees its connection drop)."""
    return None not in running and sorted(registered) == sorted(running)


def _logged(procs: Mapping[str, dict], prefix: str, pattern: "re.Pattern") -> List[Optional[str]]:
    return [last_logged(p["log"], pattern, p.get("log_mark", (0, 0))) for name, p in procs.items()
            if name.startswith(prefix)]


def log_mark(path: str) -> Tuple[int, int]:
    """(inode, size) of a log now: where what a process started next writes begins."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_size)


def _wait_registered(cfg: ClusterConfig, state: dict, pids: Mapping[str, Tuple[int, str]], timeout: float) -> None:
    """Until Flink and Spark list exactly the TaskManagers and workers that run now (:func:`whole`) and the SDK
    worker pool listens."""
    procs = state["processes"]
    _wait(f"Flink ({cfg.taskmanagers} TaskManagers registered)",
          lambda: whole([t["id"] for t in _get_json(f"{state['flink_rest']}/taskmanagers").get("taskmanagers", [])],
                        _logged(procs, "flink-taskmanager-", _TASKMANAGER_ID)),
          pids, cfg.root, timeout)
    _wait(f"Spark ({cfg.spark_workers} workers registered)",
          lambda: whole([f"{w['host']}:{w['port']}" for w in _get_json(f"{state['spark_webui']}/json/").get("workers", [])
                         if w.get("state") == "ALIVE"], _logged(procs, "spark-worker-", _SPARK_WORKER_ADDRESS)),
          pids, cfg.root, timeout)
    _wait("the SDK worker pool", lambda: _listening(state["ports"]["worker_pool"]), pids, cfg.root, timeout)


def _replace_dead(cfg: ClusterConfig, current: dict, dead: Sequence[str], out) -> dict:
    """Start again, on their recorded ports and with their recorded commands, just the cluster's processes that
    died (TaskManagers, Spark workers, the SDK worker pool), and wait until the cluster is whole: the running
    processes, and any job on them, are left alone. ``ClusterError`` when that does not come up (the caller
    then starts the whole cluster again)."""
    state = {k: v for k, v in current.items() if k not in ("running",)}
    state["processes"] = {name: {k: v for k, v in p.items() if k != "alive"} for name, p in current["processes"].items()}
    started = time.time()
    for name in dead:
        cmd, env, cwd, log, output = process_launch(cfg, state["ports"], name)
        mark = log_mark(log)
        state["processes"][name] = {"pid": spawn(cmd, output, env, cwd), "log": log, "log_mark": mark}
        _write_state(cfg.root, state)
    _wait_registered(cfg, state, _pids(state["processes"]), cfg.start_timeout_s)
    print(f"cluster: started {', '.join(dead)} again in {time.time() - started:.1f}s (the rest kept running)", file=out)
    return status(cfg.root)


def _pids(procs: Mapping[str, dict]) -> Dict[str, Tuple[int, str]]:
    return {name: (p["pid"], p["log"]) for name, p in procs.items()}


def stop(root: Optional[str] = None, out=None, grace_s: float = 15.0) -> List[str]:
    """Stop every recorded process that is still this cluster's (SIGTERM to its process group, SIGKILL after
    ``grace_s``), then remove cluster.json. Idempotent: nothing recorded, nothing done. -> names stopped."""
    out = out or sys.stdout
    root = os.path.abspath(root or default_root())
    state = read_state(root)
    alive = {name: p["pid"] for name, p in state.get("processes", {}).items() if owned(p["pid"], root)}
    for pid in alive.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and any(owned(pid, root) for pid in alive.values()):
        time.sleep(0.3)
    for pid in alive.values():
        try:
            os.killpg(pid, signal.SIGKILL)   # the group: also what the process forked (executors, SDK workers)
        except OSError:
            pass
    # gone before this returns: a start right after never runs beside the processes it replaces
    deadline = time.time() + grace_s
    while time.time() < deadline and any(owned(pid, root) for pid in alive.values()):
        time.sleep(0.1)
    try:
        os.remove(os.path.join(root, STATE_FILE))
    except OSError:
        pass
    print(f"cluster: stopped {', '.join(sorted(alive)) or 'nothing (not running)'}", file=out)
    return sorted(alive)


# ----------------------------------------------------------------------------- the SDK worker pool
def sdk_worker_pids(root: Optional[str] = None) -> List[int]:
    """The SDK worker processes the pool has forked (its children), oldest first."""
    root = os.path.abspath(root or default_root())
    pool = read_state(root).get("processes", {}).get("sdk-worker-pool", {}).get("pid")
    if not pool:
        return []
    children = set()
    for task in glob.glob(f"/proc/{pool}/task/*/children"):   # each thread's own (the pool forks from gRPC's)
        try:
            with open(task, encoding="utf-8") as f:
                children.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return sorted(children)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captionbeam.launch.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help=f"the cluster's folder (default: ${CLUSTER_ENV} or .cluster/)")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("start", help="start the cluster (nothing done when it runs)")
    sub.add_parser("stop", help="stop the cluster's processes")
    sub.add_parser("status", help="print cluster.json with each process's liveness")
    pool = sub.add_parser("worker-pool", help="(internal) serve the SDK worker pool")
    pool.add_argument("--port", type=int, required=True)
    a, rest = parser.parse_known_args(argv)
    if a.what == "worker-pool":
        from captionbeam.launch.worker_pool import serve
        serve(a.port)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if a.what == "start":
            start(default_config(a.root))
        elif a.what == "stop":
            stop(a.root)
        else:
            s = status(a.root)
            print(json.dumps({k: s[k] for k in ("running", "root") if k in s} | {
                "processes": {n: {"pid": p["pid"], "alive": p["alive"]} for n, p in s["processes"].items()},
                **{k: s[k] for k in ("flink_master", "spark_master_url", "worker_pool", "flink_rest", "spark_webui")
                   if k in s}}, indent=2))
            return 0 if s["running"] else 3
    except ClusterError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
