"""``launch/local_paths.py``: a Beam command's local paths are made absolute before the job is built, so that an
SDK worker of a cluster, which runs in a folder of its own, opens what the user named (the engine benchmark's
bulk job on ``flink-cluster`` failed with ``model config not found: work/bench/million/model/config.json``)."""
import argparse
import glob
import json
import os
import shutil

from captionbeam.launch.local_paths import absolute_local_paths


def test_path_flags_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "enc.keras").write_bytes(b"x")
    args = argparse.Namespace(images=["photos/*.jpg", "gs://b/x/*.jpg"], output="out", model_dir="models/m",
                              split=["train=lists/train.txt", "dev=gs://b/dev.txt"], encoder="enc.keras",
                              captions=None, beam_size=3)
    absolute_local_paths(args)
    here = str(tmp_path)
    assert args.images == [f"{here}/photos/*.jpg", "gs://b/x/*.jpg"]
    assert args.output == f"{here}/out" and args.model_dir == f"{here}/models/m"
    assert args.split == [f"train={here}/lists/train.txt", "dev=gs://b/dev.txt"]
    assert args.encoder == f"{here}/enc.keras" and args.captions is None and args.beam_size == 3
    registered = argparse.Namespace(encoder="mobilenet")
    absolute_local_paths(registered)
    assert registered.encoder == "mobilenet"


def test_bulk_with_relative_paths_from_another_folder(tmp_path, monkeypatch, sample_dir, image_model_dir, capsys):
    from captionbeam.launch.cli import main
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    for p in sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:3]:
        shutil.copy(p, work / "photos")
    shutil.copytree(image_model_dir["merge"], work / "model")
    monkeypatch.chdir(work)
    assert main(["bulk", "--images", "photos/*.jpg", "--model-dir", "model", "--output", "out", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counters"]["captioned"] == 3 and summary["run_record"].startswith(str(work / "out"))
    rows = [json.loads(x) for f in glob.glob(str(work / "out" / "captions" / "*.jsonl")) for x in open(f)]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in (work / "photos").glob("*.jpg"))
