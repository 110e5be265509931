"""Fault matrix, kill -9 at a commit point, for every writing command: a real ``captionbeam`` process
SIGKILLed while it holds its output's lease (the Beam writers: once the lease is taken, mid-job) or at a
named commit point (``$CAPTIONBEAM_CRASH_AT``, pipelines/crash_points.py); the re-run goes on at once
(the dead claim is provably dead: same host, pid gone) and ends in one consistent outcome: everything
the killed run left is finished or removed, every input accounted for once, nothing half-written.
(retrain: test_retrain_kill.py; train: tests/model/test_checkpoints_resume.py; bulk:
tests/pipelines/test_bulk.py.)"""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from captionbeam.pipelines.crash_points import CRASH_ENV
from tests.plugins.processes import sigkill_once

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32"]


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **extra}


def _killed_at(argv, point):
    """Run ``captionbeam argv`` in a child armed to SIGKILL itself at commit point ``point``."""
    proc = subprocess.run([sys.executable, "-m", "captionbeam.launch.cli", *argv], env=_env(**{CRASH_ENV: point}),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: rc {proc.returncode}\n{proc.stderr[-3000:]}"


def _ok(capsys, *argv):
    from captionbeam.launch.cli import main
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    return out


def _argv(command, sample_dir, out):
    images = os.path.join(sample_dir, "images", "*.jpg")
    if command == "features":
        return ["features", "--images", images, "--output", out, *TINY]
    if command == "captions":
        return ["captions", "--captions", os.path.join(sample_dir, "captions.txt"), "--output", out]
    return ["pack", "--images", images, "--output", out, "--format", "tar", "--shard-size", "8"]


@pytest.mark.parametrize("command", ["features", "captions", "pack"])
def test_kill_mid_job_then_rerun_finishes_without_force(command, sample_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    # killed once it holds the lease: it is writing
    sigkill_once(_argv(command, sample_dir, out), lambda: glob.glob(os.path.join(out, "lease", "*.claim")), _env())
    assert glob.glob(os.path.join(out, "lease", "*.claim"))            # the dead run's claim stays behind
    _ok(capsys, *_argv(command, sample_dir, out))                       # no --force, no wait
    images = len(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))
    if command == "features":
        spec = json.load(open(os.path.join(out, "features_spec.json")))
        assert spec["count"] + spec["dead_letters"] == images and spec["count"] == images
        from captionbeam.pipelines.features import read_feature_ids
        ids = [r["image_id"] for r in read_feature_ids(out)]
        assert len(ids) == len(set(ids)) == images                      # nothing lost, nothing duplicated
    elif command == "captions":
        from captionbeam.model.data_stats import DataStats
        stats = DataStats.from_json(open(os.path.join(out, "stats.json")).read())
        assert sum(stats.split_images(s) for s in stats.ordered_splits()) == images
    else:
        rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl")) if line.strip()]
        assert len(rows) == len({r["id"] for r in rows}) == images
    assert not glob.glob(os.path.join(out, "**", "beam-temp-*"), recursive=True)
    assert not glob.glob(os.path.join(out, "**", "*.tmp-*"), recursive=True)
    assert not os.path.exists(os.path.join(out, "lease"))


def test_evaluate_killed_between_predictions_and_metrics(decoding_model_dirs, tmp_path, capsys):
    """An earlier run's metrics never sit beside a later run's predictions."""
    model_dir, data_dir, truth = decoding_model_dirs["merge"]
    preds = str(tmp_path / "preds.jsonl")
    metrics = str(tmp_path / "preds.metrics.json")
    argv = ["evaluate", "--model-dir", model_dir, "--data", data_dir, "--output", preds, "--coco-metrics", "bleu"]
    _ok(capsys, *argv, "--limit", "5")                       # an earlier run: 5 images, its metrics
    assert json.load(open(metrics))["decoding"]["images"] == 5
    _killed_at(argv, "evaluate:predictions-written")
    assert len(open(preds).read().splitlines()) == len(truth) and not os.path.exists(metrics)
    assert os.path.isdir(preds + ".lease")                   # the dead run's claim
    _ok(capsys, *argv)
    assert len(open(preds).read().splitlines()) == len(truth)
    assert json.load(open(metrics))["decoding"]["images"] == len(truth)
    assert sorted(os.listdir(tmp_path)) == ["preds.jsonl", "preds.metrics.json"]


def test_run_killed_before_a_stage_marker_resumes_that_stage(tmp_path, capsys):
    """``run`` killed after the captions stage committed its output but before its marker: --resume keeps
    sample and features, runs captions again (its own output replaced) and finishes."""
    work = str(tmp_path / "work")
    argv = ["run", "--workdir", work, "--sample-images", "20", "--sample-size", "32", "--image-size", "32",
            "--epochs", "1", "--caption-images", "2", "--min-count", "1", "--no-report"]
    _killed_at(argv, "run:captions-done")
    stages = os.path.join(work, "stages")
    assert sorted(os.listdir(stages)) == ["features.json", "sample.json"]
    out = _ok(capsys, *argv, "--resume")
    assert "(done earlier, --resume" in out or "(cached)" in out, out[-3000:]
    assert {"sample.json", "features.json", "captions.json", "train.json", "evaluate.json"} <= set(os.listdir(stages))
    assert not glob.glob(os.path.join(work, "**", "beam-temp-*"), recursive=True)
    assert not glob.glob(os.path.join(work, "**", "*.tmp-*"), recursive=True)
    assert not glob.glob(os.path.join(work, "**", "*lease"), recursive=True)


@pytest.mark.parametrize("where,point", [("local", "export:swapping"), ("gs", "export:staged"),
                                         ("gs", "export:swapping")])
def test_export_overwrite_killed_leaves_the_old_or_the_new_never_neither(where, point, image_model_dir,
                                                                        exported_model, tmp_path, capsys, request):
    """``export --overwrite`` over an existing export (beam size 2), killed once the new one (beam size 1)
    is complete (staged) or in the middle of the swap; then re-run: the new export, nothing else beside it."""
    import captionbeam.pipelines.io as pio
    from captionbeam.launch.staging import copy_tree
    if where == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        out = f"{bucket.url}/serving/saved"
    else:
        out = str(tmp_path / "saved")
    copy_tree(str(exported_model), out)                                  # the old export, in use
    old_files = {f[len(out) + 1:] for f in pio.match([f"{out}/**"])}
    meta = lambda base: json.loads(pio.read_text(f"{base}/captionbeam_export.json"))  # noqa: E731
    argv = ["export", "--model-dir", image_model_dir["merge"], "--output", out, "--overwrite", "--beam-size", "1"]
    _killed_at(argv, point)
    siblings = lambda: sorted(p[len(out):].split("/")[0] for p in pio.match([f"{out}.*", f"{out}.*/**"]))  # noqa: E731
    if point == "export:staged":                  # the old export untouched and usable, the new one beside it
        assert meta(out)["beam_size"] == 2 and {f[len(out) + 1:] for f in pio.match([f"{out}/**"])} == old_files
    elif where == "local":                        # between the renames: the old moved aside, the new complete
        assert not os.path.exists(out)
        [old] = glob.glob(out + ".old-*")
        [new] = glob.glob(out + ".tmp-*")
        assert meta(old)["beam_size"] == 2 and meta(new)["beam_size"] == 1
    else:                                         # out/ half copied: the journal names the complete new copy
        new = pio.read_json(f"{out}.swap.json")["new"]
        assert meta(new)["beam_size"] == 1 and pio.match([f"{new}/variables/*"])
    print(f"{where} {point}: left beside the output: {sorted(set(siblings()))}")
    out_lines = _ok(capsys, *argv)                                       # no --force: the dead claim is dead
    assert json.loads(out_lines)["beam_size"] == 1
    assert meta(out)["beam_size"] == 1
    from captionbeam.model.export import SAVED_MODEL_FILE
    assert pio.exists(f"{out}/{SAVED_MODEL_FILE}") and pio.match([f"{out}/variables/*"])
    assert siblings() == [], siblings()                                  # no tmp, old, journal or lease left
    if where == "local":
        import tensorflow as tf
        assert "serving_default" in tf.saved_model.load(out).signatures
