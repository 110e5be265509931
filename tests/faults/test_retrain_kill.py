"""Fault matrix, kill -9 at each commit point of ``captionbeam retrain`` (a real subprocess SIGKILLed by
itself at a named point: pipelines/crash_points.py), then a re-run: exactly one consistent outcome.
The batch ends promoted (the gate is opened wide) and consumed; CURRENT names the version whose
version.json says promoted; its new images are in the train split once; no feature is duplicated;
nothing is consumed without being used. Issue 18: a kill between rewriting the splits and moving
CURRENT used to leave version.json promoted, CURRENT on the old version, and the batch consumed."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from captionbeam.launch.retrain.root import ModelRoot, consumed_path
from captionbeam.pipelines.crash_points import CRASH_ENV

NEW = 16   # landed images sample_00048 .. sample_00063 (the small run has 0 .. 47)


def _landing(tmp_path):
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    out = tmp_path / "landing-src"
    write_sample(SampleConfig(output=str(out), images=48 + NEW, seed=0, size=32))
    keep = tmp_path / "landing"
    keep.mkdir()
    ids = [f"sample_{i:05d}" for i in range(48, 48 + NEW)]
    for i in ids:
        shutil.copy(out / "images" / f"{i}.jpg", keep / f"{i}.jpg")
    lines = [l for l in (out / "captions.txt").read_text().splitlines() if l.split(".jpg#")[0] in ids]
    (tmp_path / "landing-captions.txt").write_text("\n".join(lines) + "\n")
    return str(keep / "*.jpg"), str(tmp_path / "landing-captions.txt"), ids


def _flags(root, images, captions):
    return ["retrain", "--root", root, "--images", images, "--captions", captions, "--epochs", "1",
            "--tolerance", "100", "--min-drop", "100", "--train-arg=--checkpoint-every=1000"]


def _killed_at(point, argv):
    """Run ``captionbeam <argv>`` in a subprocess armed to SIGKILL itself at ``point``; it must die there."""
    env = {**os.environ, CRASH_ENV: point, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "TF_NUM_INTEROP_THREADS": "2", "TF_NUM_INTRAOP_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "captionbeam.launch.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"{point}: rc {proc.returncode}\n{proc.stderr[-3000:]}"


def _journal(root, batch="b0001"):
    return json.loads(open(os.path.join(root, "state", "attempts", f"{batch}.json")).read())


def _feature_ids(root):
    from captionbeam.launch.retrain.manifest import feature_hashes
    return sorted(feature_hashes([os.path.join(root, "features")]).values())


@pytest.fixture(scope="module")
def decided_root(small_run, tmp_path_factory):
    """A root whose first batch was killed after featurising, then redone and killed right after its
    decision was recorded (nothing committed yet); read-only: tests copy it."""
    from captionbeam.launch.cli import main
    assert small_run.rc == 0
    tmp = tmp_path_factory.mktemp("retrain_kill")
    root = str(tmp / "root")
    assert main(["retrain", "--root", root, "--init", "--from-run", small_run.workdir]) == 0
    images, captions, ids = _landing(tmp)
    base = _feature_ids(root)

    _killed_at("retrain:featurised", _flags(root, images, captions))
    assert _journal(root)["phase"] == "featurised" and ModelRoot(root).current() == "v001"
    assert len(_feature_ids(root)) == len(base) + NEW

    _killed_at("retrain:decided", _flags(root, images, captions))   # redone from the start, killed at its decision
    j = _journal(root)
    assert (j["phase"], j["status"], j["version"]) == ("decided", "promoted", "v002"), j
    assert ModelRoot(root).current() == "v001" and not os.path.exists(consumed_path(ModelRoot(root), "b0001"))
    assert not set(ids) & set(open(os.path.join(root, "data", "train.txt")).read().replace(".jpg", "").split())
    assert _feature_ids(root) == sorted(base + ids)            # the killed attempt's copies were replaced, not added
    return root, images, captions, ids, base


@pytest.mark.parametrize("point", ["retrain:decided", "retrain:version-written", "retrain:splits-written",
                                   "retrain:current-moved"])
def test_kill_at_each_commit_point_then_rerun_ends_in_one_outcome(point, decided_root, tmp_path, capsys):
    from captionbeam.launch.cli import main
    snapshot, images, captions, ids, base = decided_root
    root = str(tmp_path / "root")
    shutil.copytree(snapshot, root, symlinks=True)
    if point != "retrain:decided":      # the next run finishes the commit and is killed again, at this point
        _killed_at(point, _flags(root, images, captions))
        assert _journal(root)["phase"] == "decided"
    capsys.readouterr()
    assert main(_flags(root, images, captions) + ["--json"]) == 0
    out, err = capsys.readouterr()
    print(err[-2000:], out)     # what docs/reliability.md shows
    [again] = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert again["status"] == "nothing-new", again          # every landed image is consumed: nothing redone

    r = ModelRoot(root)
    assert r.current() == "v002" and r.versions() == ["v001", "v002"]
    assert r.info("v002").promoted and r.info("v002").batch == "b0001"
    train = open(os.path.join(root, "data", "train.txt")).read().replace(".jpg", "").split()
    assert sorted(i for i in train if i in ids) == ids                    # each new image once, in train
    with open(consumed_path(r, "b0001")) as f:
        assert sorted(json.loads(l)["path"].rsplit("/", 1)[-1][:-4] for l in f if l.strip()) == ids
    assert _journal(root)["phase"] == "consumed"
    assert not os.path.exists(os.path.join(root, "state", "attempts", "b0002.json"))
    assert _feature_ids(root) == sorted(base + ids)
    assert not os.path.exists(os.path.join(root, "lease"))
