"""Helpers (not fixtures) for tests that SIGKILL a real ``captionbeam`` process mid-job."""
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sigkill_once(argv, ready, env) -> None:
    """Run ``python -m captionbeam.launch.cli argv``; SIGKILL it as soon as ``ready()`` is true (the job must
    not end before that) and wait until it is gone."""
    job = subprocess.Popen([sys.executable, "-m", "captionbeam.launch.cli", *argv], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            assert job.poll() is None, "the job ended before it was killed"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        assert job.wait() == -signal.SIGKILL
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
