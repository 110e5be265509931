"""Fault matrix, concurrent writer: a second run into an output a live run holds refuses at once (exit
75, naming the holder's command, host and pid) for every writing command, and leaves the first run's
output as it was; a holder killed with SIGKILL (a real process) is taken over at once, without --force.
The protocol is the one of pipelines/lease.py (``output_lease``)."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from captionbeam.launch.exit_codes import OUTPUT_IN_USE as EXIT_IN_USE
from captionbeam.pipelines.lease import OutputLease, lease_dir, output_lease, read_claims

WRITERS = ("features", "captions", "pack", "train", "scst", "evaluate", "export", "bulk", "retrain", "run")


def _argv(command, out, sample_dir, request):
    """(argv, the output path the lease is on, beside) of a run of ``command`` writing ``out``."""
    images = os.path.join(sample_dir, "images", "*.jpg")
    captions = os.path.join(sample_dir, "captions.txt")
    tiny = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32"]
    if command == "features":
        return ["features", "--images", images, "--output", out, *tiny], out, False
    if command == "captions":
        return ["captions", "--captions", captions, "--output", out], out, False
    if command == "pack":
        return ["pack", "--images", images, "--output", out, "--format", "tar"], out, False
    if command == "train":
        return ["train", "--data", sample_dir, "--model-dir", out, "--epochs", "1"], out, False
    if command == "scst":
        return ["train", "--objective", "scst", "--init-from", sample_dir, "--data", sample_dir, "--model-dir", out,
                "--epochs", "1"], out, False
    if command == "evaluate":
        predictions = os.path.join(out, "test.predictions.jsonl")
        return ["evaluate", "--model-dir", sample_dir, "--data", sample_dir, "--output", predictions], predictions, True
    if command == "export":
        return ["export", "--model-dir", sample_dir, "--output", out], out, True
    if command == "bulk":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["bulk", "--images", images, "--model-dir", model, "--output", out], out, False
    if command == "retrain":
        return ["retrain", "--root", out, "--images", images, "--captions", captions], out, False
    if command == "run":
        return ["run", "--workdir", out, "--sample-images", "20", "--sample-size", "32", "--image-size", "32",
                "--epochs", "1"], out, False
    raise AssertionError(command)


def _tree(path):
    """Every file under ``path`` with its bytes, lease folders left out."""
    found = {}
    for f in glob.glob(os.path.join(path, "**"), recursive=True):
        parts = os.path.relpath(f, path).split(os.sep)
        if os.path.isfile(f) and not any(p == "lease" or p.endswith(".lease") for p in parts):
            with open(f, "rb") as fh:
                found[f] = fh.read()
    return found


@pytest.mark.parametrize("command", WRITERS)
def test_second_writer_refuses_naming_the_holder_and_leaves_the_first_runs_output(command, tmp_path, sample_dir,
                                                                                    request, capsys):
    from captionbeam.launch.cli import main
    out = str(tmp_path / "out")
    argv, leased, beside = _argv(command, out, sample_dir, request)
    os.makedirs(out)
    first = os.path.join(out, "written-by-the-first-run.txt")     # what the live run has written so far
    with open(first, "w") as f:
        f.write("first run\n")
    before = _tree(out)
    with output_lease(leased, "first-" + command, beside=beside) as holder:
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == EXIT_IN_USE, err[-3000:]
        assert f"is in use by `captionbeam first-{command}` run {holder.run}" in err, err
        assert f"pid {os.getpid()}" in err and "--force" in err
        # the loser left no claim, and nothing of the first run changed
        assert [c["run"] for c in read_claims(leased, beside)] == [holder.run]
        assert _tree(out) == before
    assert not os.path.exists(lease_dir(leased, beside))           # released: no empty lease folder left


def test_a_holder_killed_with_sigkill_is_taken_over_at_once(tmp_path, caplog):
    out = str(tmp_path / "out")
    code = ("import sys, time\n"
            "from captionbeam.pipelines.lease import output_lease\n"
            "with output_lease(sys.argv[1], 'features'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        [claim] = read_claims(out)
        assert claim["pid"] == proc.pid and claim["command"] == "features"
        with pytest.raises(Exception, match=f"pid {proc.pid}"):     # alive: refused
            OutputLease(out, "second", command="features").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # dead (same host and boot, its pid gone): taken over at once, no --force, no 15-minute wait
    with output_lease(out, "features") as lease:
        assert [c["run"] for c in read_claims(out)] == [lease.run]
    assert "removing the stale lease of `captionbeam features`" in caplog.text
