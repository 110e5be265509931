"""The cluster's SDK worker pool (``launch/worker_pool.py``): an SDK worker SIGKILLed before the runner let it go is
started again with the same command (same worker id, same control endpoint), at most ``respawns`` times per worker
started, then replaced by a stand-in that fails the runner's instructions with the reason; one the runner stops
(``StopWorker``) is not; two runners' workers of one id are each stopped by their own runner. Real worker
processes (Beam's ``SdkHarness`` starting up), real signals, the workers killed while they start (the case that
left Flink waiting without end); the runner's side of the control stream is a gRPC server speaking Beam's Fn API
(the real runner, Flink, is in ``tests/launch/test_cluster.py``)."""
import os
import queue
import signal
import sys
import time
from concurrent import futures

import grpc
import pytest

from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, beam_runner_api_pb2, endpoints_pb2

from captionbeam.launch.worker_pool import SupervisedWorkerPool


def start_request(worker_id, control_url="127.0.0.1:9"):
    return beam_fn_api_pb2.StartWorkerRequest(
        worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control_url))


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


class RunnerControl(beam_fn_api_pb2_grpc.BeamFnControlServicer):
    """The runner's side of the control stream, as Beam's runners speak it: each worker that connects gets one
    ProcessBundle instruction for a stage that reads from the runner's data service (this server); its answer,
    the worker id it connected as and the data streams opened are kept."""

    def __init__(self):
        self.answers = queue.Queue()
        self.data_streams = []   # worker ids of the data streams opened
        self.url = ""

    def Control(self, responses, context):
        worker_id = dict(context.invocation_metadata()).get("worker_id")
        yield beam_fn_api_pb2.InstructionRequest(
            instruction_id="bundle-7", process_bundle=beam_fn_api_pb2.ProcessBundleRequest(
                process_bundle_descriptor_id="stage-1"))
        for response in responses:
            self.answers.put((worker_id, response))
            return

    def GetProcessBundleDescriptor(self, request, context):
        port = beam_fn_api_pb2.RemoteGrpcPort(api_service_descriptor=endpoints_pb2.ApiServiceDescriptor(url=self.url))
        read = beam_runner_api_pb2.PTransform(spec=beam_runner_api_pb2.FunctionSpec(
            urn="beam:runner:source:v1", payload=port.SerializeToString()))
        return beam_fn_api_pb2.ProcessBundleDescriptor(id=request.process_bundle_descriptor_id,
                                                       transforms={"read": read})


class RunnerData(beam_fn_api_pb2_grpc.BeamFnDataServicer):
    def __init__(self, control):
        self.control = control

    def Data(self, elements, context):
        self.control.data_streams.append(dict(context.invocation_metadata()).get("worker_id"))
        for _ in elements:
            pass
        return iter(())


@pytest.fixture
def runner():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    control = RunnerControl()
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(control, server)
    beam_fn_api_pb2_grpc.add_BeamFnDataServicer_to_server(RunnerData(control), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    control.url = f"127.0.0.1:{port}"
    yield control
    server.stop(0)


def test_a_killed_worker_starts_again_then_a_stand_in_fails_its_instructions(pool, runner, capfd):
    """Killed while it starts (before it connects), a worker is started again once (``respawns=1``); killed again,
    the pool starts a stand-in that connects under its id and answers the runner's instruction with the reason,
    (and opens its data stream), so the runner fails the task at once instead of waiting for the worker."""
    assert pool.StartWorker(start_request("1-1", runner.url), None).error == ""
    first, = pool.worker_pids()
    command = cmdline(first)
    assert b"worker_id='1-1'" in command[-1] and runner.url.encode() in command[-1]
    os.kill(first, signal.SIGKILL)
    second, = wait_for(lambda: [p for p in pool.worker_pids() if p != first], "the worker started again")
    assert cmdline(second) == command
    os.kill(second, signal.SIGKILL)
    out = output_until(capfd, "not started again", [])
    assert f"worker 1-1 (pid {first}) was killed by SIGKILL; started it again (pid {second}, restart 1 of 1)" in out
    assert f"worker 1-1 (pid {second}) was killed by SIGKILL again; not started again after 1 restarts" in out
    stand_in, = pool.worker_pids()
    assert b"captionbeam.launch.stand_in_worker" in b" ".join(cmdline(stand_in))
    worker_id, answer = runner.answers.get(timeout=60)
    assert worker_id == "1-1" and answer.instruction_id == "bundle-7"
    # its data stream opens under the worker's id: a runner waits for it (Beam's 3 minutes) before it reads the
    # answer. (Checked at the answer it raced the server's handler: the stream starts on a thread of its own.)
    wait_for(lambda: runner.data_streams == ["1-1"], "the stand-in's data stream, under the worker's id")
    assert answer.error == ("sdk worker pool: SDK worker 1-1 was killed by SIGKILL 2 times while it started; "
                            "the pool gave up on it (see the pool's log)")
    output_until(capfd, "stand-in for 1-1 failed instruction bundle-7 (process_bundle)", [])
    wait_for(lambda: not alive(stand_in), "the stand-in ends when the runner closes the stream")
    time.sleep(0.5)   # five watcher rounds: a stand-in is never started again
    assert pool.worker_pids() == [stand_in]


def test_restarts_are_counted_per_worker_started_not_per_id(pool, capfd):
    """Every job's runner numbers its workers from ``1-1``: a worker restarted in one job leaves the next job's
    ``1-1`` its own restarts (counted per id, the pool gave up on the first kill of every later job's worker)."""
    said = []
    for job in (1, 2):
        assert pool.StartWorker(start_request("1-1"), None).error == ""
        pid, = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        output_until(capfd, f"worker 1-1 (pid {pid}) was killed by SIGKILL; started it again", said)
        again, = wait_for(lambda: [p for p in pool.worker_pids() if p != pid], "the worker started again")
        pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1-1"), None)   # the job ends
        wait_for(lambda: not alive(again), f"job {job}'s worker stopped")
        assert pool.worker_pids() == []
    assert "not started again" not in "".join(said)


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
