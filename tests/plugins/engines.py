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


def start_job_server(engine: str, workdir: str, master: str = None) -> JobServer:
    """Start ``engine``'s job server on 127.0.0.1 and wait until it listens."""
    from captionbeam.launch.engines import free_port, job_server_command, wait_for_port
    path = need_engine(engine)
    port = free_port()
    log_path = os.path.join(workdir, f"{engine}-job-server.log")
    if engine == "prism":
        cmd = [path, f"--job_port={port}", "--serve_http=false", "--log_level=warn"]
    else:
        cmd = job_server_command(engine, path, port, master=master, artifacts_dir=os.path.join(workdir, "artifacts"))
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    log.close()
    server = JobServer(engine, port, proc, log_path, workdir,
                       extra=["--parallelism=2"] if engine == "flink" else [])
    try:
        wait_for_port(port, proc, START_TIMEOUT_S, engine, log_path)
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
