"""Images as keys, bytes read again only for what is to be captioned (``pipelines.image_keys``), on
real Beam pipelines (in-process DirectRunner) over real loose files, tar and TFRecord shards."""
import io
import os
import tarfile

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from captionbeam.pipelines.counters import NAMESPACE, query_counters
from captionbeam.pipelines.image_items import CHANGED_SINCE_HASHED, DUPLICATE_ID
from captionbeam.pipelines.image_keys import ImageKey, ReadImageKeys, ReadKeyedImages
from captionbeam.pipelines.io import sha256_hex
from captionbeam.pipelines.options import new_pipeline
from captionbeam.pipelines.shards.writer import ShardWriter
from captionbeam.pipelines.sources import ReadImages
from captionbeam.pipelines.user_files import NOT_FOUND

DIRECT = ["--runner=DirectRunner"]


def _jpeg(seed: int, size: int = 12) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _run(build):
    """Run ``build(pipeline)`` to completion; the result's ``captionbeam`` counters."""
    p = new_pipeline(DIRECT)
    build(p)
    result = p.run()
    result.wait_until_finish()
    return query_counters(result, NAMESPACE)


def _plain(kind):
    """(source, image_id, sha256) of an ImageKey or a (ImageBlob, sha256) pair: comparable across both."""
    if isinstance(kind, ImageKey):
        return kind.source, kind.image_id, kind.sha256
    blob, sha = kind
    return blob.source, blob.image_id, sha


def test_keys_are_what_read_images_reads_without_the_bytes(tmp_path):
    """Loose files, a tar and a TFRecord shard with a duplicate id and a corrupt member: the keys are the
    blobs ReadImages gives (same source, id, SHA-256) and the dead letters are the same; no key holds bytes."""
    (tmp_path / "loose").mkdir()
    for i in range(3):
        (tmp_path / "loose" / f"f{i}.jpg").write_bytes(_jpeg(i))
    (tmp_path / "loose" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    _write_tar(tmp_path / "a.tar", [("t0.jpg", _jpeg(10)), ("t1.jpg", _jpeg(11)), ("t1.bin", b"??")])
    with open(tmp_path / "b.tfrecord", "wb") as f:
        w = ShardWriter(f, "tfrecord")
        for i, key in enumerate(("r0", "r1", "t0")):               # t0 is also in a.tar: a duplicate id
            w.write(key, _jpeg(20 + i), ".jpg")
        w.close()
    globs = [str(tmp_path / "loose" / "*.jpg"), str(tmp_path / "*.tar"), str(tmp_path / "*.tfrecord")]

    def build(p):
        blobs = p | "Blobs" >> ReadImages(globs, "auto")
        keys = p | "Keys" >> ReadImageKeys(globs, "auto")
        expected = [(f"{tmp_path}/loose/f{i}.jpg", f"f{i}", sha256_hex(_jpeg(i))) for i in range(3)] + [
            (f"{tmp_path}/a.tar#t0.jpg", "t0", sha256_hex(_jpeg(10))),
            (f"{tmp_path}/a.tar#t1.jpg", "t1", sha256_hex(_jpeg(11)))] + [
            (f"{tmp_path}/b.tfrecord#{k}", k, sha256_hex(_jpeg(20 + i))) for i, k in enumerate(("r0", "r1", "t0"))]
        assert_that(blobs["images"] | "BlobsPlain" >> beam.Map(lambda b: _plain((b, sha256_hex(b.data)))),
                    equal_to(expected), label="blobs")
        assert_that(keys["keys"] | "KeysPlain" >> beam.Map(_plain), equal_to(expected), label="keys")
        assert_that(keys["keys"] | "NoBytes" >> beam.Filter(
            lambda k: any(isinstance(v, (bytes, bytearray)) for v in k)), equal_to([]), label="nobytes")
        letter = lambda d: (d.path.rsplit("/", 1)[-1], d.error, d.stage)  # noqa: E731
        dead = [("gone.jpg", "broken_link", "read"), ("a.tar#t1.bin", "not_an_image", "shard")]
        assert_that(blobs["dead_letters"] | "BlobDead" >> beam.Map(letter), equal_to(dead), label="blobdead")
        assert_that(keys["dead_letters"] | "KeyDead" >> beam.Map(letter), equal_to(dead), label="keydead")
    _run(build)  # (t0 is in a tar and a TFRecord: formats are de-duplicated each on its own, as ReadImages does)


def test_duplicate_ids_in_one_format_are_dropped_on_the_keys(tmp_path):
    _write_tar(tmp_path / "a.tar", [("x.jpg", _jpeg(1)), ("y.jpg", _jpeg(2))])
    _write_tar(tmp_path / "b.tar", [("x.jpg", _jpeg(3))])

    def build(p):
        keys = p | ReadImageKeys([str(tmp_path / "*.tar")], "auto")
        assert_that(keys["keys"] | "Plain" >> beam.Map(_plain), equal_to([
            (f"{tmp_path}/a.tar#x.jpg", "x", sha256_hex(_jpeg(1))),
            (f"{tmp_path}/a.tar#y.jpg", "y", sha256_hex(_jpeg(2)))]), label="keys")
        assert_that(keys["dead_letters"] | "Dead" >> beam.Map(lambda d: (d.path, d.error)),
                    equal_to([(f"{tmp_path}/b.tar#x.jpg", DUPLICATE_ID)]), label="dead")
    _run(build)


def test_a_shard_is_read_again_once_and_only_for_the_members_still_to_do(tmp_path):
    """Two members of shard a (of five) and none of shard b are to do: a is read once more (the keys of
    both members grouped), b not at all; exactly those two members come back, with their bytes."""
    a = _write_tar(tmp_path / "a.tar", [(f"m{i}.jpg", _jpeg(i)) for i in range(5)])
    _write_tar(tmp_path / "b.tar", [(f"n{i}.jpg", _jpeg(10 + i)) for i in range(3)])
    todo = [ImageKey(f"{a}#m{i}.jpg", f"m{i}", sha256_hex(_jpeg(i)), a, "tar", f"m{i}.jpg") for i in (3, 1)]

    def build(p):
        out = p | beam.Create(todo) | ReadKeyedImages()
        assert_that(out["images"] | "Got" >> beam.Map(lambda kv: (kv[0].source, kv[0].image_id, kv[0].data, kv[1])),
                    equal_to([(f"{a}#m{i}.jpg", f"m{i}", _jpeg(i), sha256_hex(_jpeg(i))) for i in (1, 3)]),
                    label="images")
        assert_that(out["dead_letters"], equal_to([]), label="dead")
    counters = _run(build)
    assert counters.get("shards_reread") == 1
    assert counters.get("images_changed_since_hashed", 0) == 0


def test_bytes_that_changed_after_hashing_go_on_with_the_hash_of_what_is_read_now(tmp_path):
    """A file rewritten between the hash and the re-read is captioned with the new bytes' SHA-256 (and
    counted); a file gone since is a read dead letter; a member no longer in its shard likewise."""
    changed, gone = tmp_path / "changed.jpg", tmp_path / "gone.jpg"
    changed.write_bytes(_jpeg(2))
    shard = _write_tar(tmp_path / "s.tar", [("kept.jpg", _jpeg(5))])
    todo = [ImageKey(str(changed), "changed", sha256_hex(_jpeg(1))),          # hashed when it held _jpeg(1)
            ImageKey(str(gone), "gone", sha256_hex(_jpeg(3))),
            ImageKey(f"{shard}#kept.jpg", "kept", sha256_hex(_jpeg(5)), shard, "tar", "kept.jpg"),
            ImageKey(f"{shard}#left.jpg", "left", sha256_hex(_jpeg(6)), shard, "tar", "left.jpg")]

    def build(p):
        out = p | beam.Create(todo) | ReadKeyedImages()
        assert_that(out["images"] | "Got" >> beam.Map(lambda kv: (kv[0].image_id, kv[1], sha256_hex(kv[0].data))),
                    equal_to([("changed", sha256_hex(_jpeg(2)), sha256_hex(_jpeg(2))),
                              ("kept", sha256_hex(_jpeg(5)), sha256_hex(_jpeg(5)))]), label="images")
        assert_that(out["dead_letters"] | "Dead" >> beam.Map(lambda d: (d.path, d.error, d.stage)),
                    equal_to([(str(gone), NOT_FOUND, "read"),
                              (f"{shard}#left.jpg", CHANGED_SINCE_HASHED, "read")]), label="dead")
    counters = _run(build)
    assert counters.get("images_changed_since_hashed") == 1
    assert os.path.exists(changed)
