"""captionbeam bulk: resumable, idempotent bulk captioning (issue 5).

Real components throughout: the tiny trained models of the training fixture, Beam's DirectRunner
(in-process and multi-process), the GCS emulator, pyarrow reading the Parquet output back.
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from captionbeam.launch.cli import main as cli_main
from captionbeam.pipelines import io as pio
from captionbeam.pipelines.bulk import BulkConfig, new_run_token
from captionbeam.pipelines.bulk_handler import CaptionerModelHandler
from captionbeam.pipelines.bulk_rows import ROW_FIELDS
from captionbeam.pipelines.deadletter import read_dead_letters
from captionbeam.pipelines.manifest import check_model_version, parse_manifest_line, read_manifest_keys

CORRUPT = {
    "zero.jpg": b"",
    "text.jpg": b"this is not an image at all",
}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model_dir(image_model_dir):
    """A tiny model directory with a real image encoder (MobileNet at 32 px, seeded weights) and a merge
    decoder fitted on drawn images (the decoding area's session fixture): cheap to run in Beam."""
    return image_model_dir["merge"]


@pytest.fixture(scope="module")
def captioner(model_dir):
    from captionbeam.model.captioner import Captioner
    return Captioner.load(model_dir)


def _images(sample_dir, n, start=0):
    return sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[start:start + n]


def _bulk(capsys, *argv):
    """Run ``captionbeam bulk ... --json``; returns (exit code, summary)."""
    capsys.readouterr()
    rc = cli_main(["bulk", *argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out[out.index("{"):])


def _rows(files):
    rows = []
    for f in files:
        if f.endswith(".parquet"):
            import pyarrow.parquet as pq
            with pio_open(f) as fh:
                rows.extend(pq.read_table(fh).to_pylist())
        else:
            rows.extend(json.loads(line) for line in pio.read_text(f).splitlines() if line.strip())
    return rows


def pio_open(path):
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.open(path, compression_type="uncompressed")


def _all_rows(output):
    return _rows(pio.match([pio.join(output, "captions", "captions-*")]))


# ----------------------------------------------------------------------------- pure parts
def test_manifest_lines_and_versions_are_validated():
    sha = "a" * 64
    assert parse_manifest_line(json.dumps({"path": "gs://b/x.jpg", "sha256": sha, "run": "r"})) == ("gs://b/x.jpg", sha)
    for bad in ("{", json.dumps({"path": "x"}), json.dumps({"path": "x", "sha256": "short"}), "[]"):
        with pytest.raises(ValueError, match="malformed manifest line"):
            parse_manifest_line(bad)
    assert check_model_version("3f2a9c-01") == "3f2a9c-01"
    for bad in ("", "../up", "a/b", "v 1"):
        with pytest.raises(ValueError):
            check_model_version(bad)
    a, b = new_run_token(), new_run_token()
    assert a != b and len(a) == len(b)


def test_config_and_flags_fail_fast(tmp_path, capsys, sample_dir):
    with pytest.raises(ValueError, match="--format"):
        BulkConfig(images=("x",), output="o", model_dir="m", format="csv")
    with pytest.raises(ValueError, match="--batch-size"):
        BulkConfig(images=("x",), output="o", model_dir="m", batch_size=0)
    with pytest.raises(SystemExit):
        cli_main(["bulk", "--images", "x", "--model-dir", "m", "--output", "o", "--beam-size", "0"])
    assert "--beam-size" in capsys.readouterr().err
    assert cli_main(["bulk", "--images", str(tmp_path / "nothing" / "*.jpg"), "--model-dir", "m",
                     "--output", str(tmp_path / "o")]) == 2        # bad input: exit 2, never SystemExit
    assert "--images: no file matches" in capsys.readouterr().err
    assert cli_main(["bulk", "--images", os.path.join(sample_dir, "images", "*.jpg"), "--model-dir",
                     str(tmp_path / "no-model"), "--output", str(tmp_path / "o")]) == 2
    assert "--model-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["bulk", "--images", "x", "--model-dir", "m", "--output", "o", "--no_such_beam_flag=1"])
    assert "--no_such_beam_flag" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the job on a bucket
def test_bucket_run_skip_existing_and_new_images(gcs_bucket, sample_dir, model_dir, captioner, capsys):
    """Caption a bucket prefix (nested, with corrupt files); re-run with --skip-existing: no new rows;
    add new images and change one: rows for exactly those. Nothing is ever overwritten."""
    first = _images(sample_dir, 6)
    for i, path in enumerate(first):
        sub = "2019/a" if i % 2 else "2020"  # nested prefixes: '**' must recurse
        gcs_bucket.upload_bytes(f"archive/{sub}/{os.path.basename(path)}", open(path, "rb").read())
    for name, data in CORRUPT.items():
        gcs_bucket.upload_bytes(f"archive/2020/{name}", data)
    out = f"{gcs_bucket.url}/captions-out"
    argv = ["--images", f"{gcs_bucket.url}/archive/**.jpg", "--model-dir", model_dir, "--output", out,
            "--batch-size", "4"]

    rc, s1 = _bulk(capsys, *argv)
    assert rc == 0, s1
    assert s1["counters"] == {"matched": 8, "captioned": 6, "skipped": 0, "failed": 2}
    assert s1["balanced"] and s1["model_version"] == captioner.model_version
    rows = _all_rows(out)
    assert len(rows) == 6 and all(set(r) == set(ROW_FIELDS) for r in rows)
    by_id = {r["image_id"]: r for r in rows}
    assert set(by_id) == {os.path.basename(p)[:-4] for p in first}
    for p in first:
        r = by_id[os.path.basename(p)[:-4]]
        data = open(p, "rb").read()
        assert r["path"].startswith(f"{gcs_bucket.url}/archive/") and r["path"].endswith(os.path.basename(p))
        assert r["sha256"] == pio.sha256_hex(data)
        assert r["model_version"] == captioner.model_version and r["encoder"] == captioner.encoder_name
        assert isinstance(r["caption"], str) and np.isfinite(r["log_prob"]) and r["log_prob"] <= 0
    # the captions equal the captioner's own on the same decoded pixels
    from captionbeam.pipelines.images import load_image
    size = captioner.image_size[0]
    some = first[:2]
    expected = captioner.caption_images([load_image(open(p, "rb").read(), size) for p in some])
    for p, e in zip(some, expected):
        assert by_id[os.path.basename(p)[:-4]]["caption"] == e.caption
    dead = read_dead_letters(out)
    assert sorted(os.path.basename(d.path) for d in dead) == sorted(CORRUPT)
    assert {d.error for d in dead} <= {"EmptyImageError", "NotAnImageError"} and all(d.stage == "decode" for d in dead)
    # manifest of this model version == the rows, and the run record is there
    assert set(read_manifest_keys(out, captioner.model_version)) == {(r["path"], r["sha256"]) for r in rows}
    assert json.loads(pio.read_text(s1["run_record"]))["counters"]["captioned"] == 6
    snapshot = {k: gcs_bucket.read(k) for k in gcs_bucket.keys("captions-out/")}

    # a finished archive: nothing new to caption, nothing written but the run's dead letters + record
    rc, s2 = _bulk(capsys, *argv, "--skip-existing")
    assert rc == 0
    assert s2["counters"] == {"matched": 8, "captioned": 0, "skipped": 6, "failed": 2}
    assert s2["files"]["captions"] == [] and s2["files"]["manifest"] == []
    assert len(_all_rows(out)) == 6

    # new images, and one existing path whose bytes changed: exactly those are captioned
    new = _images(sample_dir, 3, start=6)
    for path in new:
        gcs_bucket.upload_bytes(f"archive/2021/{os.path.basename(path)}", open(path, "rb").read())
    changed_key = next(k for k in gcs_bucket.keys("archive/") if k.endswith(os.path.basename(first[0])))
    gcs_bucket.upload_bytes(changed_key, open(_images(sample_dir, 1, start=9)[0], "rb").read())
    rc, s3 = _bulk(capsys, *argv, "--skip-existing")
    assert rc == 0
    assert s3["counters"] == {"matched": 11, "captioned": 4, "skipped": 5, "failed": 2}
    new_rows = _rows(s3["files"]["captions"])
    assert sorted(r["image_id"] for r in new_rows) == sorted(
        [os.path.basename(p)[:-4] for p in new] + [os.path.basename(first[0])[:-4]])
    # every earlier file is untouched; run tokens keep the three runs' files apart
    for key, data in snapshot.items():
        assert gcs_bucket.read(key) == data, key
    assert len({s1["run"], s2["run"], s3["run"]}) == 3
    assert len(_all_rows(out)) == 10
    assert len(set(read_manifest_keys(out, captioner.model_version))) == 10


def test_the_same_command_twice_adds_no_rows_and_no_dead_letters(tmp_path, sample_dir, model_dir, capsys):
    """Issue 19 item 3: re-running the same bulk command is safe by default (before: every row and dead
    letter written again); --redo captions and files everything again on purpose."""
    images = tmp_path / "images"
    images.mkdir()
    for p in _images(sample_dir, 3, start=30):
        shutil.copy(p, images)
    (images / "text.jpg").write_bytes(CORRUPT["text.jpg"])
    out = tmp_path / "out"
    argv = ["--images", str(images / "*.jpg"), "--model-dir", model_dir, "--output", str(out), "--batch-size", "4"]

    rc, first = _bulk(capsys, *argv)
    assert rc == 0 and first["counters"] == {"matched": 4, "captioned": 3, "skipped": 0, "failed": 1}
    assert len(_all_rows(str(out))) == 3 and len(read_dead_letters(str(out))) == 1

    rc, again = _bulk(capsys, *argv)                                # the very same command line
    assert rc == 0 and again["counters"] == {"matched": 4, "captioned": 0, "skipped": 3, "failed": 1}
    assert again["balanced"] and again["already_filed"] == 1
    assert again["files"] == {"captions": [], "manifest": [], "dead_letters": []}
    assert len(_all_rows(str(out))) == 3 and len(read_dead_letters(str(out))) == 1
    capsys.readouterr()
    assert cli_main(["bulk", *argv]) == 0                          # the text summary says why nothing was filed
    assert "1 of the failed already have a dead letter from an earlier run" in capsys.readouterr().out

    rc, redo = _bulk(capsys, *argv, "--redo")
    assert rc == 0 and redo["counters"] == {"matched": 4, "captioned": 3, "skipped": 0, "failed": 1}
    assert redo["already_filed"] == 0 and len(redo["files"]["dead_letters"]) == 1
    assert len(_all_rows(str(out))) == 6 and len(read_dead_letters(str(out))) == 2


# ----------------------------------------------------------------------------- runners and formats
def test_multiprocess_jsonl_equals_single_process_parquet(tmp_path, sample_dir, model_dir, capsys):
    """Multi-process DirectRunner (2 workers, JSON lines) and in-process (Parquet) give the same rows."""
    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    for p in _images(sample_dir, 10, start=20):
        shutil.copy(p, images)
    (images / "broken.jpg").write_bytes(open(_images(sample_dir, 1)[0], "rb").read()[:300])  # truncated JPEG
    common = ["--images", str(tmp_path / "images" / "**.jpg"), "--model-dir", model_dir, "--batch-size", "3"]

    rc, single = _bulk(capsys, *common, "--output", str(tmp_path / "single"), "--format", "parquet")
    assert rc == 0 and single["counters"] == {"matched": 11, "captioned": 10, "skipped": 0, "failed": 1}
    assert all(f.endswith(".parquet") for f in single["files"]["captions"])
    import pyarrow.parquet as pq
    table = pq.read_table(single["files"]["captions"][0])
    assert table.schema.names == list(ROW_FIELDS)

    rc, multi = _bulk(capsys, *common, "--output", str(tmp_path / "multi"),
                      "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert rc == 0 and multi["counters"] == single["counters"]

    def key(r):
        return (r["path"], r["image_id"], r["sha256"], r["caption"], round(r["log_prob"], 4),
                r["model_version"], r["encoder"])
    a, b = _rows(single["files"]["captions"]), _rows(multi["files"]["captions"])
    assert len(a) == 10 and sorted(map(key, a)) == sorted(map(key, b))
    assert [d.path for d in read_dead_letters(str(tmp_path / "multi"))] == [str(images / "broken.jpg")]


# ----------------------------------------------------------------------------- an exported SavedModel
def _served(export_dir, datas):
    """What the export itself returns for these bytes (its own serving_default, in this process)."""
    import tensorflow as tf
    m = tf.saved_model.load(str(export_dir))
    out = m.signatures["serving_default"](images=tf.constant(datas, tf.string))
    return [(c.decode(), float(lp), bool(v)) for c, lp, v in
            zip(out["captions"].numpy(), out["log_probs"].numpy(), out["valid"].numpy())], m


def test_exported_savedmodel_as_model_dir(tmp_path, sample_dir, exported_model, capsys):
    """--model-dir E, E written by captionbeam export: raw bytes into its serving_default; rows equal the
    export's own outputs; non-images and corrupt JPEGs are dead letters; --skip-existing; baked-in beam size."""
    from captionbeam.model.export import export_version, read_metadata
    from captionbeam.pipelines.bulk_handler import CaptionerConfig, ImageBytes, SavedModelHandler
    meta = read_metadata(str(exported_model))
    images = tmp_path / "images"
    images.mkdir()
    paths = _images(sample_dir, 5, start=40)
    for p in paths:
        shutil.copy(p, images)
    (images / "notes.jpg").write_bytes(b"this is not an image at all")
    broken = open(paths[0], "rb").read()[:300]            # a JPEG header, then nothing: fails in the graph
    (images / "broken.jpg").write_bytes(broken)
    out = tmp_path / "out"
    argv = ["--images", str(images / "*.jpg"), "--model-dir", str(exported_model), "--output", str(out),
            "--batch-size", "4"]

    # decoding is baked into the export: a different --beam-size (or --max-length, --resize-method) fails fast
    for flag, value in (("--beam-size", "3"), ("--max-length", str(meta["max_length"] + 1)),
                        ("--resize-method", "bicubic")):
        assert cli_main(["bulk", *argv, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and "export" in err, err
    assert "beam size is 2" in _bad_beam_size_message(argv, capsys)

    rc, s1 = _bulk(capsys, *argv, "--beam-size", "2")       # the export's own beam size is accepted
    assert rc == 0, s1
    assert s1["counters"] == {"matched": 7, "captioned": 5, "skipped": 0, "failed": 2} and s1["balanced"]
    version = export_version(str(exported_model))
    assert s1["model_version"] == version != meta["model_version"]
    assert s1["exported"] and s1["source_model_version"] == meta["model_version"]
    datas = [open(p, "rb").read() for p in paths]
    served, loaded = _served(exported_model, datas)
    expected = {os.path.basename(p)[:-4]: (p, d, s) for p, d, s in zip(paths, datas, served)}
    rows = _all_rows(str(out))
    assert sorted(r["image_id"] for r in rows) == sorted(expected)
    for r in rows:
        p, data, (caption, log_prob, valid) = expected[r["image_id"]]
        assert valid and set(r) == set(ROW_FIELDS)
        assert r["path"] == str(images / os.path.basename(p)) and r["sha256"] == pio.sha256_hex(data)
        assert r["caption"] == caption and r["log_prob"] == pytest.approx(log_prob, abs=1e-5)
        assert r["model_version"] == version and r["encoder"] == meta["encoder"] == "mobilenet"
    dead = {os.path.basename(d.path): d for d in read_dead_letters(str(out))}
    assert sorted(dead) == ["broken.jpg", "notes.jpg"] and all(d.stage == "decode" for d in dead.values())
    assert dead["notes.jpg"].error == "NotAnImageError" and "valid=False" in dead["notes.jpg"].message
    assert dead["broken.jpg"].error == "TruncatedImageError"          # the export decided per image (valid=False)
    assert "valid=False" in dead["broken.jpg"].message                 # with the Pillow reader's reason
    assert set(read_manifest_keys(str(out), version)) == {(r["path"], r["sha256"]) for r in rows}

    # a second run over the same archive: same model version, nothing new to caption
    rc, s2 = _bulk(capsys, *argv, "--skip-existing")
    assert rc == 0
    assert s2["counters"] == {"matched": 7, "captioned": 0, "skipped": 5, "failed": 2}
    assert s2["model_version"] == version and s2["files"]["captions"] == [] and s2["files"]["manifest"] == []
    assert len(_all_rows(str(out))) == 5

    # one batch with a corrupt JPEG in it: the export decides per image, only that image is lost
    handler = SavedModelHandler(CaptionerConfig(model_dir=str(exported_model), batch_size=4), version, "mobilenet")
    batch = [ImageBytes(path=f"p{i}", image_id=f"i{i}", sha256="0" * 64, data=d)
             for i, d in enumerate([datas[1], broken, b"text", datas[2]])]
    got = handler.run_inference(batch, loaded)
    assert [type(g).__name__ for g in got] == ["CaptionRow", "DeadLetter", "DeadLetter", "CaptionRow"]
    assert [g.caption for g in (got[0], got[3])] == [served[1][0], served[2][0]]
    assert (got[1].stage, got[1].error, got[2].error) == ("decode", "TruncatedImageError", "NotAnImageError")


def _bad_beam_size_message(argv, capsys):
    assert cli_main(["bulk", *argv, "--beam-size", "5"]) == 2
    return capsys.readouterr().err


def test_tfrecord_field_flags_reach_the_shard_reader(tmp_path, sample_dir, model_dir, capsys):
    """--tfrecord-image-field / --tfrecord-id-field: a TFRecord shard with other field names is captioned,
    every image accounted for; without the flags each record is a dead letter naming the missing field."""
    import tensorflow as tf
    from captionbeam.pipelines.image_items import MISSING_ID
    from captionbeam.pipelines.shards.tfrecord import frame_record

    def example(key: str, data: bytes) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            "photo/jpeg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            "photo/name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
        })).SerializeToString()

    paths = _images(sample_dir, 3, start=50)
    assert len(paths) == 3
    shard = tmp_path / "custom-00000.tfrecord"
    shard.write_bytes(b"".join(frame_record(example(os.path.basename(p)[:-4], open(p, "rb").read()))
                               for p in paths))
    rc, s = _bulk(capsys, "--images", str(shard), "--model-dir", model_dir, "--output", str(tmp_path / "a"),
                  "--tfrecord-image-field", "photo/jpeg", "--tfrecord-id-field", "photo/name")
    assert rc == 0 and s["counters"] == {"matched": 3, "captioned": 3, "skipped": 0, "failed": 0}, s
    assert sorted(r["image_id"] for r in _all_rows(str(tmp_path / "a"))) == sorted(
        os.path.basename(p)[:-4] for p in paths)

    rc, s = _bulk(capsys, "--images", str(shard), "--model-dir", model_dir, "--output", str(tmp_path / "b"))
    assert rc == 0 and s["counters"]["captioned"] == 0 and s["counters"]["failed"] == 3 and s["balanced"]
    from captionbeam.pipelines.deadletter import read_dead_letters
    dead = list(read_dead_letters(str(tmp_path / "b")))
    assert len(dead) == 3 and {d.error for d in dead} == {MISSING_ID}


class _NoModel:
    """Stands for a loaded model (Beam's shared handle needs an object it can weakly reference)."""


class _BatchFailingHandler(CaptionerModelHandler):
    """A RunInference handler whose whole batch raises (what the isolating handlers let escape only on a
    bug): real Beam exception handling turns it into failed_inferences."""

    def load_model(self):
        return _NoModel()

    def run_inference(self, batch, model, inference_args=None):
        raise RuntimeError(f"boom: a batch of {len(batch)} failed")


def test_a_failed_batch_dead_letters_name_the_exception_class(tmp_path, sample_dir):
    """A batch that fails inside RunInference: one dead letter per image, error = the exception's class
    name and message = its text (Beam's (type, repr, traceback) triple unpacked, not error="tuple")."""
    from captionbeam.pipelines.bulk import BulkCaption, ModelInfo, WriteBulkOutputs
    from captionbeam.pipelines.options import new_pipeline
    paths = _images(sample_dir, 3)
    out = str(tmp_path / "out")
    config = BulkConfig(images=tuple(paths), output=out, model_dir=str(tmp_path / "no-model"), batch_size=8)
    model = ModelInfo(model_version="v-test", encoder="mobilenet", image_size=32)
    p = new_pipeline(["--runner=DirectRunner"])
    outputs = p | BulkCaption(config, model, handler=_BatchFailingHandler(config.captioner_config()))
    _ = outputs | WriteBulkOutputs(out, "run1", model.model_version)
    p.run().wait_until_finish()
    dead = read_dead_letters(out)
    assert sorted(d.path for d in dead) == sorted(paths)
    assert {(d.error, d.stage) for d in dead} == {("RuntimeError", "inference")}
    assert all("boom: a batch of" in d.message for d in dead)
