"""``launch/cluster.spawn``: a process it returns is at once one of the cluster's (``owned``), never taken for one
that exited. Python's ``Popen`` returns before the kernel has set up the new program's arguments, so a check
right after it read an empty command line (13 times in 20 at load 10 on this machine): ``start`` then said a
JobManager it had just launched had "exited while starting". Real processes, started the way the cluster's are."""
import glob
import os
import signal
import sys
import zipfile

import pytest

from captionbeam.launch import cluster as cl


def test_a_spawned_process_is_owned_at_once(tmp_path):
    root = str(tmp_path)
    pids = []
    try:
        for _ in range(20):
            pid = cl.spawn([sys.executable, "-c", "import time; time.sleep(60)", f"{cl.MARKER}{root}"],
                            str(tmp_path / "log"))
            pids.append(pid)
            assert cl.owned(pid, root), cl.cmdline(pid)
    finally:
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)



def test_whole_means_the_engine_lists_exactly_the_running_workers(tmp_path):
    log = tmp_path / "flink-taskmanager-1.log"
    log.write_text("... Starting TaskManager with ResourceID: 127.0.0.1:1-aaaaaa\n...\n")
    mark = cl.log_mark(str(log))   # started again here: the new process appends to its predecessor's log
    assert cl.last_logged(str(log), cl._TASKMANAGER_ID, mark) is None      # not the dead one's id
    with open(log, "a") as f:
        f.write("... Starting TaskManager with ResourceID: 127.0.0.1:2-bbbbbb\nmore\n")
    running = [cl.last_logged(str(log), cl._TASKMANAGER_ID, mark), "127.0.0.1:3-cccccc"]
    assert running[0] == "127.0.0.1:2-bbbbbb"
    assert cl.whole(["127.0.0.1:3-cccccc", "127.0.0.1:2-bbbbbb"], running)
    assert not cl.whole(["127.0.0.1:1-aaaaaa", "127.0.0.1:3-cccccc"], running)     # the dead one still listed
    assert not cl.whole(["127.0.0.1:1-aaaaaa", "127.0.0.1:2-bbbbbb", "127.0.0.1:3-cccccc"], running)
    assert not cl.whole([], [None])                                                  # not logged yet
    assert cl.last_logged(str(tmp_path / "none.log"), cl._TASKMANAGER_ID) is None
    os.rename(log, str(log) + ".1")   # rolled over at start (Flink's log4j): the new file is read from its start
    log.write_text("... Starting TaskManager with ResourceID: 127.0.0.1:4-dddddd\n")
    assert cl.last_logged(str(log), cl._TASKMANAGER_ID, mark) == "127.0.0.1:4-dddddd"
    assert cl.whole([], [])


def test_every_process_has_one_launch_and_only_workers_are_replaced_alone(tmp_path):
    cfg = cl.ClusterConfig(root=str(tmp_path), engines=str(tmp_path / "engines"))
    ports = {"flink_rpc": 1, "flink_rest": 2, "spark_master": 3, "spark_webui": 4, "worker_pool": 5}
    os.makedirs(tmp_path / "engines" / "flink-dist" / "lib")
    names = ["flink-jobmanager", "flink-taskmanager-1", "flink-taskmanager-2", "spark-master", "spark-worker-1",
             "spark-worker-2", "sdk-worker-pool"]
    for name in names:
        cmd, _, _, log, _ = cl.process_launch(cfg, ports, name)
        assert log.endswith(f"{name}.log") and f"{cl.MARKER}{cfg.root}" in cmd
    worker = cl.process_launch(cfg, ports, "spark-worker-2")[0]
    assert "spark://127.0.0.1:3" in worker and worker[worker.index("--work-dir") + 1].endswith("work-2")
    assert [n for n in names if n.startswith(cl.REPLACEABLE)] == names[1:3] + names[4:]


def test_sdk_workers_share_the_cores_and_flink_spreads_a_job_over_its_taskmanagers(tmp_path):
    cfg = cl.ClusterConfig(root=str(tmp_path), engines=str(tmp_path))
    # one SDK worker per TaskManager (or Spark worker) at a time: the machine's cores shared between them
    assert cl.sdk_worker_env(cfg, 2) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    assert cl.sdk_worker_env(cfg, 16)["TF_NUM_INTRAOP_THREADS"] == "8"
    assert cl.sdk_worker_env(cl.ClusterConfig(root="r", engines="e", taskmanagers=3), 2)["TF_NUM_INTRAOP_THREADS"] == "1"
    assert cl.sdk_worker_env(cl.ClusterConfig(root="r", engines="e", sdk_worker_threads=4), 2)["TF_NUM_INTEROP_THREADS"] == "4"
    assert cl.flink_config(cfg, 1, 2)["cluster.evenly-spread-out-slots"] is True
    _, env, _, _, _ = cl.process_launch(cfg, {"worker_pool": 5}, "sdk-worker-pool")
    assert env["TF_NUM_INTRAOP_THREADS"] == cl.sdk_worker_env(cfg, os.cpu_count() or 1)["TF_NUM_INTRAOP_THREADS"]


def test_the_taskmanagers_get_beams_runner_jars_after_flinks_own(tmp_path):
    lib = tmp_path / "engines" / "flink" / "lib"
    dist = tmp_path / "engines" / "flink-dist" / "lib"
    lib.mkdir(parents=True)
    dist.mkdir(parents=True)
    for name in ("beam-runners-flink-1.19-2.62.0.jar", "flink-runtime-1.19.0.jar", "slf4j-jdk14-1.7.30.jar",
                 "log4j-api-2.17.1.jar", "guava-33.3.1-android.jar", "notes.txt"):
        (lib / name).write_text("")
    (dist / "flink-dist-1.19.3.jar").write_text("")
    assert [os.path.basename(j) for j in cl.beam_runner_jars(str(tmp_path / "engines"))] == [
        "beam-runners-flink-1.19-2.62.0.jar", "guava-33.3.1-android.jar"]
    cfg = cl.ClusterConfig(root=str(tmp_path), engines=str(tmp_path / "engines"))
    classpath = cl.flink_command(cfg, "taskmanager", "log")
    classpath = classpath[classpath.index("-cp") + 1].split(os.pathsep)
    assert os.path.basename(classpath[0]) == "flink-dist-1.19.3.jar" and classpath[1:] == cl.beam_runner_jars(cfg.engines)
    assert cl.beam_runner_jars(str(tmp_path / "none")) == []


def test_the_flink_job_server_of_the_cluster_stages_nothing_by_choice(tmp_path):
    """Built for real with javac against the engines cache's Beam (skipped without `make engines`)."""
    from captionbeam.launch.engines import default_cache
    core = glob.glob(os.path.join(default_cache(), "flink", "lib", "beam-sdks-java-core-*.jar"))
    if not core:
        pytest.skip("no engines cache: run `make engines`")
    engines = tmp_path / "engines"
    (engines / "flink").mkdir(parents=True)
    os.symlink(os.path.dirname(core[0]), engines / "flink" / "lib")
    launcher = cl.flink_job_server_jar(str(engines))
    manifest = zipfile.ZipFile(launcher).read("META-INF/MANIFEST.MF").decode().replace("\r\n ", "")
    assert "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver" in manifest
    assert "Class-Path: ../flink/job-server.jar staged-jars.jar" in manifest
    staged = zipfile.ZipFile(engines / "cluster" / "staged-jars.jar")
    assert staged.read("META-INF/services/org.apache.beam.sdk.options.PipelineOptionsRegistrar").decode().strip() == \
        "captionbeam.engines.StagedJars$Registrar"
    assert {"captionbeam/engines/StagedJars.class", "captionbeam/engines/StagedJars$Factory.class"} <= set(staged.namelist())
    assert cl.flink_job_server_jar(str(engines)) == launcher   # built once


def test_the_flink_job_server_cannot_be_built_says_what_to_do(tmp_path, monkeypatch):
    """No Beam in the engines cache: `make engines`; no javac on PATH: a JDK (`make sysdeps`). Nothing half-built
    is left for the next start to take as done."""
    from captionbeam.launch.engines import default_cache
    engines = tmp_path / "engines"
    (engines / "flink" / "lib").mkdir(parents=True)
    with pytest.raises(cl.ClusterError, match="no Beam core jar .*run `make engines`"):
        cl.flink_job_server_jar(str(engines))
    core = glob.glob(os.path.join(default_cache(), "flink", "lib", "beam-sdks-java-core-*.jar"))
    if not core:
        pytest.skip("no engines cache: run `make engines`")
    os.symlink(core[0], engines / "flink" / "lib" / os.path.basename(core[0]))
    monkeypatch.setenv("PATH", str(tmp_path / "no-jdk"))
    with pytest.raises(cl.ClusterError, match=r"javac is needed: `make sysdeps`"):
        cl.flink_job_server_jar(str(engines))
    assert sorted(os.listdir(engines / "cluster")) == []
