"""`captionbeam pack`: loose images (local and gs://) -> tar / TFRecord shards on the GCS emulator,
manifest correctness, captions carried in, dead letters, the --overwrite guard."""
import collections
import glob
import gzip
import io
import json
import os

import pytest

import captionbeam.pipelines.io as pio
from captionbeam.model.caption_files import group, parse
from captionbeam.pipelines import pack as P
from captionbeam.pipelines.image_items import ShardRecord
from captionbeam.pipelines.shards.read import iter_shard
from captionbeam.pipelines.deadletter import read_dead_letters
from tests.plugins.shards import DIRECT, SHARD_SIZE


def _loose(images_glob):
    out = {}
    for path in sorted(glob.glob(images_glob)):
        with open(path, "rb") as f:
            out[pio.image_id_from_path(path)] = f.read()
    return out


def _read_back(output, fmt):
    """Every record of every shard under ``output``, read with the streaming reader over gs://."""
    items = []
    for shard in pio.match([pio.join(output, f"shard-*-of-*{'.tar' if fmt == 'tar' else '.tfrecord.gz'}")]):
        items += list(iter_shard(shard, fmt))
    return items


@pytest.mark.parametrize("fmt", ["tar", "tfrecord"])
def test_pack_manifest_shards_and_captions(gcs_packed, fmt):
    loose = _loose(gcs_packed.images)
    captions = group(parse(open(gcs_packed.captions).read()))
    output = getattr(gcs_packed, fmt)
    rows = P.read_manifest(output)
    # every image exactly once, with the loose file's SHA-256 and size
    assert sorted(r["id"] for r in rows) == sorted(loose)
    for r in rows:
        assert r["sha256"] == pio.sha256_hex(loose[r["id"]]) and r["bytes"] == len(loose[r["id"]])
        assert r["captions"] == len(captions[r["id"]])
    # shards of exactly SHARD_SIZE in id order, the last shorter; names say how many there are
    per_shard = collections.Counter(r["shard"] for r in rows)
    n = -(-len(loose) // SHARD_SIZE)
    suffix = ".tar" if fmt == "tar" else ".tfrecord.gz"
    assert sorted(per_shard) == [f"shard-{i:05d}-of-{n:05d}{suffix}" for i in range(n)]
    assert [per_shard[s] for s in sorted(per_shard)] == [SHARD_SIZE] * (n - 1) + [len(loose) - SHARD_SIZE * (n - 1)]
    assert sorted(k.rsplit("/", 1)[1] for k in gcs_packed.bucket.keys(f"{fmt}/shard-")) == sorted(per_shard)
    # the shards hold exactly the manifest's images, bytes and captions
    items = _read_back(output, fmt)
    assert all(isinstance(i, ShardRecord) for i in items)
    by_id = {i.image_id: i for i in items}
    assert len(by_id) == len(items) == len(rows)
    for r in rows:
        rec = by_id[r["id"]]
        assert pio.basename(rec.shard) == r["shard"] and rec.member == r["member"]
        assert rec.data == loose[r["id"]] and rec.captions == captions[r["id"]]
    summary = pio.read_json(pio.join(output, P.SUMMARY_FILE))
    assert (summary["images"], summary["shards"], summary["dead_letters"]) == (len(loose), n, 0)


def test_tar_members_follow_webdataset_layout(gcs_packed):
    data = gcs_packed.bucket.read("tar/shard-00000-of-00004.tar")
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[2]).read())
    assert names[:3] == ["sample_00000.jpg", "sample_00000.txt", "sample_00000.json"]
    assert meta["id"] == "sample_00000" and meta["sha256"] and meta["source"].endswith("sample_00000.jpg")


def test_pack_dead_letters_and_overwrite_guard(gcs_bucket, sample_dir):
    from captionbeam.launch.cli import main
    src = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:5]
    for p in src:
        gcs_bucket.upload_bytes(f"in/a/{os.path.basename(p)}", open(p, "rb").read())
    gcs_bucket.upload_bytes(f"in/b/{os.path.basename(src[0])}", b"same id, other directory")
    gcs_bucket.upload_bytes("in/a/readme.md", b"not an image")
    gcs_bucket.upload_bytes("in/a/broken.png", b"not a png")  # --verify-images rejects it
    gcs_bucket.upload_bytes("out/shard-00000-of-00009.tfrecord.gz", b"stale shard of an earlier pack")
    out = f"{gcs_bucket.url}/out"
    args = ["--log-level", "WARNING", "pack", "--images", f"{gcs_bucket.url}/in/**", "--output", out,
            "--format", "tar", "--shard-size", "4", "--verify-images"] + DIRECT
    assert main(args) == 2   # stale shards would be read back as duplicates: refused (exit_codes.USAGE)
    assert main(args + ["--overwrite"]) == 0
    assert [k for k in gcs_bucket.keys("out/") if "/shard-" in k] == [
        "out/shard-00000-of-00002.tar", "out/shard-00001-of-00002.tar"]
    dead = {("/".join(d.path.rsplit("/", 2)[-2:]), d.error, d.stage) for d in read_dead_letters(out)}
    assert dead == {("b/sample_00000.jpg", "duplicate_id", "pack"), ("a/readme.md", "not_an_image", "pack"),
                    ("a/broken.png", "NotAnImageError", "pack")}
    rows = P.read_manifest(out)
    assert sorted(r["id"] for r in rows) == sorted(pio.image_id_from_path(p) for p in src)
    assert all(r["source"].startswith(f"{gcs_bucket.url}/in/a/") and r["captions"] == 0 for r in rows)


def test_plan_is_deterministic_and_balanced():
    paths = [f"gs://b/{d}/{i:03d}.jpg" for d in ("x", "y") for i in range(10)] + ["gs://b/x/notes.txt"]
    plans, dead = P.plan_shards(reversed(paths), 3)
    assert [len(p.entries) for p in plans] == [3, 3, 3, 1] and {p.total for p in plans} == {4}
    assert [e[0] for p in plans for e in p.entries] == [f"{i:03d}" for i in range(10)]
    assert all(e[1].startswith("gs://b/x/") for p in plans for e in p.entries)  # first path keeps the id
    assert sorted(d.error for d in dead) == ["duplicate_id"] * 10 + ["not_an_image"]
    assert P.plan_shards([], 3) == ([], [])
    with pytest.raises(ValueError, match="--shard-size"):
        P.PackConfig(images=("x",), output="o", shard_size=0)
