"""The cluster's pool of Beam SDK worker processes (``--environment_type=EXTERNAL``), served on 127.0.0.1 only.

Beam's ``BeamFnExternalWorkerPoolServicer`` in process mode forks one SDK worker per ``StartWorker`` request and
forgets it: when that worker dies before it has connected to the runner's control service, the runner (Beam's
``ExternalEnvironmentFactory`` on a Flink TaskManager, or a Spark executor) waits for it without end. This pool
watches its workers: one killed by a signal (but SIGTERM or SIGINT) while the runner still wants it (no ``StopWorker`` yet) is started
again with the same command (the same worker id and control endpoint), at most ``respawns`` times for what one
``StartWorker`` started, and the pool's log says so. Killed once more, it is replaced by a stand-in
(:mod:`launch.stand_in_worker`) that connects under its id and fails the runner's instructions with the reason,
so the engine's restart strategy runs the job again on fresh workers (or fails it, saying why) instead of
waiting. A worker killed after it had connected makes the runner fail its tasks (the engine's restart or retry
takes over); the copy started for it is stopped with the rest by ``StopWorker``.
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


def stand_in_command(python: str, control_url: str, worker_id: str, reason: str) -> List[str]:
    """The stand-in that fails the runner's instructions for a worker the pool gave up on."""
    return [python, "-m", "captionbeam.launch.stand_in_worker", control_url, worker_id, reason]


def worker_command(python: str, control_url: str, worker_id: str) -> List[str]:
    """The SDK worker Beam's pool starts in process mode (``SdkHarness(...).run()``), with this environment's
    Python."""
    return [python, "-c", "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
            f"SdkHarness({control_url!r},worker_id={worker_id!r},state_cache_size=0,"
            "data_buffer_time_limit_ms=0).run()"]


class SupervisedWorkerPool(BeamFnExternalWorkerPoolServicer):
    """Process-mode worker pool that starts again a worker killed while the runner still wants it.

    Several runners share the pool (two Spark executors, two TaskManagers), each numbering its workers from
    ``1-1``: two live workers can have the same id, and ``StopWorker`` names only the id. So the pool keeps every
    worker of an id, and a ``StopWorker`` takes one that has already ended (its runner closed its connection) or
    else the only one alive; with several alive it stops none (each ends when its runner closes its connection).
    Beam's own pool kept one process per id and stopped the newest: a runner ending its environment killed
    another runner's worker while it started, and that runner then waited for it without end."""

    def __init__(self, python: str = sys.executable, respawns: int = RESPAWNS, poll_s: float = POLL_S):
        super().__init__(use_process=True)
        self._python = python
        self._respawns = respawns
        self._workers: Dict[str, List[subprocess.Popen]] = {}
        self._restarts: Dict[int, int] = {}     # pid -> restarts of what its StartWorker started (ids repeat)
        self._control: Dict[int, str] = {}      # pid -> its runner's control endpoint
        self._given_up: Set[int] = set()
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
            self._workers.setdefault(request.worker_id, []).append(proc)
            self._control[proc.pid] = request.control_endpoint.url
        print(f"sdk worker pool: started worker {request.worker_id} (pid {proc.pid})", flush=True)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request: beam_fn_api_pb2.StopWorkerRequest, context) -> beam_fn_api_pb2.StopWorkerResponse:
        worker_id = request.worker_id
        with self._lock:   # what is taken out here the watcher never starts again
            procs = self._workers.get(worker_id, [])
            ended = [p for p in procs if p.poll() is not None]
            alive = [p for p in procs if p.poll() is None]
            victim = ended[0] if ended else (alive[0] if len(alive) == 1 else None)
            if victim is not None:
                procs.remove(victim)
                self._control.pop(victim.pid, None)
                self._restarts.pop(victim.pid, None)
                if not procs:
                    self._workers.pop(worker_id, None)
        if victim is None:
            if alive:
                print(f"sdk worker pool: {len(alive)} workers have id {worker_id} (several runners ask this pool); "
                      "none stopped: each ends when its runner closes its connection", flush=True)
        elif victim.poll() is None:
            print(f"sdk worker pool: stopping worker {worker_id} (pid {victim.pid})", flush=True)
            kill_process_gracefully(victim)
        return beam_fn_api_pb2.StopWorkerResponse()

    def worker_pids(self) -> List[int]:
        """The pids of the workers the pool holds (alive, or ended and not yet let go by their runner)."""
        with self._lock:
            return [p.pid for procs in self._workers.values() for p in procs]

    def close(self) -> None:
        self._done.set()
        with self._lock:
            procs = [p for ps in self._workers.values() for p in ps]
            self._workers.clear()
        for proc in procs:
            proc.kill()

    def _watch(self, poll_s: float) -> None:
        while not self._done.wait(poll_s):
            with self._lock:
                for worker_id, procs in self._workers.items():
                    for i, proc in enumerate(procs):
                        rc = proc.poll()
                        if rc is not None and rc < 0 and -rc not in ASKED_TO_STOP and proc.pid not in self._given_up:
                            procs[i] = self._restart(worker_id, proc, -rc)

    def _restart(self, worker_id: str, dead: subprocess.Popen, signum: int) -> subprocess.Popen:
        """(lock held) ``dead`` was killed by ``signum``: -> a copy started in its place, or, after ``respawns``
        restarts of what one ``StartWorker`` started, a stand-in that fails the runner's instructions with the
        reason (``dead`` itself when even that cannot start; then left for ``StopWorker``)."""
        done = self._restarts.pop(dead.pid, 0)
        control = self._control.pop(dead.pid, "")
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if done >= self._respawns:
            self._given_up.add(dead.pid)
            reason = (f"sdk worker pool: SDK worker {worker_id} was killed by {name} {done + 1} times while it "
                      f"started; the pool gave up on it (see the pool's log)")
            try:
                stand_in = subprocess.Popen(stand_in_command(self._python, control, worker_id, reason),
                                            stdin=subprocess.DEVNULL, close_fds=True)
            except OSError as e:
                print(f"sdk worker pool: worker {worker_id} (pid {dead.pid}) was killed by {name} again; not started "
                      f"again after {done} restarts, and its stand-in could not start: {e}", flush=True)
                return dead
            self._given_up.add(stand_in.pid)
            print(f"sdk worker pool: worker {worker_id} (pid {dead.pid}) was killed by {name} again; not started "
                  f"again after {done} restarts: a stand-in (pid {stand_in.pid}) fails its runner's instructions, "
                  "so the engine restarts or fails the job", flush=True)
            return stand_in
        proc = subprocess.Popen(list(dead.args), stdin=subprocess.DEVNULL, close_fds=True)
        self._restarts[proc.pid] = done + 1
        self._control[proc.pid] = control
        print(f"sdk worker pool: worker {worker_id} (pid {dead.pid}) was killed by {name}; started it again "
              f"(pid {proc.pid}, restart {done + 1} of {self._respawns})", flush=True)
        return proc


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
