"""captionbeam run: end to end with small flags (the default itself is `make run`), the report it writes
rendered in headless Chromium, --resume, --config files and --dry-run."""
import json
import os
import re
import shlex
import shutil

import pytest

from captionbeam.launch import cli
from captionbeam.launch.config import ConfigError, RunConfig, from_mapping, load


def test_run_end_to_end(small_run):
    assert small_run.rc == 0, small_run.stdout[-3000:]
    out = small_run.stdout
    # every stage announced with its command line, and finished with a timing
    for n, stage in enumerate(["sample", "features", "captions", "train", "evaluate", "caption", "report"], 1):
        assert f"[{n}/7] {stage}" in out
        assert f"-> {stage} done in" in out
        assert os.path.exists(small_run.path("stages", f"{stage}.json"))
    # each stage's one-line summary comes from its typed result (not from its files read back)
    assert "-> sample done in" in out and ": 48 images with 5 captions each" in out
    assert re.search(r"-> features done in [^\n]*: 48 feature records \(\d+,\) \(thumbnail", out), out
    assert re.search(r"-> captions done in [^\n]*: vocabulary \d+ tokens; images per split: [^\n]*train \d+", out)
    assert re.search(r"-> evaluate done in [^\n]*: BLEU-1 [\d.]+, BLEU-4 [\d.]+, CIDEr-D [\d.]+", out)
    assert "$ captionbeam features --images" in out and "--encoder " + small_run.path("encoder", "thumbnail.keras") in out
    # the directory contracts of each stage were produced by the real commands
    assert json.load(open(small_run.path("features", "features_spec.json")))["count"] == 48
    stats = json.load(open(small_run.path("data", "stats.json")))
    assert stats["join"]["joined"] == 48 and set(stats["splits"]) == {"train", "dev", "test"}
    for name in ("config.json", "vocab.txt", "history.json", "best.weights.h5"):
        assert os.path.exists(small_run.path("model", name)), name
    metrics = json.load(open(small_run.path("eval", "test.predictions.metrics.json")))
    assert 0.0 <= metrics["bleu4"] <= 1.0 and "CIDEr" in metrics["coco"]
    # the end: metrics and captions of held-out images
    tail = out[out.index("== done in"):]
    assert "BLEU-4 (NLTK)" in tail and "CIDEr-D" in tail and "captions of held-out images:" in tail
    rows = [json.loads(l) for l in open(small_run.path("eval", "captions.jsonl"))]
    test_ids = [l.split(".")[0] for l in open(small_run.path("sample", "test.txt")) if l.strip()]
    assert len(rows) == 3 and all(r["image_id"] in test_ids and r["caption"].strip() for r in rows)
    assert all(f"{r['image_id']}: {r['caption']}" in tail for r in rows)


def test_run_report_renders_in_chromium(small_run, tmp_path):
    from captionbeam.launch.report import find_chromium, render_in_browser
    assert small_run.rc == 0
    report = small_run.path("report")
    html = open(os.path.join(report, "index.html"), encoding="utf-8").read()
    rows = [json.loads(l) for l in open(small_run.path("eval", "captions.jsonl"))]
    for r in rows:   # generated and reference captions of every held-out image
        assert r["caption"] in html and r["references"][0].replace("'", "&#x27;") in html
    if find_chromium() is None:
        if shutil.which("apt-get"):
            pytest.fail("Chromium is not installed: apt-get update && apt-get install -y chromium")
        pytest.skip("no Chromium and no apt-get")
    check = render_in_browser(report, screenshot=str(tmp_path / "run-report.png"))
    # 3 gallery thumbnails + the training curves, all decoded by the browser
    assert (check.images_loaded, check.images_total) == (4, 4), check.dom[-1500:]
    assert "captionbeam run: merge model on the sample dataset" in check.title


def test_run_resume_skips_finished_stages(small_run, tmp_path, capsys):
    assert small_run.rc == 0
    marker = json.load(open(small_run.path("stages", "train.json")))
    argv = ["run", "--workdir", small_run.workdir, "--resume"] + _small_flags()
    before = os.path.getmtime(small_run.path("model", "best.weights.h5"))
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("(done earlier, --resume") == 6       # every command stage; the report is rewritten
    assert os.path.getmtime(small_run.path("model", "best.weights.h5")) == before
    # the marker holds the stage's typed config as data (what --resume compares), not a command line
    assert marker["command"] == "train" and marker["config"]["train"]["model_dir"] == small_run.path("model")
    assert marker["line"].startswith("captionbeam train --data ")


def _small_flags():
    from tests.plugins.launch import SMALL_RUN_FLAGS
    return list(SMALL_RUN_FLAGS)


def test_config_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "workdir: gs://my-bucket/runs/r1\n"
        "data:\n"
        "  images: ['gs://my-bucket/flickr8k/images/*.jpg']\n"
        "  captions: gs://my-bucket/flickr8k/Flickr8k.token.txt\n"
        "  splits: {train: gs://my-bucket/t/train.txt, dev: gs://my-bucket/t/dev.txt, test: gs://my-bucket/t/test.txt}\n"
        "features: {encoder: mobilenet, weights: imagenet, image_size: 224}\n"
        "train: {arch: attention, epochs: 20}\n"
        "runner: {profile: dataflow}\n")
    config = load(str(cfg))
    assert config.data.images == ["gs://my-bucket/flickr8k/images/*.jpg"] and config.train.arch == "attention"
    assert cli.main(["run", "--config", str(cfg), "--epochs", "7", "--region", "europe-west4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[: out.index("equivalent command line")])
    plan = report["plan"]
    assert not any(p.startswith("captionbeam sample") for p in plan)      # real data: no sample stage
    features = shlex.split(plan[0])
    assert features[:4] == ["captionbeam", "features", "--images", "gs://my-bucket/flickr8k/images/*.jpg"]
    assert "--encoder" in features and features[features.index("--encoder") + 1] == "mobilenet"
    # the profile's features section and the explicit --region reach the Beam stages, once each
    assert "--runner=DataflowRunner" in features and "--machine_type=n1-standard-4" in features
    assert "--region=europe-west4" in features and "--region=us-central1" not in features
    captions = shlex.split(plan[1])
    assert "--split" in captions and "train=gs://my-bucket/t/train.txt" in captions
    assert "--machine_type=n1-standard-4" not in captions
    train = shlex.split(plan[2])
    assert train[train.index("--epochs") + 1] == "7" and train[train.index("--arch") + 1] == "attention"
    assert "--model-dir" in train and "gs://my-bucket/runs/r1/model" in train


def test_bad_configs_fail_naming_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="data.imagez: unknown key"):
        from_mapping({"data": {"imagez": ["x"]}})
    with pytest.raises(ConfigError, match=r"data.captions \(--captions\): required"):
        from_mapping({"data": {"images": ["x/*.jpg"]}}).validate()
    with pytest.raises(ConfigError, match="'dev' split file is required"):
        from_mapping({"data": {"images": ["x"], "captions": "c", "splits": {"train": "t"}}}).validate()
    # the wrong type is a config error naming the key and the type, not a ValueError later
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got str 'three'"):
        from_mapping({"train": {"epochs": "three"}})
    with pytest.raises(ConfigError, match=r"data.splits: expected a mapping"):
        from_mapping({"data": {"splits": ["train.txt"]}})
    with pytest.raises(ConfigError, match=r"report: expected true or false"):
        from_mapping({"report": "yes please"})
    assert from_mapping({"train": {"learning_rate": 1}}).train.learning_rate == 1.0
    assert from_mapping({"runner": {"profile": None}}).runner.profile is None
    with pytest.raises(ConfigError, match="train.epochs: must be positive"):
        from_mapping({"train": {"epochs": 0}}).validate()
    assert RunConfig().validate().data.is_sample
    assert cli.main(["run", "--images", "x/*.jpg", "--workdir", str(tmp_path)]) == 2
    assert "--captions" in capsys.readouterr().err
    # a bad flag for a stage fails before any stage runs, naming it
    assert cli.main(["run", "--workdir", str(tmp_path / "w"), "--train-arg=--units=0"]) == 2
    assert "--units: expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    assert cli.main(["run", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


# the smallest `run` that still trains a model that says something: the real command, twice
REPRO_FLAGS = ["--no-report", "--sample-images", "32", "--sample-size", "32", "--image-size", "32", "--epochs", "3",
               "--batch-size", "16", "--learning-rate", "0.005", "--caption-images", "3", "--min-count", "1",
               "--train-arg=--units=32", "--train-arg=--embedding-dim=32", "--eval-arg=--coco-metrics=bleu,cider"]
# what a run writes that must not differ (after the workdir's own path is replaced); timings are left out
REPRO_FILES = ("sample/captions.txt", "data/vocab.txt", "data/stats.json", "eval/test.predictions.jsonl",
               "eval/captions.jsonl")


def _comparable(workdir):
    import hashlib
    import glob
    out = {name: open(os.path.join(workdir, name)).read().replace(workdir, "W") for name in REPRO_FILES}
    import tensorflow as tf

    def canonical(record: bytes) -> str:     # a tf.train.Example's fields (its map's byte order varies)
        fields = tf.train.Example.FromString(record).features.feature
        text = b"".join(k.encode() + fields[k].SerializeToString() for k in sorted(fields))
        return hashlib.sha256(text.replace(workdir.encode(), b"W")).hexdigest()
    for pattern in ("features/features-*.tfrecord", "data/*-of-*.tfrecord"):   # the records, in any order
        out[pattern] = sorted(canonical(r.numpy()) for path in glob.glob(os.path.join(workdir, pattern))
                              for r in tf.data.TFRecordDataset(path))
    out["weights"] = hashlib.sha256(open(os.path.join(workdir, "model", "best.weights.h5"), "rb").read()).hexdigest()
    metrics = json.load(open(os.path.join(workdir, "eval", "test.predictions.metrics.json")))
    out["metrics"] = {k: v for k, v in metrics.items() if k.startswith("bleu") or k == "coco"}
    epochs = json.load(open(os.path.join(workdir, "model", "history.json")))["epochs"]
    out["losses"] = [epochs[0]["first_loss"]] + [(e["train_loss"], e["val_loss"]) for e in epochs]
    return out


def test_run_twice_in_fresh_workdirs_gives_identical_metrics_and_captions(tmp_path):
    """Same seed, same machine: `captionbeam run` in two fresh processes and workdirs writes the same
    records, weights, losses, metrics and captions, bit for bit (across machines the oneDNN kernels
    differ, and so do the last digits: README, "What varies between machines")."""
    import subprocess
    import sys
    from tests.plugins.training import train_env
    workdirs = [str(tmp_path / name) for name in ("a", "b")]
    procs = [subprocess.Popen([sys.executable, "-m", "captionbeam.launch.cli", "run", "--workdir", w, *REPRO_FLAGS],
                              env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for w in workdirs]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    a, b = (_comparable(w) for w in workdirs)
    assert a["losses"][-1][0] < a["losses"][0]                                 # a model that learnt something
    assert len(a["features/features-*.tfrecord"]) == 32 and a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    # and the printed summary says the same thing (only the timings differ)
    tails = [o[o.index("metrics (test split):"):] for o in outs]
    assert tails[0].replace(workdirs[0], "W") == tails[1].replace(workdirs[1], "W")
