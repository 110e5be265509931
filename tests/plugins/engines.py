"""Session fixtures for the real Beam engines (``make engines`` fetched them into ``.engines/``).

- ``job_server(engine)``: the factory fixture ``engine_servers`` starts at most one job server per engine
  per session (Beam's Flink job server with an embedded Flink, Spark's with ``local[2]``, the Prism
  binary), on 127.0.0.1 at a free port, and stops every one at session end. A job then runs on it with
  :meth:`JobServer.pipeline_args`: ``--runner=PortableRunner --job_endpoint=127.0.0.1:PORT
  --environment_type=LOOPBACK``.

Where ``.engines/`` lacks an engine the tests that need it are skipped outside CI, and fail in CI
(``CI`` set: ``.ci/run`` runs ``make test``, which fetches them first).
"""
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

ENGINE_NAMES = ("flink", "spark", "prism")
START_TIMEOUT_S = 180


@dataclass
class JobServer:
    engine: str
    port: int
    proc: subprocess.Popen
    log_path: str
    workdir: str
    extra: List[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pipeline_args(self) -> List[str]:
        return ["--runner=PortableRunner", f"--job_endpoint={self.endpoint}", "--environment_type=LOOPBACK",
                *self.extra]

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def need_engine(engine: str) -> str:
    """The cached artifact of ``engine``; skip (fail in CI) when ``make engines`` has not fetched it."""
    from captionbeam.launch.engines import artifact_path, missing_message
    path = artifact_path(engine)
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(missing_message(engine, path))
        pytest.skip(missing_message(engine, path))
    return path


START_TRIES = 3


def start_job_server(engine: str, workdir: str, master: str = None) -> JobServer:
    """Start ``engine``'s job server on 127.0.0.1 and wait until it listens. The port is free when picked
    but may be taken before the server binds it (another test's server, Beam's own gRPC servers): a server
    that exits before it listens, or is gone once something answers on its port, is started again on
    another port, up to ``START_TRIES`` times."""
    for attempt in range(1, START_TRIES + 1):
        try:
            return _start_job_server(engine, workdir, master, attempt)
        except ExitedBeforeListening:
            if attempt == START_TRIES:
                raise


class ExitedBeforeListening(RuntimeError):
    """The job server process ended on its own before it listened (its log says why)."""


def _start_job_server(engine: str, workdir: str, master: str, attempt: int) -> JobServer:
    from captionbeam.launch.engines import EngineError, free_port, job_server_command, wait_for_port
    path = need_engine(engine)
    port = free_port()
    log_path = os.path.join(workdir, f"{engine}-job-server{'' if attempt == 1 else f'-{attempt}'}.log")
    if engine == "prism":
        cmd = [path, f"--job_port={port}", "--serve_http=false", "--log_level=warn"]
    else:
        cmd = job_server_command(engine, path, port, master=master,
                                 artifacts_dir=os.path.join(workdir, f"{engine}-artifacts"))
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    log.close()
    server = JobServer(engine, port, proc, log_path, workdir,
                       extra=["--parallelism=2"] if engine == "flink" else [])
    try:
        wait_for_port(port, proc, START_TIMEOUT_S, engine, log_path)
        if proc.poll() is not None:       # what answered is another process on that port
            raise EngineError(f"{engine}: the job server exited with status {proc.returncode} while something "
                              f"else answered on 127.0.0.1:{port} (log: {log_path})")
    except EngineError as e:
        exited = proc.poll() is not None
        server.stop()
        if exited:
            raise ExitedBeforeListening(str(e)) from None
        raise
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def engine_servers():
    """``engine_servers(name) -> JobServer``: one job server per engine for the whole session."""
    servers: Dict[str, JobServer] = {}
    workdir = tempfile.mkdtemp(prefix="captionbeam-engines-")

    def get(engine: str) -> JobServer:
        if engine not in servers or servers[engine].proc.poll() is not None:
            servers[engine] = start_job_server(engine, workdir)
        return servers[engine]

    yield get
    for server in servers.values():
        server.stop()
