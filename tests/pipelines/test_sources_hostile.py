"""Nothing lost, nothing hangs, nothing blows up (issue 12 #1, #4, #7, #8): hostile real files, tar and
TFRecord shards through the real features job (DirectRunner). Every input is accounted for in exactly
one output: inputs == feature records + dead letters, each dead letter with its reason; the job finishes
and writes the good images. A regression that opens the FIFO hangs: pytest-timeout fails it instead."""
import io
import os
import tarfile

import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.pipelines.deadletter import read_dead_letters
from captionbeam.pipelines.shards.read import read_shard_bytes
from tests.plugins.hostile import LIMIT, jpeg, write_hostile

ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "4"]


def _record_ids(output):
    import tensorflow as tf
    from captionbeam.model import records
    files = sorted(str(p) for p in output.glob("features-*.tfrecord"))
    return sorted(records.parse_feature_example(raw.numpy()).image_id
                  for raw in tf.data.TFRecordDataset(files))


@pytest.mark.timeout(300)
def test_every_hostile_input_is_a_record_or_a_dead_letter(tmp_path):
    h = write_hostile(str(tmp_path / "in"))
    out = tmp_path / "features"
    leftover = out / "beam-temp-features-00000-0123456789abcdef"        # what a killed run leaves (#11)
    leftover.mkdir(parents=True)
    (leftover / "shard").write_bytes(b"half written")
    rc = cli(["--log-level", "WARNING", "features", "--images", *h.globs, "--output", str(out), *ENCODER,
              "--max-bytes", str(LIMIT)])
    assert rc == 0
    dead = {(d.path, d.error) for d in read_dead_letters(str(out))}
    ids = _record_ids(out)
    assert sorted(ids) == sorted(h.records)                      # the good images are all written
    assert dead == h.dead                                        # each bad one with its reason
    assert len(ids) + len(read_dead_letters(str(out))) == h.inputs   # exactly one output each
    assert not leftover.exists()


def test_a_truncated_tar_keeps_the_members_read_so_far():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ends = []
        for i in range(5):
            data = jpeg(i)
            info = tarfile.TarInfo(f"img{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            ends.append(buf.tell())
    whole = buf.getvalue()
    assert [type(i).__name__ for i in read_shard_bytes(whole, "s.tar", "tar")] == ["ShardRecord"] * 5
    for cut in (ends[2], ends[2] + 7, ends[2] + 600):            # at a header, inside it, inside the data
        items = read_shard_bytes(whole[:cut], "s.tar", "tar")
        assert [getattr(i, "image_id", None) for i in items[:3]] == ["img0", "img1", "img2"]
        errors = [i for i in items if type(i).__name__ == "ShardError"]
        assert len(errors) == 1 and errors[0].error == "truncated_shard", items


def test_a_forged_tfrecord_length_is_a_dead_letter_not_a_memory_error():
    from tests.plugins.hostile import _frame
    from captionbeam.pipelines.shards.image_examples import image_example
    data = _frame(image_example("a", jpeg(1))) + _frame(b"y" * 10, length=(1 << 62))
    items = read_shard_bytes(data, "s.tfrecord", "tfrecord")
    assert [getattr(i, "image_id", None) for i in items] == ["a", None]
    assert items[1].error == "corrupt_record" and "claims 4611686018427387904 bytes" in items[1].message


@pytest.mark.timeout(300)
def test_bulk_accounts_for_every_hostile_input(tmp_path, image_model_dir, capsys):
    import json
    h = write_hostile(str(tmp_path / "in"))
    out = tmp_path / "bulk"
    capsys.readouterr()
    rc = cli(["bulk", "--images", *h.globs, "--model-dir", image_model_dir["merge"], "--output", str(out),
              "--max-bytes", str(LIMIT), "--json"])
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{"):])
    assert rc == 0 and summary["balanced"]
    assert summary["counters"]["matched"] == h.inputs
    assert summary["counters"]["captioned"] == len(h.records) and summary["counters"]["failed"] == len(h.dead)
    assert {(d.path, d.error) for d in read_dead_letters(str(out))} == h.dead
