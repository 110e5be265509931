"""``captionbeam captions`` end to end on DirectRunner: a hand-written dataset whose join accounting,
vocabulary, per-split statistics and records are known exactly; read back with tf.data and with the
``tfrecord`` package; multi-process determinism; a run entirely on the GCS emulator; bad inputs."""
import glob
import json
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.model import records
from captionbeam.model.text import clean_seed, wrap
from captionbeam.model.vocab import RESERVED, Vocabulary

FEATURE_SHAPE = (2, 3)
FEATURE_IDS = ["t1", "t2", "t3", "d1", "s1", "nis", "both", "fwc", "fwc2"]

CAPTIONS = [
    "t1.jpg#0\tA dog runs on the grass .",
    "t1.jpg#1\tThe big dog runs fast",
    "broken line without a tab",                 # dead letter: parse_captions
    "t2.jpg#0\tA big cat sits .",
    "t2.jpg#1\tTwo dogs sit on the grass",
    "t3.jpg.1#0\tA cat runs ; dog ?",            # Flickr8k's .jpg.1 quirk: id t3
    "t3.jpg#1\tA 2 .",                           # nothing left after --clean seed: dead letter 'clean'
    "d1.jpg#0\tA dog runs",
    "d1.jpg#1\tzebra zebra",
    "s1.jpg#0\tA cat and a zebra",
    "cwf.jpg#0\tzebra zebra zebra dog dog",      # train split, no features: must not reach the vocabulary
    "nis.jpg#0\tzebra dog",                      # captions + features, in no split
    "both.jpg#0\tzebra",                         # in train AND test
    "x.jpg#0\t   ",                              # dead letter: empty caption
    "t1.jpg#2\tdog grass",                       # a third caption of t1, later in the file
]
SPLITS = {"train": ["t1", "t2", "t3", "cwf", "fwc", "both"], "dev": ["d1", "ghost"], "test": ["s1", "both"]}

# What the job must find.
VOCAB = RESERVED + ("dog", "grass", "runs", "the", "big", "cat", "on")  # min count 2 over t1, t2, t3
JOIN = {"joined": 5, "captions_without_features": 1, "features_without_captions": 2, "not_in_any_split": 1,
        "in_several_splits": 1, "split_without_captions": 1, "images_total": 11}
JOIN_LISTS = {"captions_without_features": ["cwf"], "features_without_captions": ["fwc", "fwc2"],
              "not_in_any_split": ["nis"], "in_several_splits": ["both"], "split_without_captions": ["ghost"]}
SPLIT_STATS = {
    "train": {"images": 3, "captions": 6, "tokens": 24, "unknown_tokens": 5, "unknown_rate": round(5 / 24, 6),
              "max_caption_length": 8},
    "dev": {"images": 1, "captions": 2, "tokens": 4, "unknown_tokens": 2, "unknown_rate": 0.5, "max_caption_length": 4},
    "test": {"images": 1, "captions": 1, "tokens": 3, "unknown_tokens": 2, "unknown_rate": round(2 / 3, 6),
             "max_caption_length": 5},
}
DEAD = {"total": 5, "parse_captions": 2, "clean": 1, "parse_features": 1, "join": 1}
EXPECTED_CAPTIONS = {  # image -> its captions in file order, as cleaned text
    "t1": ["A dog runs on the grass .", "The big dog runs fast", "dog grass"],
    "t2": ["A big cat sits .", "Two dogs sit on the grass"],
    "t3": ["A cat runs ; dog ?"],
    "d1": ["A dog runs", "zebra zebra"],
    "s1": ["A cat and a zebra"],
}
SPLIT_OF = {"t1": "train", "t2": "train", "t3": "train", "d1": "dev", "s1": "test"}


def feature_of(image_id: str) -> np.ndarray:
    return np.arange(6, dtype=np.float32).reshape(FEATURE_SHAPE) + 10 * FEATURE_IDS.index(image_id)


def write_inputs(root: str, shuffle_seed=None, compress: bool = False) -> dict:
    """The hand-written dataset under ``root``; returns the paths."""
    import tensorflow as tf
    os.makedirs(os.path.join(root, "features"), exist_ok=True)
    lines = list(CAPTIONS)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(lines)
    paths = {"captions": os.path.join(root, "captions.txt"), "features": os.path.join(root, "features")}
    with open(paths["captions"], "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name, ids in SPLITS.items():
        paths[name] = os.path.join(root, f"{name}.txt")
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("".join(f"{i}.jpg\n" for i in ids))
    ids = list(FEATURE_IDS)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ids)
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compress else "")
    shards = [ids[:5], ids[5:]]
    for k, shard in enumerate(shards):
        with tf.io.TFRecordWriter(os.path.join(root, "features", f"features-{k:05d}-of-00002.tfrecord"), options) as w:
            for iid in shard:
                w.write(records.feature_example(iid, f"/imgs/{iid}.jpg", f"{FEATURE_IDS.index(iid):064x}",
                                                "handmade", feature_of(iid)))
            if k == 1:
                w.write(b"not a tf.train.Example")  # dead letter: parse_features
                # a second record for t1 (another file with the same name): dead letter 'join', first path kept
                w.write(records.feature_example("t1", "/other/t1.jpg", "f" * 64, "handmade", feature_of("t1") - 100))
    spec = records.FeaturesSpec(encoder="handmade", feature_shape=list(FEATURE_SHAPE), image_size=[8, 8],
                                preprocessing="none", weights="none", count=len(FEATURE_IDS) + 1,
                                compression="GZIP" if compress else "NONE")
    with open(os.path.join(root, "features", "features_spec.json"), "w") as f:
        f.write(spec.to_json())
    return paths


def split_flags(paths: dict):
    out = []
    for name in ("train", "dev", "test"):
        out += ["--split", f"{name}={paths[name]}"]
    return out


@dataclass
class Run:
    inputs: dict
    output: str
    stats: dict
    stdout: str


def read_training_records_tf(files, shape=FEATURE_SHAPE):
    import tensorflow as tf
    out = {}
    ds = tf.data.TFRecordDataset(files).map(lambda s: records.parse_training_example(s, shape))
    for ex in ds.as_numpy_iterator():
        caps = ex["captions"]
        caps = caps.to_list() if hasattr(caps, "to_list") else [[int(t) for t in c] for c in caps]
        out[ex["image_id"].decode()] = (ex["feature"], caps)
    return out


def read_records_tfrecord_package(files):
    """Read with the ``tfrecord`` package (in a TF-free child process: see tests.plugins.data)."""
    from tests.plugins.data import read_with_tfrecord_package
    out = {}
    rows = read_with_tfrecord_package(files, {"image_id": "byte", "feature_shape": "int", "feature": "float",
                                              "caption_ids": "int", "caption_lengths": "int"})
    for ex in rows:
        feature = np.asarray(ex["feature"], np.float32).reshape(ex["feature_shape"])
        out[ex["image_id"]] = (feature, records.split_captions(ex["caption_ids"], ex["caption_lengths"]))
    return out


def expected_ids(image_id: str):
    vocab = Vocabulary(VOCAB)
    return [vocab.encode(wrap(clean_seed(c))) for c in EXPECTED_CAPTIONS[image_id]]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("captions_main"))
    inputs = write_inputs(os.path.join(root, "in"))
    out = os.path.join(root, "out")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(["captions", "--captions", inputs["captions"], *split_flags(inputs), "--features", inputs["features"],
                  "--output", out, "--min-count", "2", "--runner=DirectRunner"])
    assert rc == 0
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    return Run(inputs, out, stats, buf.getvalue())


def test_join_accounting_is_exact(main_run):
    join = {k: v for k, v in main_run.stats["join"].items() if k != "lists"}
    assert join == JOIN
    for category, ids in JOIN_LISTS.items():
        with open(os.path.join(main_run.output, "join", f"{category}.txt")) as f:
            assert f.read().split() == ids, category
    assert main_run.stats["dead_letters"] == DEAD
    from captionbeam.pipelines.deadletter import read_dead_letters
    dead = read_dead_letters(main_run.output)
    assert sorted((d.stage, d.error) for d in dead) == [
        ("clean", "EmptyCaption"), ("join", "DuplicateImageId"), ("parse_captions", "CaptionFileError"),
        ("parse_captions", "CaptionFileError"), ("parse_features", "DecodeError")]
    by_stage = {d.stage: d for d in dead}
    assert by_stage["join"].path == "/other/t1.jpg"
    assert "'A 2 .'" in by_stage["clean"].message
    assert any(":3: expected '<file>#<n><TAB><caption>'" in d.message for d in dead)


def test_vocabulary_and_stats(main_run):
    with open(os.path.join(main_run.output, "vocab.txt")) as f:
        assert tuple(f.read().splitlines()) == VOCAB
    s = main_run.stats
    assert s["vocab_size"] == len(VOCAB) and s["min_count"] == 2 and s["vocab_split"] == "train"
    assert s["max_caption_length"] == 8
    for name, expected in SPLIT_STATS.items():
        got = {k: s["splits"][name][k] for k in expected}
        assert got == expected, name
    assert s["splits"]["dev"]["images_in_split_file"] == 2
    assert s["tokens_in_vocab_split"] == 24 and s["distinct_tokens_in_vocab_split"] == 12
    with open(os.path.join(main_run.output, "token_counts.tsv")) as f:
        assert f.read().splitlines()[:3] == ["dog\t4", "grass\t3", "runs\t3"]
    # the spec is copied verbatim
    with open(os.path.join(main_run.output, "features_spec.json")) as a, \
            open(os.path.join(main_run.inputs["features"], "features_spec.json")) as b:
        assert a.read() == b.read()
    # the printed summary
    assert "join (captions + features, 11 image ids): 5 joined, 1 in several splits, 2 features without captions, " \
           "1 captions without features, 1 split without captions, 1 not in any split" in main_run.stdout
    assert "dead letters: clean 1, join 1, parse_captions 2, parse_features 1 (total 5)" in main_run.stdout


def test_records_read_back_with_tf_data_and_tfrecord_package(main_run):
    files = {split: sorted(glob.glob(os.path.join(main_run.output, f"{split}-[0-9]*-of-*.tfrecord")))
             for split in ("train", "dev", "test")}
    assert [os.path.basename(f) for f in files["train"]] == ["train-00000-of-00001.tfrecord"]
    for split, paths in files.items():
        via_tf = read_training_records_tf(paths)
        via_pkg = read_records_tfrecord_package(paths)
        expected = sorted(i for i, s in SPLIT_OF.items() if s == split)
        assert sorted(via_tf) == sorted(via_pkg) == expected
        for iid in expected:
            for feature, captions in (via_tf[iid], via_pkg[iid]):
                np.testing.assert_array_equal(feature, feature_of(iid))  # the first path's record, not /other/
                assert captions == expected_ids(iid), iid
    # a readable spot check: t2's second caption, decoded
    vocab = Vocabulary.load(os.path.join(main_run.output, "vocab.txt"))
    _, caps = read_training_records_tf(files["train"])["t2"]
    assert vocab.decode(caps[1]) == ["<unk>", "<unk>", "<unk>", "on", "the", "grass"]


def test_multiprocess_shuffled_gzip_run_gives_the_same_data(main_run, tmp_path):
    """Shuffled caption lines and feature records, GZIP features, two shards per split, two worker
    processes: the same vocabulary, statistics and record contents."""
    inputs = write_inputs(str(tmp_path / "in"), shuffle_seed=3, compress=True)
    out = str(tmp_path / "out")
    assert cli(["captions", "--captions", inputs["captions"], *split_flags(inputs), "--features", inputs["features"],
                "--output", out, "--min-count", "2", "--num-shards", "2", "--runner=DirectRunner",
                "--direct_running_mode=multi_processing", "--direct_num_workers=2"]) == 0
    with open(os.path.join(out, "vocab.txt")) as a, open(os.path.join(main_run.output, "vocab.txt")) as b:
        assert a.read() == b.read()
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)

    def comparable(s):
        drop = {"captions_file", "features", "split_files"}
        d = {k: v for k, v in s.items() if k not in drop}
        d["join"] = {k: v for k, v in s["join"].items() if k != "lists"}
        d["splits"] = {n: {k: v for k, v in sp.items() if k not in ("records", "shards")} for n, sp in s["splits"].items()}
        return d
    assert comparable(stats) == comparable(main_run.stats)
    train = sorted(glob.glob(os.path.join(out, "train-[0-9]*-of-*.tfrecord")))
    assert [os.path.basename(f) for f in train] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    got = read_training_records_tf(train)
    assert sorted(got) == ["t1", "t2", "t3"]
    for iid, (feature, caps) in got.items():
        np.testing.assert_array_equal(feature, feature_of(iid))
        assert sorted(caps) == sorted(expected_ids(iid))  # caption order follows the (shuffled) file


def test_captions_only_kaggle_basic_without_splits(tmp_path):
    """No --features, no --split: every image is 'train', caption-only records, --clean basic; with
    --keep-empty a caption with no words ('?!') stays as <start> <end>, an empty field is still a dead letter."""
    path = tmp_path / "captions.csv"
    path.write_text('image,caption\n'
                    'a.jpg,"A dog, a cat."\n'
                    'a.jpg,A black-and-white dog\n'
                    'b.jpg,a dog\n'
                    'b.jpg,?!\n'
                    'b.jpg,\n', encoding="utf-8")
    out = str(tmp_path / "out")
    assert cli(["captions", "--captions", str(path), "--clean", "basic", "--min-count", "2", "--output", out,
                "--keep-empty", "--runner=DirectRunner"]) == 0
    with open(os.path.join(out, "vocab.txt")) as f:
        assert f.read().splitlines() == list(RESERVED) + ["a", "dog"]
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["format"] == "kaggle" and stats["record_kind"] == "captions"
    assert list(stats["splits"]) == ["train"] and stats["splits"]["train"]["images"] == 2
    assert stats["splits"]["train"]["captions"] == 4 and stats["keep_empty"] is True
    assert stats["splits"]["train"]["unknown_tokens"] == 4  # cat, black, and, white
    assert stats["dead_letters"] == {"total": 1, "parse_captions": 1}
    files = glob.glob(os.path.join(out, "*.tfrecord"))
    assert [os.path.basename(f) for f in files] == ["train-captions-00000-of-00001.tfrecord"]
    import tensorflow as tf
    got = {}
    for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
        ex = tf.train.Example.FromString(raw)
        f = ex.features.feature
        assert "feature" not in f
        got[f["image_id"].bytes_list.value[0].decode()] = records.split_captions(
            f["caption_ids"].int64_list.value, f["caption_lengths"].int64_list.value)
    # a=4, dog=5: "a dog a cat", "a black and white dog", "a dog"
    assert got == {"a": [[2, 4, 5, 4, 1, 3], [2, 4, 1, 1, 1, 5, 3]], "b": [[2, 4, 5, 3], [2, 3]]}


def test_gcs_run_with_given_vocabulary(gcs_bucket, tmp_path, main_run):
    """Inputs, a given --vocab and the output all on gs:// (the storage emulator); read back through the bucket."""
    local = write_inputs(str(tmp_path / "in"))
    base = gcs_bucket.upload_dir(str(tmp_path / "in"), "in")
    vocab_url = gcs_bucket.upload_bytes("models/vocab.txt", "\n".join(VOCAB).encode() + b"\n")
    gs = {k: v.replace(str(tmp_path / "in"), base) for k, v in local.items()}
    out = f"{gcs_bucket.url}/data"
    assert cli(["captions", "--captions", gs["captions"], *split_flags(gs), "--features", gs["features"],
                "--output", out, "--vocab", vocab_url, "--runner=DirectRunner"]) == 0
    keys = gcs_bucket.keys("data/")
    for key in ("data/vocab.txt", "data/stats.json", "data/features_spec.json", "data/train-00000-of-00001.tfrecord",
                "data/dev-00000-of-00001.tfrecord", "data/test-00000-of-00001.tfrecord",
                "data/join/captions_without_features.txt"):
        assert key in keys
    assert "data/token_counts.tsv" not in keys  # nothing was counted: the vocabulary was given
    stats = json.loads(gcs_bucket.read("data/stats.json"))
    assert stats["vocab_source"] == vocab_url and stats["vocab_split"] is None
    assert {k: v for k, v in stats["join"].items() if k != "lists"} == JOIN
    assert stats["splits"]["dev"]["unknown_rate"] == 0.5
    assert gcs_bucket.read("data/vocab.txt").decode().splitlines() == list(VOCAB)
    local_copy = tmp_path / "train.tfrecord"
    local_copy.write_bytes(gcs_bucket.read("data/train-00000-of-00001.tfrecord"))
    got = read_records_tfrecord_package([str(local_copy)])
    assert {k: v[1] for k, v in got.items()} == {i: expected_ids(i) for i in ("t1", "t2", "t3")}


# ----------------------------------------------------------------------------- bad inputs fail fast
@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    return write_inputs(str(tmp_path_factory.mktemp("captions_bad")))


@pytest.mark.parametrize("args,flag", [
    (["--captions", "{root}/missing.txt"], "--captions: file not found"),
    (["--split", "train={root}/missing.txt"], "--split train="),
    (["--split", "dev={train}"], "--vocab-split"),
    (["--split", "tr/ain={train}"], "--split: split name 'tr/ain'"),
    (["--split", "train={train}", "--split", "train={dev}"], "--split: split names must be unique"),
    (["--features", "{root}"], "--features: "),
    (["--vocab", "{root}/nope.txt"], "--vocab: file not found"),
])
def test_bad_inputs_name_the_flag(small_inputs, tmp_path, capsys, args, flag):
    root = os.path.dirname(small_inputs["captions"])
    args = [a.format(root=root, **small_inputs) for a in args]
    if "--captions" not in args:
        args = ["--captions", small_inputs["captions"]] + args
    assert cli(["captions", *args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert flag in err, err


@pytest.mark.parametrize("args,flag", [
    (["--split", "train"], "--split: expected NAME=FILE"),
    (["--format", "xml"], "--format: invalid choice: 'xml'"),
    (["--min-count", "0"], "--min-count: expected an integer >= 1"),
    (["--clean", "fancy"], "--clean: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_exit_with_usage(small_inputs, tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as e:
        cli(["captions", "--captions", small_inputs["captions"], "--output", str(tmp_path / "o"), *args])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_output_of_an_earlier_run_needs_overwrite(main_run, tmp_path, capsys):
    import shutil

    from captionbeam.pipelines.captions import CaptionsConfig, clear_outputs, existing_outputs, plan
    assert cli(["captions", "--captions", main_run.inputs["captions"], "--output", main_run.output]) == 2
    err = capsys.readouterr().err
    assert f"--output: {main_run.output} already holds" in err and "--overwrite" in err
    copy = str(tmp_path / "copy")
    shutil.copytree(main_run.output, copy)
    config = CaptionsConfig(captions=main_run.inputs["captions"], output=copy, overwrite=True)
    assert plan(config).shards == {"train": 1}  # with --overwrite the plan goes through
    before = existing_outputs(copy)
    assert any(p.endswith("train-00000-of-00001.tfrecord") for p in before) and len(before) >= 12
    assert clear_outputs(copy) == len(before)
    assert existing_outputs(copy) == []
