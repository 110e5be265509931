"""captionbeam retrain: the versioned root (atomic CURRENT, versions kept), the promotion gate, the
consumed markers, vocabulary extension, and end to end on the GCS emulator: new images land -> only
they are featurised -> a new version is promoted; a batch with shuffled captions is rejected and
the old version stays current."""
import json
import os
import random
import shutil

import pytest

import pipelines.io as pio
from launch.retrain import (ModelRoot, VersionError, VersionInfo, extended_vocabulary, iter_tfrecords, next_batch,
                            promotion_decision, read_consumed, write_atomic, write_consumed)


# ----------------------------------------------------------------------------- state (fast)
def test_versions_and_current_pointer(tmp_path):
    r = ModelRoot(str(tmp_path / "root"))
    assert r.current() is None and r.versions() == [] and r.next_version() == "v001"
    with pytest.raises(VersionError, match="no current model"):
        r.current_dir()
    with pytest.raises(VersionError, match="has no version.json"):
        r.set_current("v001")
    r.write_info(VersionInfo(name="v001", metrics={"CIDEr": 1.0}))
    r.set_current("v001")
    # an abandoned attempt's directory is never reused
    os.makedirs(os.path.join(r.version_dir("v002"), "checkpoints"))
    assert r.next_version() == "v003" and r.versions() == ["v001"]
    r.write_info(VersionInfo(name="v003", parent="v001"))
    r.set_current("v003")
    assert r.current() == "v003" and r.versions() == ["v001", "v003"]
    assert r.info("v001").metrics == {"CIDEr": 1.0}
    assert (tmp_path / "root" / "CURRENT").read_text() == "v003\n"
    # the pointer is replaced by rename: no temp files left behind
    assert sorted(os.listdir(tmp_path / "root")) == ["CURRENT", "versions"]
    (tmp_path / "root" / "CURRENT").write_text("garbage\n")
    with pytest.raises(VersionError, match="does not name a version"):
        r.current()
    with pytest.raises(VersionError):
        r.version_dir("../etc")


def test_current_pointer_on_gcs(gcs_bucket):
    r = ModelRoot(f"{gcs_bucket.url}/models")
    r.write_info(VersionInfo(name="v001"))
    r.set_current("v001")
    assert gcs_bucket.read("models/CURRENT") == b"v001\n"
    assert r.current() == "v001" and r.next_version() == "v002"


def test_promotion_gate():
    old = {"CIDEr": 1.00, "Bleu_4": 0.30}
    ok = promotion_decision(old, {"CIDEr": 0.97, "Bleu_4": 0.31}, tolerance=0.05)
    assert ok.promote and len(ok.reasons) == 2
    bad = promotion_decision(old, {"CIDEr": 0.80, "Bleu_4": 0.31}, tolerance=0.05)
    assert not bad.promote and "CIDEr-D fell 1.0000 -> 0.8000" in bad.reasons[0]
    bleu = promotion_decision(old, {"CIDEr": 1.2, "Bleu_4": 0.25}, tolerance=0.05)
    assert not bleu.promote and "BLEU-4 fell" in bleu.reasons[1]
    # near-zero scores: the absolute floor applies
    assert promotion_decision({"CIDEr": 0.01, "Bleu_4": 0.0}, {"CIDEr": 0.006, "Bleu_4": 0.0},
                              tolerance=0.05, min_drop=0.005).promote
    assert not promotion_decision(old, {"Bleu_4": 0.3}).promote


def test_consumed_markers_and_batches(tmp_path):
    r = ModelRoot(str(tmp_path))
    assert next_batch(r) == "b0001" and read_consumed(r) == {}
    write_consumed(r, "b0000", [("gs://b/a.jpg", "a" * 64)])
    write_consumed(r, "b0001", [("gs://b/b.jpg", "b" * 64), ("gs://b/c.jpg", "c" * 64)])
    assert next_batch(r) == "b0002"
    assert read_consumed(r) == {"gs://b/a.jpg": "a" * 64, "gs://b/b.jpg": "b" * 64, "gs://b/c.jpg": "c" * 64}
    write_atomic(str(tmp_path / "x" / "f.txt"), "one")
    write_atomic(str(tmp_path / "x" / "f.txt"), "two")
    assert os.listdir(tmp_path / "x") == ["f.txt"] and (tmp_path / "x" / "f.txt").read_text() == "two"


def test_extended_vocabulary_keeps_old_ids():
    old = ["<pad>", "<unk>", "<start>", "<end>", "red", "circle"]
    new = extended_vocabulary(old, ["A red hexagon", "a blue hexagon", "blue hexagon!", "one zebra"], "basic", 2)
    assert new[:6] == old
    assert new[6:] == ["hexagon", "a", "blue"]   # frequency desc, then alphabetical; 'zebra' once: not kept


def test_iter_tfrecords_matches_tensorflow(tmp_path):
    import tensorflow as tf
    path = str(tmp_path / "x.tfrecord")
    payloads = [b"", b"abc", os.urandom(1000)]
    with tf.io.TFRecordWriter(path) as w:
        for p in payloads:
            w.write(p)
    assert list(iter_tfrecords(open(path, "rb").read())) == payloads
    with pytest.raises(ValueError, match="truncated"):
        list(iter_tfrecords(open(path, "rb").read()[:-3]))
