"""Captions that cannot train anything fail clearly; long captions are capped (issue 12 #10). Real files,
the real captions job on DirectRunner, records read back by TensorFlow."""
import json

import pytest
import tensorflow as tf

from captionbeam.launch.cli import main as cli
from captionbeam.model import records


def _captions(capsys, tmp_path, lines, *flags):
    path = tmp_path / "captions.txt"
    path.write_text("".join(line + "\n" for line in lines))
    capsys.readouterr()
    rc = cli(["captions", "--captions", str(path), "--format", "flickr8k", "--output", str(tmp_path / "out"),
              "--min-count", "1", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def test_an_empty_captions_file_fails_before_the_job(tmp_path, capsys):
    rc, _, err = _captions(capsys, tmp_path, [])
    assert rc == 2 and f"--captions {tmp_path / 'captions.txt'}: the file is empty" in err
    assert not (tmp_path / "out" / "stats.json").exists()


def test_a_file_of_only_bad_lines_fails(tmp_path, capsys):
    rc, _, err = _captions(capsys, tmp_path, ["no tab here", "neither here"])
    assert rc == 2 and "no image was written" in err and "2 dead letter(s)" in err


def test_min_count_above_every_word_fails_naming_the_flag(tmp_path, capsys):
    rc, _, err = _captions(capsys, tmp_path, ["a.jpg#0\ta dog runs", "b.jpg#0\ta dog sits"],
                           "--min-count", "3", "--clean", "basic")
    assert rc == 2 and "--min-count 3" in err and "the most frequent is seen 2 time(s)" in err


def test_long_captions_are_capped_and_counted(tmp_path, capsys):
    long = " ".join(["dog"] * 10_000)
    rc, out, _ = _captions(capsys, tmp_path, ["a.jpg#0\t" + long, "b.jpg#0\ta cat sits", "b.jpg#1\t" + long],
                           "--clean", "basic", "--max-caption-tokens", "12")
    assert rc == 0, out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["truncated"] == {"captions": 2, "tokens_cut": 2 * (10_000 - 12), "max_caption_tokens": 12}
    assert stats["max_caption_length"] == 14                              # 12 words + <start> + <end>
    assert "truncated: 2 caption(s) longer than --max-caption-tokens 12 (19976 token(s) cut)" in out
    files = sorted(str(p) for p in (tmp_path / "out").glob("train-captions-*.tfrecord"))
    lengths = []
    for raw in tf.data.TFRecordDataset(files):
        ex = tf.train.Example.FromString(raw.numpy())
        lengths += list(ex.features.feature["caption_lengths"].int64_list.value)
    assert sorted(lengths) == [5, 14, 14]


def test_the_default_cap_is_50_tokens(tmp_path, capsys):
    rc, _, _ = _captions(capsys, tmp_path, ["a.jpg#0\t" + " ".join(["dog"] * 80)], "--clean", "basic")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert rc == 0 and stats["truncated"]["tokens_cut"] == 30 and stats["max_caption_length"] == 52
