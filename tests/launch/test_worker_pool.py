"""The cluster's SDK worker pool (``launch/worker_pool.py``): an SDK worker SIGKILLed before the runner let it go is
started again with the same command (same worker id, same control endpoint), at most ``respawns`` times; one the
runner stops (``StopWorker``) is not; two runners' workers of one id are each stopped by their own runner. Real
worker processes (Beam's ``SdkHarness`` starting up), real signals; no runner: the workers are killed while they
start, the case that left Flink waiting without end."""
import os
import signal
import sys
import time

import pytest

from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2

from captionbeam.launch.worker_pool import SupervisedWorkerPool


def start_request(worker_id):
    return beam_fn_api_pb2.StartWorkerRequest(
        worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:9"))


def cmdline(pid):
    """The process's arguments, once its exec has finished (Popen returns a little before)."""
    def read():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        return raw.rstrip(b"\0").split(b"\0") if raw else None
    return wait_for(read, f"pid {pid}'s command line")


def wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not seen within {timeout}s: {what}")


@pytest.fixture
def pool():
    p = SupervisedWorkerPool(python=sys.executable, respawns=1, poll_s=0.1)
    yield p
    p.close()


def output_until(capfd, text, said):
    """Wait until the pool has printed ``text``; ``said`` collects what it printed."""
    def seen():
        said.append(capfd.readouterr().out)
        return text in "".join(said)
    wait_for(seen, text)
    return "".join(said)


def test_a_killed_worker_starts_again_then_gives_up(pool, capfd):
    assert pool.StartWorker(start_request("1-1"), None).error == ""
    first, = pool.worker_pids()
    command = cmdline(first)
    assert b"worker_id='1-1'" in command[-1] and b"'127.0.0.1:9'" in command[-1]
    os.kill(first, signal.SIGKILL)
    second, = wait_for(lambda: [p for p in pool.worker_pids() if p != first], "the worker started again")
    assert cmdline(second) == command
    os.kill(second, signal.SIGKILL)
    out = output_until(capfd, "not started again", [])
    assert f"worker 1-1 (pid {first}) was killed by SIGKILL; started it again (pid {second}, restart 1 of 1)" in out
    assert f"worker 1-1 (pid {second}) was killed by SIGKILL again; not started again after 1 restarts" in out
    assert pool.worker_pids() == [second]   # left dead, for the runner's StopWorker


def test_a_worker_the_runner_stops_is_not_started_again(pool, capfd):
    assert pool.StartWorker(start_request("2-1"), None).error == ""
    pid, = pool.worker_pids()
    pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="2-1"), None)
    assert pool.worker_pids() == []
    wait_for(lambda: not alive(pid), "the stopped worker gone")
    time.sleep(0.5)   # five watcher rounds
    assert pool.worker_pids() == []
    assert "started it again" not in capfd.readouterr().out


def test_two_runners_workers_of_one_id_each_stopped_by_their_own(pool, capfd):
    """Two runners (say two Spark executors) both ask for worker ``5-1``. One runner's StopWorker while both run
    stops neither; once one has ended (its runner closed its connection: here a SIGTERM), the next StopWorker
    takes that one and the other runner's worker runs on."""
    assert pool.StartWorker(start_request("5-1"), None).error == ""
    assert pool.StartWorker(start_request("5-1"), None).error == ""
    first, second = pool.worker_pids()
    pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="5-1"), None)
    assert sorted(pool.worker_pids()) == sorted([first, second]) and alive(first) and alive(second)
    assert "2 workers have id 5-1" in capfd.readouterr().out
    os.kill(first, signal.SIGTERM)
    wait_for(lambda: not alive(first), "the first worker ended")
    pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="5-1"), None)
    assert pool.worker_pids() == [second] and alive(second)
    pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="5-1"), None)
    assert pool.worker_pids() == []
    wait_for(lambda: not alive(second), "the second worker stopped")


def alive(pid):
    """``pid`` runs (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
