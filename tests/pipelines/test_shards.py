"""Image shards: streaming tar / TFRecord readers, ReadImageShards on the GCS emulator, and
`captionbeam features` over shards giving the same ids and feature values as over loose files."""
import collections
import glob
import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
import pytest

from captionbeam.pipelines.formats import detect_format, resolve_format
from captionbeam.pipelines.image_items import (BAD_CRC, BAD_RECORD, DUPLICATE_ID, MISSING_ID, MISSING_IMAGE, NOT_AN_IMAGE, TRUNCATED,
                                   UNREADABLE, ShardError, ShardRecord)
from captionbeam.pipelines.shards.image_examples import TfrecordFields
from captionbeam.pipelines.shards.read import iter_shard, read_shard_bytes
from captionbeam.pipelines.shards.tfrecord import frame_record
from captionbeam.pipelines.shards.writer import ShardWriter

DIRECT = ["--runner=DirectRunner"]


def _jpeg(seed: int, size: int = 12) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(members, gz=False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tfrecord(n: int, compress=False, **kw) -> bytes:
    buf = io.BytesIO()
    w = ShardWriter(buf, "tfrecord", compress=compress)
    for i in range(n):
        w.write(f"img{i}", _jpeg(i), ".jpg", **kw)
    w.close()
    return buf.getvalue()


def _kinds(items):
    return [(type(i).__name__, i.member, getattr(i, "error", None)) for i in items]


# ----------------------------------------------------------------------------- pure readers
@pytest.mark.parametrize("name,fmt", [
    ("gs://b/s-00001.tar", "tar"), ("s.TAR.GZ", "tar"), ("s.tgz", "tar"), ("s.tfrecord", "tfrecord"),
    ("s.tfrecord.gz", "tfrecord"), ("s.tfrecords", "tfrecord"), ("s.tfr", "tfrecord"), ("s.TFR.GZ", "tfrecord"),
    ("x.jpg", "files"), ("x.tar.bz2", "files")])
def test_format_from_file_name(name, fmt):
    assert detect_format(name) == fmt
    assert resolve_format(name, "tfrecord") == "tfrecord"
    with pytest.raises(ValueError, match="--input-format"):
        resolve_format(name, "zip")


def test_read_images_auto_sends_tfr_shards_to_the_shard_reader(tmp_path):
    """``--input-format auto`` (sources' per-glob choice and the shard reader's per-file choice, one format
    table): ``*.tfr`` and ``*.tfr.gz`` globs are read as TFRecord shards, their records' ids come out (not
    one loose "image" per shard file), nothing is dead-lettered."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    from captionbeam.pipelines.options import new_pipeline
    from captionbeam.pipelines.sources import ReadImages
    for name, ids in (("a.tfr", ["a0", "a1"]), ("b.tfr.gz", ["b0", "b1", "b2"])):
        with open(tmp_path / name, "wb") as f:
            w = ShardWriter(f, "tfrecord", compress=name.endswith(".gz"))
            for i in ids:
                w.write(i, _jpeg(len(i)), ".jpg")
            w.close()
    with new_pipeline(DIRECT) as p:
        read = p | ReadImages([str(tmp_path / "*.tfr"), str(tmp_path / "*.tfr.gz")], "auto")
        assert_that(read["images"] | beam.Map(lambda b: (b.source.rsplit("/", 1)[-1], b.image_id)),
                    equal_to([("a.tfr#a0", "a0"), ("a.tfr#a1", "a1"), ("b.tfr.gz#b0", "b0"),
                              ("b.tfr.gz#b1", "b1"), ("b.tfr.gz#b2", "b2")]), label="images")
        assert_that(read["dead_letters"], equal_to([]), label="dead")


def test_tar_webdataset_groups_captions_metadata_and_dead_letters_non_images():
    a, b, c = _jpeg(1), _jpeg(2), _jpeg(3)
    data = _tar([
        ("d/a.jpg", a), ("d/a.txt", b"a dog runs\nthe dog\n"), ("d/a.json", b'{"w": 12}'),
        ("d/b.2019.png", b), ("d/b.2019.txt", b"a cat\n"),
        ("d/c.jpeg", c), ("d/c.bin", b"\x00\x01"),          # non-image member next to an image
        ("d/orphan.txt", b"caption without image"),        # sample without an image
        ("d/e.seg.png", a), ("d/e.webp", b),               # two images in one sample: both kept
    ])
    items = read_shard_bytes(data, "gs://b/s.tar", "tar")
    recs = {i.image_id: i for i in items if isinstance(i, ShardRecord)}
    errs = {i.member: i for i in items if isinstance(i, ShardError)}
    assert sorted(recs) == ["a", "b.2019", "c", "e", "e.seg"]
    assert recs["a"].data == a and recs["a"].captions == ["a dog runs", "the dog"] and recs["a"].metadata == {"w": 12}
    assert recs["a"].source == "gs://b/s.tar#d/a.jpg"
    assert recs["b.2019"].captions == ["a cat"] and recs["c"].captions == []
    assert errs["d/c.bin"].error == NOT_AN_IMAGE and errs["d/c.bin"].source == "gs://b/s.tar#d/c.bin"
    assert errs["d/orphan.txt"].error == MISSING_IMAGE
    assert len(errs) == 2


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_tar_yields_what_was_read_then_one_dead_letter(gz):
    imgs = [_jpeg(i, 40) for i in range(6)]
    data = _tar([(f"img{i}.jpg", d) for i, d in enumerate(imgs)], gz=gz)
    items = read_shard_bytes(data[: int(len(data) * 0.6)], "s.tar", "tar")
    recs = [i for i in items if isinstance(i, ShardRecord)]
    errs = [i for i in items if isinstance(i, ShardError)]
    assert 1 <= len(recs) < 6
    assert all(r.data == imgs[int(r.image_id[3:])] for r in recs)  # what was read is intact
    assert len(errs) == 1 and errs[0].error in (TRUNCATED, UNREADABLE)
    assert errs[0] is items[-1] and "unreadable" in errs[0].message


def test_not_a_tar_at_all_is_one_dead_letter():
    items = read_shard_bytes(b"this is not an archive" * 40, "s.tar", "tar")
    assert _kinds(items) == [("ShardError", "..", UNREADABLE)]


@pytest.mark.parametrize("compress", [False, True])
def test_tfrecord_roundtrip_matches_tensorflow(compress, tmp_path):
    import tensorflow as tf
    data = _tfrecord(4, compress=compress, captions=["a b", "c d"])
    name = "s.tfrecord.gz" if compress else "s.tfrecord"
    items = read_shard_bytes(data, name, "tfrecord")
    assert [(i.image_id, i.data, i.captions) for i in items] == [
        (f"img{i}", _jpeg(i), ["a b", "c d"]) for i in range(4)]
    path = tmp_path / name
    path.write_bytes(data)  # TensorFlow reads what we framed (its CRC check agrees with ours)
    ds = tf.data.TFRecordDataset(str(path), compression_type="GZIP" if compress else "")
    ids = [tf.train.Example.FromString(r.numpy()).features.feature["image/id"].bytes_list.value[0] for r in ds]
    assert ids == [f"img{i}".encode() for i in range(4)]


def test_tfrecord_bad_data_crc_dead_letters_that_record_only():
    data = bytearray(_tfrecord(4))
    (length,) = struct.unpack("<Q", data[:8])
    second = 12 + length + 4
    data[second + 12 + 30] ^= 0xFF  # inside record 1's payload
    items = read_shard_bytes(bytes(data), "s.tfrecord", "tfrecord")
    assert _kinds(items) == [("ShardRecord", "img0", None), ("ShardError", "record-1", BAD_CRC),
                             ("ShardRecord", "img2", None), ("ShardRecord", "img3", None)]
    assert items[1].source == "s.tfrecord#record-1"


def test_tfrecord_bad_length_crc_or_truncation_dead_letters_the_rest():
    data = bytearray(_tfrecord(4))
    (length,) = struct.unpack("<Q", data[:8])
    second = 12 + length + 4
    bad = bytearray(data)
    bad[second + 9] ^= 0xFF  # record 1's length CRC: framing lost from here on
    items = read_shard_bytes(bytes(bad), "s.tfrecord", "tfrecord")
    assert _kinds(items) == [("ShardRecord", "img0", None), ("ShardError", "record-1..", BAD_CRC)]
    items = read_shard_bytes(bytes(data[:-10]), "s.tfrecord", "tfrecord")
    assert _kinds(items)[-1] == ("ShardError", "record-3..", TRUNCATED) and len(items) == 4
    gz = _tfrecord(4, compress=True)
    items = read_shard_bytes(gz[:-20], "s.tfrecord.gz", "tfrecord")
    assert _kinds(items)[-1][2] == TRUNCATED and len([i for i in items if isinstance(i, ShardRecord)]) >= 1


def test_tfrecord_custom_field_names_and_missing_fields():
    import tensorflow as tf

    def example(**fields):
        return tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in fields.items()})
        ).SerializeToString()

    data = b"".join(frame_record(r) for r in [
        example(**{"img/bytes": b"AAA", "img/key": b"k1"}),
        example(**{"image/data": b"BBB", "image/filename": b"dir/k2.jpg"}),   # defaults: im2txt fallbacks
        example(**{"img/bytes": b"CCC"}),                                     # no id
        example(**{"img/key": b"k4"}),                                        # no image
        b"\xff\xfe not a proto",
    ])
    fields = TfrecordFields.from_flags(image="img/bytes,image/data", image_id="img/key,image/filename")
    items = read_shard_bytes(data, "s.tfrecord", "tfrecord", fields)
    assert _kinds(items) == [("ShardRecord", "k1", None), ("ShardRecord", "k2", None),
                             ("ShardError", "record-2", MISSING_ID), ("ShardError", "k4", MISSING_IMAGE),
                             ("ShardError", "record-4", BAD_RECORD)]
    assert items[1].data == b"BBB"


def test_streaming_reader_never_seeks():
    """Readers work on a forward-only stream (as GCS downloads are), one sample at a time."""
    class ForwardOnly(io.RawIOBase):
        def __init__(self, data):
            self._b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self._b.read(min(len(buf), 1000))
            buf[:len(chunk)] = chunk
            return len(chunk)

        def seekable(self):
            return False

    tar = _tar([(f"i{k}.jpg", _jpeg(k)) for k in range(5)], gz=True)
    assert len(list(iter_shard("s.tar.gz", "tar", fileobj=ForwardOnly(tar)))) == 5
    rec = _tfrecord(5, compress=True)
    assert len(list(iter_shard("s.tfrecord.gz", "tfrecord", fileobj=ForwardOnly(rec)))) == 5


# ----------------------------------------------------------------------------- features over shards
def _features(output):
    import tensorflow as tf
    from captionbeam.model.records import parse_feature_example
    files = sorted(glob.glob(os.path.join(output, "features-*-of-*.tfrecord")))
    return [parse_feature_example(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _bad_shards(bucket):
    """A truncated tar holding a non-image member, an undecodable .jpg and a duplicate id, and a
    TFRecord shard with one bad CRC."""
    members = [("x0.jpg", _jpeg(10, 20)), ("x1.bin", b"\x00binary"), ("x1.jpg", b"garbage, not a jpeg"),
               ("x2.jpg", _jpeg(12, 20)), ("sample_00003.jpg", _jpeg(13, 20)),
               ("x3.jpg", _jpeg(14, 64)), ("x4.jpg", _jpeg(15, 20))]
    tar = _tar(members)
    offset = tar.index(b"x3.jpg") + 512 + 600  # cut inside x3.jpg's data
    bucket.upload_bytes("bad/bad.tar", tar[:offset])
    buf = io.BytesIO()
    w = ShardWriter(buf, "tfrecord")
    for i in range(4):
        w.write(f"y{i}", _jpeg(20 + i, 20), ".jpg")
    w.close()
    rec = bytearray(buf.getvalue())
    (length,) = struct.unpack("<Q", rec[:8])
    rec[12 + length + 4 + 12 + 40] ^= 0xFF  # payload of record 1
    bucket.upload_bytes("bad/bad.tfrecord", bytes(rec))
    return f"{bucket.url}/bad"


def test_features_over_shards_equal_loose_files(gcs_packed, gcs_bucket, tmp_path):
    """One features job (default --input-format auto: formats from the globs) over the loose files, the
    tar and TFRecord packs on the emulator and two broken shards: every shard image gets the loose
    file's id and feature values; what is broken is dead-lettered with shard path and member; the rest
    is encoded."""
    from captionbeam.launch.cli import main
    from captionbeam.pipelines.deadletter import read_dead_letters
    bad = _bad_shards(gcs_bucket)
    out = str(tmp_path / "features")
    rc = main(["--log-level", "WARNING", "features", "--images", gcs_packed.images,
               f"{gcs_packed.tar}/*.tar", f"{gcs_packed.tfrecord}/*.tfrecord.gz", f"{bad}/*.tar", f"{bad}/*.tfrecord",
               "--output", out, "--encoder", "mobilenet", "--weights", "none",
               "--image-size", "32", "--batch-size", "16"] + DIRECT)
    assert rc == 0
    groups = collections.defaultdict(dict)
    for r in _features(out):
        kind = ("bad" if r.path.startswith(bad) else "tar" if r.path.startswith(gcs_packed.tar)
                else "tfrecord" if r.path.startswith(gcs_packed.tfrecord) else "loose")
        assert r.image_id not in groups[kind]
        groups[kind][r.image_id] = r
    loose = groups["loose"]
    assert len(loose) == 60
    for kind in ("tar", "tfrecord"):
        assert sorted(groups[kind]) == sorted(loose)
        for iid, r in groups[kind].items():
            assert r.path.split("#")[1] in (f"{iid}.jpg", iid) and r.sha256 == loose[iid].sha256
            np.testing.assert_allclose(r.feature, loose[iid].feature, rtol=1e-5, atol=1e-5)
    assert sorted(groups["bad"]) == ["x0", "x2", "y0", "y2", "y3"]
    dead = {(d.path[len(bad) + 1:], d.error, d.stage) for d in read_dead_letters(out)}
    decode_error = [d for d in dead if d[0] == "bad.tar#x1.jpg"]
    assert len(decode_error) == 1 and decode_error[0][2] == "decode"
    assert dead - set(decode_error) == {
        ("bad.tar#x1.bin", NOT_AN_IMAGE, "shard"),
        ("bad.tar#sample_00003.jpg", DUPLICATE_ID, "shard"),
        ("bad.tar#x3.jpg..", TRUNCATED, "shard"),
        ("bad.tfrecord#record-1", BAD_CRC, "shard"),
    }


@pytest.mark.parametrize("fmt", ["tar", "tfrecord"])
def test_storage_errors_propagate_so_the_runner_retries(fmt):
    """A broken download is not a corrupt shard: it must raise (Beam retries the bundle), not
    dead-letter the rest of a good shard."""
    data = _tar([(f"i{k}.jpg", _jpeg(k)) for k in range(4)]) if fmt == "tar" else _tfrecord(4)

    class Flaky(io.RawIOBase):
        def __init__(self):
            self._b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            if self._b.tell() > len(data) // 2:
                raise ConnectionError("connection reset by peer")
            chunk = self._b.read(min(len(buf), 700))
            buf[:len(chunk)] = chunk
            return len(chunk)

    with pytest.raises(ConnectionError):
        list(iter_shard(f"s.{fmt}", fmt, fileobj=Flaky()))


def test_features_tfrecord_field_flags(tmp_path):
    """`captionbeam features --tfrecord-image-field/--tfrecord-id-field` reads shards with other field names;
    without the flags the same records are dead letters naming the fields they lack, nothing is dropped."""
    import tensorflow as tf
    from captionbeam.launch.cli import main
    from captionbeam.pipelines.deadletter import read_dead_letters

    def example(key: str, data: bytes) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            "photo/jpeg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            "photo/name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
        })).SerializeToString()

    shard = tmp_path / "custom-00000.tfrecord"
    shard.write_bytes(b"".join(frame_record(example(f"p{i}", _jpeg(30 + i, 20))) for i in range(3)))
    common = ["--log-level", "WARNING", "features", "--images", str(shard), "--encoder", "mobilenet",
              "--weights", "none", "--image-size", "32"] + DIRECT

    out = tmp_path / "with_flags"
    assert main(common + ["--output", str(out), "--tfrecord-image-field", "photo/jpeg",
                          "--tfrecord-id-field", "photo/name"]) == 0
    assert sorted(r.image_id for r in _features(str(out))) == ["p0", "p1", "p2"]
    assert list(read_dead_letters(str(out))) == []

    out = tmp_path / "defaults"
    assert main(common + ["--output", str(out)]) == 0
    assert _features(str(out)) == []
    dead = list(read_dead_letters(str(out)))
    assert len(dead) == 3 and {d.error for d in dead} == {MISSING_ID}
    assert all("image/id" in d.message for d in dead)
