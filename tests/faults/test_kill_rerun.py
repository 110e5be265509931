"""Fault matrix, kill -9 mid-job for the Beam writers: a real ``captionbeam`` process SIGKILLed while it
holds its output's lease and runs; the re-run goes on at once (the dead claim is provably dead: same
host, pid gone), removes what the killed run left, and finishes with every input accounted for once.
(retrain: test_retrain_kill.py; train: tests/model/test_checkpoints_resume.py.)"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _argv(command, sample_dir, out):
    images = os.path.join(sample_dir, "images", "*.jpg")
    if command == "features":
        return ["features", "--images", images, "--output", out, "--encoder", "mobilenet", "--weights", "none",
                "--image-size", "32"]
    return ["pack", "--images", images, "--output", out, "--format", "tar", "--shard-size", "8"]


@pytest.mark.parametrize("command", ["features", "pack"])
def test_kill_mid_job_then_rerun_finishes_without_force(command, sample_dir, tmp_path, capsys):
    from captionbeam.launch.cli import main
    out = str(tmp_path / "out")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    job = subprocess.Popen([sys.executable, "-m", "captionbeam.launch.cli", *_argv(command, sample_dir, out)],
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not glob.glob(os.path.join(out, "lease", "*.claim")):     # it holds the lease: it is writing
            assert job.poll() is None, "the job ended before it was killed"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        assert job.wait() == -signal.SIGKILL
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert glob.glob(os.path.join(out, "lease", "*.claim"))            # the dead run's claim stays behind
    capsys.readouterr()
    assert main(_argv(command, sample_dir, out)) == 0, capsys.readouterr().err[-3000:]   # no --force, no wait
    images = len(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))
    if command == "features":
        spec = json.load(open(os.path.join(out, "features_spec.json")))
        assert spec["count"] + spec["dead_letters"] == images and spec["count"] == images
        from captionbeam.pipelines.features import read_feature_ids
        ids = [r["image_id"] for r in read_feature_ids(out)]
        assert len(ids) == len(set(ids)) == images                      # nothing lost, nothing duplicated
    else:
        rows = [json.loads(l) for l in open(os.path.join(out, "manifest.jsonl")) if l.strip()]
        assert len(rows) == len({r["id"] for r in rows}) == images
    assert not glob.glob(os.path.join(out, "**", "beam-temp-*"), recursive=True)
    assert not os.path.exists(os.path.join(out, "lease"))
