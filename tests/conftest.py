"""Shared fixtures. Each area keeps its session fixtures in ``tests/plugins/<area>.py``."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

pytest_plugins = [
    "tests.plugins.shards",
    "tests.plugins.gcs",
    "tests.plugins.data",
    "tests.plugins.training",
    "tests.plugins.decoding",
    "tests.plugins.launch",
    "tests.plugins.engines",
    "tests.plugins.cluster",
    "tests.plugins.journeys",
]


def pytest_sessionfinish(session, exitstatus):
    session.config._captionbeam_exit = int(exitstatus)


def pytest_unconfigure(config):
    """End the test process with pytest's own exit status once everything is reported, without the
    interpreter's teardown: after ~500 tests the process holds TensorFlow, gRPC (Beam's portable runners)
    and storage-client threads, and tearing those down at exit crashed once (SIGSEGV after the summary
    had printed), turning a green run red. The summary and every result are written before this hook."""
    status = getattr(config, "_captionbeam_exit", None)
    if status is not None and os.environ.get("CAPTIONBEAM_TEST_NORMAL_EXIT") != "1":
        import sys
        sys.stdout.flush()
        sys.stderr.flush()
        _stop_children()   # os._exit skips atexit: Beam's job servers started in this process would outlive it
        os._exit(status)


def _stop_children():
    """SIGKILL this process's child processes (job servers Beam started for in-process runs: their atexit
    stop does not run after os._exit; left alone they outlive the suite with PPID 1)."""
    import glob
    import signal
    children = set()
    for task in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            with open(task, encoding="utf-8") as f:
                children.update(int(c) for c in f.read().split())
        except OSError:
            pass
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
