"""The Beam jobs on real engines (issue 13): pack, features, captions and bulk on Flink (embedded), Spark
(``local[2]``) and Prism give the same records, vocabulary, captions and dead letters as on DirectRunner;
bulk (over loose files and tar shards) shows its progress on each and its run record's counters balance
with the files, counted by the runner (but on Prism, which loses a bundle's counters); bulk on Flink followed by
``--skip-existing`` adds no rows; a missing jar / binary, an unreachable ``--flink_master`` and a job server
killed mid-job each end in a clear error naming the engine, with no completion marker left behind.

One job server per engine per session (``tests/plugins/engines.py``); the jobs reach it with
``--runner=PortableRunner --job_endpoint=... --environment_type=LOOPBACK``, the flags the ``flink-local``,
``spark-local`` and ``prism`` profiles boil down to once their runner has started that same server.
"""
import glob
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.model import records
from captionbeam.pipelines import io as pio
from captionbeam.pipelines.deadletter import read_dead_letters
from tests.plugins.engines import ENGINE_NAMES, need_engine, start_job_server
from tests.plugins.progress import assert_progress_lines, progress_messages

pytestmark = pytest.mark.slow

ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "8"]
DIRECT = ["--runner=DirectRunner"]
CORRUPT = {"zero.jpg": b"", "text.jpg": b"this is not an image at all"}
LOOSE, PACKED = 36, 24   # of the 60 sample images: loose files, and packed into tar shards


# ----------------------------------------------------------------------------- inputs and one run per runner
@pytest.fixture(scope="module")
def inputs(sample_dir, tmp_path_factory):
    """Loose JPEGs (with two corrupt files) and tar shards made by ``captionbeam pack`` on DirectRunner."""
    root = tmp_path_factory.mktemp("engine_inputs")
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))
    (root / "loose").mkdir()
    (root / "to_pack").mkdir()
    for p in images[:LOOSE]:
        shutil.copy(p, root / "loose")
    for p in images[LOOSE:LOOSE + PACKED]:
        shutil.copy(p, root / "to_pack")
    for name, data in CORRUPT.items():
        (root / "loose" / name).write_bytes(data)
    (root / "to_pack" / "readme.md").write_bytes(b"not an image")   # pack's own dead letter
    return root


def pack_args(inputs, out):
    return ["pack", "--images", str(inputs / "to_pack" / "*"), "--output", str(out), "--format", "tar",
            "--shard-size", "8", "--json"]


def run_jobs(inputs, sample_dir, image_model_dir, out, pipeline_args, packed_dir=None):
    """pack, features (loose files + the tar shards), captions (joined with those features), bulk:
    -> {job: output dir}. ``packed_dir``: shards to featurise (default: this run's own pack)."""
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--log-level", "WARNING"]
    assert cli(flags + pack_args(inputs, out / "pack") + pipeline_args) == 0
    shards = str((packed_dir or out / "pack") / "shard-*.tar")
    assert cli(flags + ["features", "--images", str(inputs / "loose" / "*.jpg"), shards, "--output",
                        str(out / "features"), *ENCODER, *pipeline_args]) == 0
    splits = []
    for name in ("train", "dev", "test"):
        splits += ["--split", f"{name}={os.path.join(sample_dir, name + '.txt')}"]
    assert cli(flags + ["captions", "--captions", os.path.join(sample_dir, "captions.txt"), *splits,
                        "--features", str(out / "features"), "--output", str(out / "data"), "--min-count", "2",
                        *pipeline_args]) == 0
    with progress_messages() as bulk_progress:
        assert cli(flags + ["bulk", "--images", str(inputs / "loose" / "*.jpg"), shards, "--model-dir",
                            image_model_dir["merge"], "--output", str(out / "bulk"), "--batch-size", "4",
                            *pipeline_args]) == 0
    return {"pack": out / "pack", "features": out / "features", "data": out / "data", "bulk": out / "bulk",
            "bulk_progress": bulk_progress}


@pytest.fixture(scope="module")
def direct(inputs, sample_dir, image_model_dir, tmp_path_factory):
    return run_jobs(inputs, sample_dir, image_model_dir, tmp_path_factory.mktemp("direct"), DIRECT)


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def engine_run(request, inputs, sample_dir, image_model_dir, direct, engine_servers, tmp_path_factory):
    engine = request.param
    need_engine(engine)
    server = engine_servers(engine)
    out = tmp_path_factory.mktemp(f"on_{engine}")
    started = time.time()
    dirs = run_jobs(inputs, sample_dir, image_model_dir, out, server.pipeline_args(), packed_dir=direct["pack"])
    return {"engine": engine, "server": server, "seconds": time.time() - started, **dirs}


# ----------------------------------------------------------------------------- what the outputs hold
def dead_letters(directory):
    return sorted((os.path.basename(d.path), d.error, d.stage) for d in read_dead_letters(str(directory)))


def pack_contents(directory):
    import tarfile
    rows = sorted((r["id"], r["sha256"], r["member"], r["bytes"])
                  for r in (json.loads(l) for l in open(directory / "manifest.jsonl") if l.strip()))
    members = {}
    for shard in sorted(glob.glob(str(directory / "shard-*.tar"))):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    members[m.name] = tar.extractfile(m).read()
    return rows, members


def feature_rows(directory):
    import tensorflow as tf
    files = sorted(glob.glob(records.shard_pattern(str(directory), records.FEATURES_PREFIX)))
    out = {}
    for r in tf.data.TFRecordDataset(files):
        row = records.parse_feature_example(r.numpy())
        # a shard member's path names its shard: the same shards are read on every runner
        out[row.path] = (row.image_id, row.sha256, np.asarray(row.feature, np.float32))
    return out


def training_rows(directory, split):
    import tensorflow as tf
    files = sorted(glob.glob(os.path.join(str(directory), f"{split}-[0-9]*-of-*.tfrecord")))
    rows = []
    for r in tf.data.TFRecordDataset(files):
        ex = tf.train.Example.FromString(r.numpy())
        f = ex.features.feature
        rows.append((f["image_id"].bytes_list.value[0].decode(), tuple(f["caption_ids"].int64_list.value),
                     tuple(f["caption_lengths"].int64_list.value),
                     np.asarray(f["feature"].float_list.value)))
    return sorted(rows, key=lambda r: r[:3])


def assert_same_training_rows(got, want, split):
    """Ids, caption ids and lengths exactly; the features to the features test's tolerance (an engine batches
    images differently, and oneDNN's sums round differently per batch: rounding both to 5 decimals and
    comparing bytes flipped a digit at a rounding boundary)."""
    assert got and [r[:3] for r in got] == [r[:3] for r in want], split
    for g, w in zip(got, want):
        np.testing.assert_allclose(g[3], w[3], rtol=1e-5, atol=1e-6, err_msg=f"{split}: {g[0]}")


def stats_without_paths(directory):
    """stats.json without the values that name this run's own folders."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not (isinstance(v, str) and str(directory.parent) in v)}
        return value
    return strip(json.loads((directory / "stats.json").read_text()))


def bulk_rows(directory):
    rows = []
    for f in sorted(glob.glob(str(directory / "captions" / "captions-*.jsonl"))):
        rows += [json.loads(l) for l in open(f) if l.strip()]
    return sorted((r["path"], r["image_id"], r["sha256"], r["caption"], r["model_version"], r["log_prob"])
                  for r in rows)


def assert_same_bulk_rows(got, want):
    """Equal rows; log_prob to 1e-3, since each runner batches the images differently (float32 sums move)."""
    assert [r[:-1] for r in got] == [r[:-1] for r in want]
    np.testing.assert_allclose([r[-1] for r in got], [r[-1] for r in want], atol=1e-3)


def last_run_summary(directory):
    runs = sorted(glob.glob(str(directory / "runs" / "*.json")), key=os.path.getmtime)
    return json.loads(open(runs[-1]).read())


# ----------------------------------------------------------------------------- same outputs as DirectRunner
def test_pack_equals_direct(direct, engine_run):
    assert pack_contents(engine_run["pack"]) == pack_contents(direct["pack"])
    rows, members = pack_contents(engine_run["pack"])
    assert len(rows) == PACKED and len(members) == PACKED
    assert dead_letters(engine_run["pack"]) == dead_letters(direct["pack"]) == [("readme.md", "not_an_image", "pack")]


def test_features_equal_direct(direct, engine_run):
    want, got = feature_rows(direct["features"]), feature_rows(engine_run["features"])
    assert len(want) == LOOSE + PACKED and sorted(got) == sorted(want)
    assert any(".tar" in p for p in got) and any(p.endswith(".jpg") and ".tar" not in p for p in got)
    for path, (image_id, sha, feature) in want.items():
        assert got[path][:2] == (image_id, sha)
        np.testing.assert_allclose(got[path][2], feature, rtol=1e-5, atol=1e-6)
    assert dead_letters(engine_run["features"]) == dead_letters(direct["features"])
    assert {d[0] for d in dead_letters(direct["features"])} == set(CORRUPT)
    spec = json.loads((engine_run["features"] / "features_spec.json").read_text())
    assert spec["count"] == LOOSE + PACKED and spec["dead_letters"] == len(CORRUPT)


def test_captions_equal_direct(direct, engine_run):
    assert (engine_run["data"] / "vocab.txt").read_text() == (direct["data"] / "vocab.txt").read_text()
    want, got = stats_without_paths(direct["data"]), stats_without_paths(engine_run["data"])
    assert got == want and got["vocab_size"] > 4 and set(got["splits"]) == {"train", "dev", "test"}
    for split in ("train", "dev", "test"):
        assert_same_training_rows(training_rows(engine_run["data"], split), training_rows(direct["data"], split), split)
    # the CoGroupByKey join's lists of captions without features and features without captions
    for f in sorted(glob.glob(str(direct["data"] / "join" / "*.txt"))):
        assert (engine_run["data"] / "join" / os.path.basename(f)).read_text() == open(f).read()


def test_bulk_equals_direct(direct, engine_run):
    """Rows and dead letters as on DirectRunner, over loose files and tar shards; the run record's counters
    balance and agree with them, and come from the runner's own counters (Spark 2.78 reports a counter
    after bulk's Flatten of the two read branches once per fused stage: counters.query_counters sums the
    parts), but on Prism, whose lost bundle counters the files make up for (bulk.reconcile_with_files)."""
    want, got = bulk_rows(direct["bulk"]), bulk_rows(engine_run["bulk"])
    assert len(want) == LOOSE + PACKED and sum(".tar" in r[0] for r in want) == PACKED
    assert_same_bulk_rows(got, want)
    assert dead_letters(engine_run["bulk"]) == dead_letters(direct["bulk"])
    assert {d[0] for d in dead_letters(engine_run["bulk"])} == set(CORRUPT)
    for run in (direct, engine_run):
        record = last_run_summary(run["bulk"])
        counters = {k: record["counters"][k] for k in ("matched", "captioned", "skipped", "failed")}
        assert counters == {"matched": LOOSE + PACKED + len(CORRUPT), "captioned": LOOSE + PACKED,
                            "skipped": 0, "failed": len(CORRUPT)} and record["balanced"], record
    sources = last_run_summary(engine_run["bulk"])["counter_sources"]
    if engine_run["engine"] != "prism":
        assert set(sources.values()) == {"runner"}, sources


def test_bulk_progress_lines(engine_run):
    """The bulk job's progress on each engine, as on Prism in the journey (tests/journeys/): done and rate
    counted by the LOOPBACK workers into the progress files, the last 62 (60 rows and 2 dead letters; the
    tar shards' members are not listed, so no total or ETA)."""
    assert_progress_lines(engine_run["bulk_progress"], "bulk", LOOSE + PACKED + len(CORRUPT), listed=False)


def test_bulk_skip_existing_on_flink_adds_no_rows(inputs, image_model_dir, engine_servers, tmp_path):
    need_engine("flink")
    server = engine_servers("flink")
    out = tmp_path / "bulk"
    argv = ["--log-level", "WARNING", "bulk", "--images", str(inputs / "loose" / "*.jpg"), "--model-dir",
            image_model_dir["merge"], "--output", str(out), "--batch-size", "4", *server.pipeline_args()]
    assert cli(argv) == 0
    first = bulk_rows(out)
    assert len(first) == LOOSE
    assert cli(argv + ["--skip-existing"]) == 0
    assert bulk_rows(out) == first
    counters = last_run_summary(out)["counters"]
    assert counters["captioned"] == 0 and counters["skipped"] == LOOSE


# ----------------------------------------------------------------------------- failures name the engine
def test_missing_jar_or_binary_fails_fast_naming_the_engine(tmp_path, monkeypatch, capsys, inputs):
    from captionbeam.launch.engines import ENGINES_ENV
    monkeypatch.setenv(ENGINES_ENV, str(tmp_path / "empty-cache"))
    base = ["features", "--images", str(inputs / "loose" / "*.jpg"), "--output", str(tmp_path / "out"), *ENCODER]
    for profile, engine in (("flink-local", "flink"), ("spark-local", "spark"), ("prism", "prism")):
        with pytest.raises(SystemExit) as e:
            cli(base + ["--profile", profile])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"{engine}: " in err and "is missing" in err and "make engines" in err, err
    with pytest.raises(SystemExit):
        cli(base + ["--runner=PrismRunner", f"--prism_location={tmp_path / 'no-prism'}"])
    assert "prism: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unreachable_flink_master_fails_naming_it(tmp_path, capsys, inputs, monkeypatch):
    from captionbeam.launch.engines import artifact_path, free_port
    need_engine("flink")
    # Flink's REST client retries 20 times, 3 s apart, by default: one try keeps the test short (the job
    # server that FlinkRunner starts reads $FLINK_CONF_DIR, as any Flink client does)
    conf = tmp_path / "flink-conf"
    conf.mkdir()
    (conf / "flink-conf.yaml").write_text("rest.retry.max-attempts: 1\nrest.retry.delay: 100\n")
    monkeypatch.setenv("FLINK_CONF_DIR", str(conf))
    master = f"127.0.0.1:{free_port()}"   # nothing listens there
    out = tmp_path / "out"
    rc = cli(["--log-level", "WARNING", "features", "--images", str(inputs / "loose" / "*.jpg"), "--output", str(out),
              *ENCODER, "--runner=FlinkRunner", f"--flink_master={master}",
              f"--flink_job_server_jar={artifact_path('flink')}", "--environment_type=LOOPBACK"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"flink: check that --flink_master={master}" in err, err[-3000:]
    assert not (out / "features_spec.json").exists()


def test_job_server_killed_mid_job_fails_without_a_completion_marker(tmp_path, capsys, inputs):
    """A Flink job server of its own, killed once the job's tasks run: the job ends in an error naming the
    engine, and features_spec.json (written only after every record and dead letter) is not there."""
    need_engine("flink")
    server = start_job_server("flink", str(tmp_path))
    killed = threading.Event()

    def kill_when_running():
        deadline = time.time() + 240
        while time.time() < deadline and server.proc.poll() is None:
            if "switched from INITIALIZING to RUNNING" in server.log():
                server.proc.kill()
                killed.set()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_when_running, daemon=True)
    watcher.start()
    out = tmp_path / "out"
    try:
        rc = cli(["--log-level", "WARNING", "features", "--images", str(inputs / "loose" / "*.jpg"), "--output",
                  str(out), *ENCODER, *server.pipeline_args()])
    finally:
        server.stop()
        watcher.join(5)
    err = capsys.readouterr().err
    assert killed.is_set(), "the job finished before its job server could be killed"
    assert rc == 1
    assert "the job server at 127.0.0.1:" in err and "stopped answering during the job" in err, err[-3000:]
    assert not (out / "features_spec.json").exists()
