"""Fault matrix, hostile files x every command that reads users' files (issue 18 #2): a FIFO, a huge sparse
file, a dangling symlink, a looping pair of symlinks and a pixel bomb, next to good images, through the real
commands (DirectRunner, real files). Each run ends in a finished job (or, for `caption`, a per-file report)
with every input accounted for: inputs = outputs + refusals, each refusal with its reason; nothing hangs
(a FIFO that is opened blocks forever: pytest-timeout fails the test instead) and nothing is read whole.

The export takes bytes, not paths: its rows are the pixel bomb and a truncated JPEG (valid=False, the rest
of the batch captioned)."""
import json
import os

import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.pipelines.deadletter import read_dead_letters
from tests.plugins.hostile import jpeg, png_bomb

ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "4"]
GOOD = ("good0", "good1")
# file -> (reason a reader gives, reason of the image decoder when the bytes are read)
FAULTS = {
    "fifo.jpg": "not_a_regular_file",
    "huge.jpg": "too_large",
    "dangling.jpg": "broken_link",
    "loop1.jpg": "symlink_loop",
    "loop2.jpg": "symlink_loop",
    "bomb.jpg": "DecompressionBombError",          # decoded only by the commands that decode: from its header
}


@pytest.fixture
def hostile_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(GOOD):
        (d / f"{name}.jpg").write_bytes(jpeg(i, size=40))
    os.mkfifo(d / "fifo.jpg")
    with open(d / "huge.jpg", "wb") as f:
        f.truncate(3 << 30)                                     # 3 GiB, sparse: over the default --max-bytes
    os.symlink(tmp_path / "gone.jpg", d / "dangling.jpg")
    os.symlink("loop2.jpg", d / "loop1.jpg")
    os.symlink("loop1.jpg", d / "loop2.jpg")
    (d / "bomb.jpg").write_bytes(png_bomb())                     # 90 KB, 9500 x 9500 px
    return d


def _expected(d, decoded=True):
    return {(str(d / name), reason) for name, reason in FAULTS.items() if decoded or name != "bomb.jpg"}


def _json_out(capsys):
    text = capsys.readouterr().out
    return json.loads(text[text.index("{"):])


@pytest.mark.timeout(300)
def test_features(hostile_dir, tmp_path):
    import tensorflow as tf
    from captionbeam.model import records
    out = tmp_path / "features"
    leftover = out / "ids" / "beam-temp-ids-0123456789abcdef"          # a killed run's ids temp (issue 18 low)
    leftover.mkdir(parents=True)
    rc = cli(["--log-level", "WARNING", "features", "--images", str(hostile_dir / "*.jpg"), "--output", str(out),
              *ENCODER])
    assert rc == 0
    ids = sorted(records.parse_feature_example(r.numpy()).image_id
                 for r in tf.data.TFRecordDataset(sorted(str(p) for p in out.glob("features-*.tfrecord"))))
    dead = {(d.path, d.error) for d in read_dead_letters(str(out))}
    assert ids == list(GOOD) and dead == _expected(hostile_dir)
    assert len(ids) + len(dead) == len(GOOD) + len(FAULTS)
    assert not leftover.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", ["model-dir", "export"])
def test_bulk(hostile_dir, tmp_path, image_model_dir, exported_model, capsys, model):
    out = tmp_path / "bulk"
    model_dir = image_model_dir["merge"] if model == "model-dir" else str(exported_model)
    capsys.readouterr()
    rc = cli(["bulk", "--images", str(hostile_dir / "*.jpg"), "--model-dir", model_dir, "--output", str(out), "--json",
              *(["--beam-size", "2"] if model == "export" else [])])
    summary = _json_out(capsys)
    assert rc == 0 and summary["balanced"]
    assert summary["counters"]["matched"] == len(GOOD) + len(FAULTS)
    assert summary["counters"]["captioned"] == len(GOOD) and summary["counters"]["failed"] == len(FAULTS)
    assert {(d.path, d.error) for d in read_dead_letters(str(out))} == _expected(hostile_dir)


@pytest.mark.timeout(300)
def test_pack(hostile_dir, tmp_path, capsys):
    out = tmp_path / "pack"
    capsys.readouterr()
    rc = cli(["pack", "--images", str(hostile_dir / "*.jpg"), "--output", str(out), "--format", "tar",
              "--verify-images", "--json"])
    summary = _json_out(capsys)
    assert rc == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    dead = {(d.path, d.error) for d in read_dead_letters(str(out))}
    assert sorted(r["id"] for r in manifest) == list(GOOD) and dead == _expected(hostile_dir)
    assert summary["images"] + summary["dead_letters"] == len(GOOD) + len(FAULTS)


@pytest.mark.timeout(300)
def test_caption(hostile_dir, image_model_dir, capsys):
    capsys.readouterr()
    paths = sorted(str(p) for p in hostile_dir.iterdir())
    rc = cli(["caption", "--model-dir", image_model_dir["merge"], *paths, "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0                       # the rest captioned; each failed file reported (exit-code policy)
    assert sorted(os.path.basename(r["path"])[:-4] for r in rows if "caption" in r) == list(GOOD)
    assert {(r["path"], r["error"]) for r in rows if "error" in r} == _expected(hostile_dir)


@pytest.mark.timeout(120)
def test_retrain_landing(hostile_dir, tmp_path):
    """What `retrain` does with landed files before any job: list them (dangling and looping links
    included) and hash them through the reader. A refused file is named with its reason; the bomb is
    a small regular file, hashed here and dead-lettered by the features stage that decodes it."""
    import hashlib
    from captionbeam.launch.retrain import manifest
    from captionbeam.launch.retrain.root import ModelRoot
    landed = manifest.landed(ModelRoot(str(tmp_path / "root")), [str(hostile_dir / "*.jpg")])
    assert sorted(landed) == sorted(str(hostile_dir / n) for n in (*[f"{g}.jpg" for g in GOOD], *FAULTS))
    hashed, refused = manifest.content_hashes(landed)
    want = {str(hostile_dir / f"{g}.jpg") for g in GOOD} | {str(hostile_dir / "bomb.jpg")}
    assert {p for p, _ in hashed} == want
    assert all(h == hashlib.sha256(open(p, "rb").read()).hexdigest() for p, h in hashed)
    assert {(e.path, e.error) for e in refused} == _expected(hostile_dir, decoded=False)


@pytest.mark.timeout(300)
def test_export(hostile_dir, exported_model):
    import tensorflow as tf
    good = (hostile_dir / "good0.jpg").read_bytes()
    batch = [good, (hostile_dir / "bomb.jpg").read_bytes(), good[: len(good) // 2], (hostile_dir / "good1.jpg").read_bytes()]
    out = tf.saved_model.load(str(exported_model)).signatures["serving_default"](images=tf.constant(batch))
    assert out["valid"].numpy().tolist() == [True, False, False, True]
    assert [bool(c) for c in out["captions"].numpy()] == [True, False, False, True]
