"""``captionbeam bulk --commit-every N`` (pipelines/bulk_parts.py): a run in committed parts.

Pure parts (splitting, literal globs, which manifest files a part reads, which entries it keeps), then
the real job on tar shards: each part a committed run, the re-run skipping every committed image, and a
real ``captionbeam bulk`` process SIGKILLed after its first part, resumed with ``--force``: every image
in exactly one caption row, and the committed part not captioned again."""
import glob
import io
import json
import os
import tarfile

import pytest

from captionbeam.pipelines import io as pio
from captionbeam.pipelines.bulk_parts import (PartsProgress, literal_pattern, manifest_run, manifests_for_part,
                                              split_into_parts)
from captionbeam.pipelines.manifest import input_of
from tests.plugins.processes import sigkill_once

def test_split_into_parts_keeps_order_and_every_file_once():
    files = [f"s{i}.tar" for i in range(7)]
    parts = split_into_parts(files, 3)
    assert parts == [("s0.tar", "s1.tar", "s2.tar"), ("s3.tar", "s4.tar", "s5.tar"), ("s6.tar",)]
    assert split_into_parts([], 3) == []
    with pytest.raises(ValueError, match="--commit-every"):
        split_into_parts(files, 0)


def test_a_literal_pattern_matches_its_file_only(tmp_path):
    names = ["a[1].jpg", "a1.jpg", "b*.jpg", "bx.jpg", "c?.jpg", "cz.jpg"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    for n in names:
        assert pio.match([literal_pattern(str(tmp_path / n))]) == [str(tmp_path / n)], n


def test_manifest_run_names_the_run_of_each_manifest_file_shape():
    assert manifest_run("manifest-20261206T230000Z-ab12cd34-p00003-00000-of-00002.jsonl") == \
        "20261206T230000Z-ab12cd34-p00003"
    assert manifest_run("manifest-20261206T230000Z-ab12cd34-recovered.jsonl") == "20261206T230000Z-ab12cd34"
    assert manifest_run("notes.txt") is None


def test_a_part_reads_only_the_manifests_that_can_hold_its_files():
    records = {
        "r-p00000": {"run": "r-p00000", "part": {"files": ["/a/s0.tar", "/a/s1.tar"]}},
        "r-p00001": {"run": "r-p00001", "part": {"files": ["/a/s2.tar", "/a/s3.tar"]}},
        "g": {"run": "g", "config": {"images": ["/a/*.tar"]}},           # a run over globs: always read
        "k": {"run": "k", "recovered": True},                             # recovered: always read
    }
    files = ["/o/manifest/v/manifest-r-p00000-00000-of-00001.jsonl", "/o/manifest/v/manifest-r-p00001-00000-of-00001.jsonl",
             "/o/manifest/v/manifest-g-00000-of-00001.jsonl", "/o/manifest/v/manifest-k-recovered.jsonl",
             "/o/manifest/v/manifest-norecord-00000-of-00001.jsonl"]
    assert manifests_for_part(files, records, ["/a/s2.tar", "/a/s9.tar"]) == files[1:]
    assert manifests_for_part(files, records, ["/a/s1.tar", "/a/s2.tar"]) == files     # straddles both parts
    assert manifests_for_part(files, {}, ["/a/s0.tar"]) == files                        # no records: read all


def test_input_of_keeps_a_files_entries_and_its_members_only():
    inputs = frozenset(["/a/s#1.tar", "/a/p.jpg"])
    assert input_of("/a/p.jpg", inputs)
    assert input_of("/a/s#1.tar#dir/m#2.jpg", inputs)        # '#' in the shard and in the member
    assert not input_of("/a/s#2.tar#m.jpg", inputs)
    assert not input_of("/a/p.jpg.old", inputs)


def test_progress_line_has_counts_rate_and_eta():
    p = PartsProgress(files_total=10, parts_total=5, started=0.0)
    line = p.line(0, 2, {"matched": 200, "captioned": 150}, now=20.0)
    assert "part 1/5" in line and "2/10 files" in line and "200 images (150 captioned)" in line
    assert "10.0 images/s" in line and "ETA 0:01:20" in line


# ----------------------------------------------------------------------------- the real job
def _shards(sample_dir, folder, shards, per_shard):
    """``shards`` tar shards of ``per_shard`` sample JPEGs each (distinct members); returns their glob."""
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))
    os.makedirs(folder, exist_ok=True)
    k = 0
    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"shard-{s:03d}.tar"), "w") as tar:
            for _ in range(per_shard):
                data = open(images[k % len(images)], "rb").read() + bytes([k % 251])   # distinct bytes
                info = tarfile.TarInfo(f"img{k:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                k += 1
    return os.path.join(folder, "*.tar")


def _rows(out):
    rows = []
    for f in glob.glob(os.path.join(out, "captions", "*.jsonl")):
        rows += [json.loads(line) for line in open(f) if line.strip()]
    return rows


def _bulk(capsys, *argv):
    from captionbeam.launch.cli import main
    capsys.readouterr()
    rc = main(["bulk", *argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    return json.loads(out), err


def test_each_part_is_committed_and_a_rerun_skips_them_all(sample_dir, image_model_dir, tmp_path, capsys, caplog):
    shards = _shards(sample_dir, str(tmp_path / "shards"), shards=5, per_shard=3)
    out = str(tmp_path / "out")
    args = ["--images", shards, "--model-dir", image_model_dir["merge"], "--output", out, "--commit-every", "2"]
    caplog.set_level("INFO", logger="captionbeam.pipelines.bulk_parts")
    first, _ = _bulk(capsys, *args)
    assert first["counters"] == {"matched": 15, "captioned": 15, "skipped": 0, "failed": 0}
    record = json.load(open(first["run_record"]))
    assert record["parts"] == [f"{first['run']}-p{i:05d}" for i in range(3)] and record["counters"]["captioned"] == 15
    for i, token in enumerate(record["parts"]):              # each part a committed run over its own shards
        part = json.load(open(os.path.join(out, "runs", f"{token}.json")))
        assert part["part"]["index"] == i and part["counters"]["captioned"] == 3 * len(part["part"]["files"])
    assert "part 3/3 committed: 5/5 files, 15 images (15 captioned)" in caplog.text and "ETA" in caplog.text
    rows = _rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 15

    again, _ = _bulk(capsys, *args)                            # nothing new: every image skipped
    assert again["counters"] == {"matched": 15, "captioned": 0, "skipped": 15, "failed": 0}
    _shards(sample_dir, str(tmp_path / "more"), shards=1, per_shard=2)
    os.rename(str(tmp_path / "more" / "shard-000.tar"), str(tmp_path / "shards" / "shard-999.tar"))
    more, _ = _bulk(capsys, *args)                             # a new shard: exactly its images
    assert more["counters"] == {"matched": 17, "captioned": 2, "skipped": 15, "failed": 0}
    assert len(_rows(out)) == 17


def test_killed_after_a_part_the_rerun_captions_only_the_rest(sample_dir, image_model_dir, tmp_path, capsys):
    shards = _shards(sample_dir, str(tmp_path / "shards"), shards=4, per_shard=3)
    out = str(tmp_path / "out")
    args = ["--images", shards, "--model-dir", image_model_dir["merge"], "--output", out, "--commit-every", "1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    # killed once the first part is committed
    sigkill_once(["bulk", *args], lambda: glob.glob(os.path.join(out, "runs", "*-p00000.json")), env)
    committed = {r["path"] for r in _rows(out)}
    assert len(committed) >= 3                                  # at least the first part's three images
    resumed, _ = _bulk(capsys, *args)                           # the dead run's claim: provably dead, no wait
    c = resumed["counters"]
    assert c["matched"] == 12 and c["failed"] == 0 and c["skipped"] >= 3
    assert c["captioned"] + c["skipped"] == 12
    rows = _rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 12     # every image once, nothing twice
