"""``launch/cluster.spawn``: a process it returns is at once one of the cluster's (``owned``), never taken for one
that exited. Python's ``Popen`` returns before the kernel has set up the new program's arguments, so a check
right after it read an empty command line (13 times in 20 at load 10 on this machine): ``start`` then said a
JobManager it had just launched had "exited while starting". Real processes, started the way the cluster's are."""
import os
import signal
import sys

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

