"""captionbeam retrain: the versioned root (atomic CURRENT, versions kept), the promotion gate, the
consumed markers, vocabulary extension, and end to end on the GCS emulator: new images land -> only
they are featurised -> a new version is promoted; a batch with shuffled captions is rejected and
the old version stays current."""
import json
import os
import random
import shutil

import pytest

import captionbeam.pipelines.io as pio
from captionbeam.launch.retrain.gate import promotion_decision
from captionbeam.launch.retrain.root import (ModelRoot, VersionError, VersionInfo, next_batch, read_consumed, write_atomic,
                                 write_consumed)
from captionbeam.model.vocab import extended_vocabulary


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


def test_compressed_root_features_are_read_and_extended_compressed(tmp_path):
    """Features written with --compress: retrain learns what they hold from the ids/ sidecar (it used to
    parse the GZIP bytes as uncompressed TFRecords and fail), and new images are featurised compressed
    too, so one features_spec.json (compression: GZIP) describes every batch's records."""
    import hashlib

    from captionbeam.launch import cli
    from captionbeam.launch.retrain.manifest import feature_hashes
    from captionbeam.launch.retrain.stages import features_stage
    from captionbeam.model.records import FeaturesSpec
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    write_sample(SampleConfig(output=str(tmp_path / "s"), images=20, seed=0, size=32))
    out = tmp_path / "f"
    assert cli.main(["--log-level", "WARNING", "features", "--images", str(tmp_path / "s" / "images" / "*.jpg"),
                     "--output", str(out), "--encoder", "mobilenet", "--weights", "none", "--image-size", "32",
                     "--compress"]) == 0
    spec = FeaturesSpec.load(str(out))
    assert spec.compression == "GZIP"
    expected = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in (tmp_path / "s" / "images").glob("*.jpg")}
    assert len(expected) == 20 and feature_hashes([str(out)]) == expected
    s = features_stage(ModelRoot(str(tmp_path / "root")), spec, ["new/*.jpg"], str(tmp_path / "new"))
    assert s.config.compress and " --compress" in s.line


def test_features_without_their_sidecar_are_a_clear_error(tmp_path):
    from captionbeam.launch.retrain.manifest import feature_hashes
    from captionbeam.launch.retrain.root import RetrainError
    (tmp_path / "features-00000-of-00001.tfrecord").write_bytes(b"")
    with pytest.raises(RetrainError, match="no ids/ids-\\*.jsonl sidecar"):
        feature_hashes([str(tmp_path)])
    assert feature_hashes([str(tmp_path / "empty")]) == {}


# ----------------------------------------------------------------------------- end to end (GCS emulator)
def _landing(tmp_path, name, first, count, shuffle_seed=None):
    """Sample images [first, first + count) (seed 0, 32 px: the same bytes as small_run's for ids < 48) and
    their captions; with ``shuffle_seed`` a broken batch: every image gets another image's captions, with
    their words scrambled (a bad join plus a bad tokeniser upstream)."""
    from captionbeam.model.caption_files import group, parse
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    out = tmp_path / name
    write_sample(SampleConfig(output=str(out), images=first + count, seed=0, size=32))
    caps = dict(group(parse((out / "captions.txt").read_text(), "flickr8k")))
    ids = [f"sample_{i:05d}" for i in range(first, first + count)]
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        moved = ids[1:] + ids[:1]          # a derangement: no image keeps its own captions
        rng.shuffle(moved)
        while any(a == b for a, b in zip(ids, moved)):
            rng.shuffle(moved)
        def scramble(c):
            words = c.split()
            rng.shuffle(words)
            return " ".join(words)
        caps = {**caps, **{a: [scramble(c) for c in caps[b]] for a, b in zip(ids, moved)}}
    keep = out / "landing"
    keep.mkdir()
    for i in ids:
        shutil.copy(out / "images" / f"{i}.jpg", keep / f"{i}.jpg")
    (out / "landing-captions.txt").write_text(
        "".join(f"{i}.jpg#{n}\t{c}\n" for i in ids for n, c in enumerate(caps[i])))
    return keep, out / "landing-captions.txt"


def _retrain(capsys, argv):
    from captionbeam.launch import cli
    rc = cli.main(["retrain", *argv, "--json"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out[-2000:] + captured.err[-3000:]
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def test_retrain_promotes_good_batch_and_rejects_shuffled_captions(small_run, gcs_bucket, tmp_path, capsys):
    assert small_run.rc == 0
    from captionbeam.launch.retrain.manifest import feature_hashes
    root = f"{gcs_bucket.url}/models"
    [init] = _retrain(capsys, ["--root", root, "--init", "--from-run", small_run.workdir])
    r = ModelRoot(root)
    assert init["status"] == "promoted" and r.current() == "v001" and "CIDEr" in r.info("v001").metrics
    base_hashes = feature_hashes([r.path("features")])
    assert len(base_hashes) == 48

    # a landing with the 48 images the model already knows (same bytes) and 48 new ones
    old_dir, old_caps = _landing(tmp_path, "old", 0, 48)
    new_dir, new_caps = _landing(tmp_path, "good", 48, 48)
    gcs_bucket.upload_dir(str(old_dir), "landing/a")
    gcs_bucket.upload_dir(str(new_dir), "landing/a")
    caps_url = gcs_bucket.upload_bytes("landing/a-captions.txt", old_caps.read_bytes() + new_caps.read_bytes())
    # the fixed test split of small_run has 5 images: its scores are noisy, so the good batch gets a wide
    # tolerance (the gate's arithmetic is tested above; here: featurise only what is new, promote)
    flags = ["--root", root, "--captions", caps_url, "--epochs", "2", "--train-arg=--learning-rate=0.005",
             "--train-arg=--checkpoint-every=1000", "--tolerance", "0.6", "--min-drop", "0.05"]
    [good] = _retrain(capsys, flags + ["--images", f"{gcs_bucket.url}/landing/a/*.jpg"])
    # only the 48 new images are featurised; the 48 others have the same bytes as images already in the manifest
    assert (good["new_images"], good["featurised"], good["reused_features"]) == (96, 48, 48), good
    assert good["status"] == "promoted", good["reasons"]
    assert r.current() == "v002" and r.versions() == ["v001", "v002"]
    hashes = feature_hashes([r.path("features")])
    assert len(hashes) == 96 and set(base_hashes) < set(hashes)
    assert sorted(hashes[h] for h in set(hashes) - set(base_hashes)) == [f"sample_{i:05d}" for i in range(48, 96)]
    assert any(k.startswith("models/features/features-b0001-") for k in gcs_bucket.keys("models/features/"))
    assert r.info("v002").parent == "v001" and r.info("v002").promoted

    # nothing new: a restart finds every landed image consumed and does nothing
    [again] = _retrain(capsys, flags + ["--images", f"{gcs_bucket.url}/landing/a/*.jpg"])
    assert again["status"] == "nothing-new" and r.current() == "v002"

    # a bad batch, bigger than everything before it: captions shuffled across the images (and their words
    # scrambled) -> the model trained on it is worse on the fixed test split -> rejected, v002 stays current
    bad_dir, bad_caps = _landing(tmp_path, "bad", 96, 144, shuffle_seed=1)
    gcs_bucket.upload_dir(str(bad_dir), "landing/b")
    bad_url = gcs_bucket.upload_bytes("landing/b-captions.txt", bad_caps.read_bytes())
    [bad] = _retrain(capsys, ["--root", root, "--captions", bad_url, "--images", f"{gcs_bucket.url}/landing/b/*.jpg",
                              "--epochs", "5", "--tolerance", "0.05", "--min-drop", "0.005",
                              "--train-arg=--learning-rate=0.02", "--train-arg=--checkpoint-every=1000"])
    assert bad["status"] == "rejected", json.dumps(bad)
    assert any("fell" in reason for reason in bad["reasons"])
    assert r.current() == "v002" and not r.info(bad["version"]).promoted
    assert gcs_bucket.read("models/CURRENT") == b"v002\n"


@pytest.mark.parametrize("encoder,size", [("mobilenet", "32"), ("mobilenet-conv", "64")])
def test_new_features_are_made_like_the_roots_registered_encoder(tmp_path, encoder, size):
    """A root whose features came from a registered encoder: retrain's features stage rebuilds the same
    encoder from features_spec.json (it used to pass the spec's display name of the preprocessing,
    'keras.applications.mobilenet.preprocess_input (mode tf)', back as --preprocessing and fail)."""
    from captionbeam.launch import cli
    from captionbeam.launch.retrain.stages import featurise
    from captionbeam.model.records import FeaturesSpec
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    write_sample(SampleConfig(output=str(tmp_path / "s"), images=6, seed=0, size=32))
    images = sorted((tmp_path / "s" / "images").glob("*.jpg"))
    root = ModelRoot(str(tmp_path / "root"))
    assert cli.main(["--log-level", "WARNING", "features", "--images", *map(str, images[:3]),
                     "--output", root.path("features"), "--encoder", encoder, "--weights", "none",
                     "--image-size", size]) == 0
    out = featurise(root, [str(p) for p in images[3:]], str(tmp_path / "new"), ["--runner=DirectRunner"])
    old, new = FeaturesSpec.load(root.path("features")), FeaturesSpec.load(out)
    assert (new.count, new.dead_letters) == (3, 0)
    assert new.encoder_spec == old.encoder_spec and new.encoder_spec.name == encoder
    assert new.feature_shape == old.feature_shape and new.preprocessing == old.preprocessing


def test_a_failed_attempt_leaves_its_record_and_consumes_nothing(tmp_path):
    """An attempt that fails (here: the root's features_spec.json names an encoder this install does not
    have) still writes state/attempts/<batch>.json with status failed and the error; the landed images
    are not consumed, so the next attempt tries them again."""
    from captionbeam.launch.retrain.attempt import RetrainConfig, retrain_once
    from captionbeam.launch.retrain.root import RetrainError, RootSettings, write_settings
    from captionbeam.model.encoder_description import EncoderDescription
    from captionbeam.model.records import FeaturesSpec
    r = ModelRoot(str(tmp_path / "root"))
    write_settings(r, RootSettings())
    r.write_info(VersionInfo(name="v001"))
    r.set_current("v001")
    os.makedirs(r.path("features"))
    enc = EncoderDescription(name="gone-net", weights="none", image_size=32, preprocessing_mode="tf")
    FeaturesSpec(encoder="gone-net", feature_shape=[4], image_size=[32, 32], preprocessing="tf", weights="none",
                 encoder_spec=enc).save(r.path("features"))
    landing, caps = _landing(tmp_path, "land", 0, 2)
    config = RetrainConfig(root=r.root, images=[str(landing / "*.jpg")], captions=[str(caps)])
    for attempt in (1, 2):
        with pytest.raises(RetrainError, match="gone-net"):
            retrain_once(config)
        record = json.loads((tmp_path / "root" / "state" / "attempts" / "b0001.json").read_text())
        assert record["status"] == "failed" and record["new_images"] == 2, record
        assert any("gone-net" in reason for reason in record["reasons"]), record
        assert read_consumed(r) == {} and r.current() == "v001"
