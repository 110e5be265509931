"""The cluster's pool of Beam SDK worker processes (``--environment_type=EXTERNAL``), served on 127.0.0.1 only.

Beam's ``BeamFnExternalWorkerPoolServicer`` in process mode forks one SDK worker per ``StartWorker`` request and
forgets it: when that worker dies before it has connected to the runner's control service, the runner (Beam's
``ExternalEnvironmentFactory`` on a Flink TaskManager, or a Spark executor) waits for it without end. This pool
watches its workers: one killed by a signal (but SIGTERM or SIGINT) while the runner still wants it (no ``StopWorker`` yet) is started
again with the same command (the same worker id and control endpoint), at most ``respawns`` times per worker,
and the pool's log says so. A worker killed after it had connected makes the runner fail its tasks (the
engine's restart or retry takes over); the copy started for it is stopped with the rest by ``StopWorker``.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Dict, List, Set

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer, kill_process_gracefully
from apache_beam.utils import thread_pool_executor

HOST = "127.0.0.1"
RESPAWNS = 2      # per worker id
POLL_S = 0.5
ASKED_TO_STOP = (signal.SIGTERM, signal.SIGINT)   # a worker ended by these was stopped, not lost


def worker_command(python: str, control_url: str, worker_id: str) -> List[str]:
    """The SDK worker Beam's pool starts in process mode (``SdkHarness(...).run()``), with this environment's
    Python."""
    return [python, "-c", "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
            f"SdkHarness({control_url!r},worker_id={worker_id!r},state_cache_size=0,"
            "data_buffer_time_limit_ms=0).run()"]


class SupervisedWorkerPool(BeamFnExternalWorkerPoolServicer):
    """Process-mode worker pool that starts again a worker killed while the runner still wants it."""

    def __init__(self, python: str = sys.executable, respawns: int = RESPAWNS, poll_s: float = POLL_S):
        super().__init__(use_process=True)
        self._python = python
        self._respawns = respawns
        self._restarted: Dict[str, int] = {}
        self._stopped: Set[str] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(poll_s,), name="sdk-worker-watch", daemon=True)
        self._watcher.start()

    def StartWorker(self, request: beam_fn_api_pb2.StartWorkerRequest, context) -> beam_fn_api_pb2.StartWorkerResponse:
        cmd = worker_command(self._python, request.control_endpoint.url, request.worker_id)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)   # output: the pool's log
        except OSError as e:
            return beam_fn_api_pb2.StartWorkerResponse(error=f"sdk worker pool: cannot start {cmd[0]}: {e}")
        with self._lock:
            self._stopped.discard(request.worker_id)
            self._worker_processes[request.worker_id] = proc
        print(f"sdk worker pool: started worker {request.worker_id} (pid {proc.pid})", flush=True)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request: beam_fn_api_pb2.StopWorkerRequest, context) -> beam_fn_api_pb2.StopWorkerResponse:
        with self._lock:   # the watcher never starts again a worker being stopped
            self._stopped.add(request.worker_id)
            proc = self._worker_processes.pop(request.worker_id, None)
        if proc is not None:
            print(f"sdk worker pool: stopping worker {request.worker_id} (pid {proc.pid})", flush=True)
            kill_process_gracefully(proc)
        return beam_fn_api_pb2.StopWorkerResponse()

    def worker_pids(self) -> List[int]:
        with self._lock:
            return [p.pid for p in self._worker_processes.values()]

    def close(self) -> None:
        self._done.set()
        with self._lock:
            procs = list(self._worker_processes.values())
            self._worker_processes.clear()
        for proc in procs:
            proc.kill()

    def _watch(self, poll_s: float) -> None:
        while not self._done.wait(poll_s):
            with self._lock:
                for worker_id, proc in list(self._worker_processes.items()):
                    rc = proc.poll()
                    if rc is None or rc >= 0 or -rc in ASKED_TO_STOP or worker_id in self._stopped:
                        continue   # running, ended by itself, asked to stop, or stopped by the runner
                    self._restart(worker_id, proc, -rc)

    def _restart(self, worker_id: str, dead: subprocess.Popen, signum: int) -> None:
        """(lock held) ``dead`` was killed by ``signum``: start it again, or give up after ``respawns``."""
        done = self._restarted.get(worker_id, 0)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if done >= self._respawns:
            self._worker_processes.pop(worker_id, None)
            print(f"sdk worker pool: worker {worker_id} (pid {dead.pid}) was killed by {name} again; "
                  f"not started again after {done} restarts", flush=True)
            return
        proc = subprocess.Popen(list(dead.args), stdin=subprocess.DEVNULL, close_fds=True)
        self._worker_processes[worker_id] = proc
        self._restarted[worker_id] = done + 1
        print(f"sdk worker pool: worker {worker_id} (pid {dead.pid}) was killed by {name}; started it again "
              f"(pid {proc.pid}, restart {done + 1} of {self._respawns})", flush=True)


def serve(port: int, python: str = sys.executable) -> None:
    """Serve the pool on 127.0.0.1:``port`` (Beam's own ``worker_pool_main`` listens on every interface) until
    SIGTERM; its workers are killed on the way out."""
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    server.add_insecure_port(f"{HOST}:{port}")
    pool = SupervisedWorkerPool(python=python)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    print(f"sdk worker pool: listening on {HOST}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.wait_for_termination()
    finally:
        pool.close()
        server.stop(0)
