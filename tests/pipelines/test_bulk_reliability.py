"""Bulk runs into one --output (issue 12 #6, #11): a lease in the output (local and on the GCS API) makes a
second concurrent run fail fast instead of duplicating every row; a stale lease (killed run) is taken over;
a run killed between its finalised caption files and its manifest is recovered at the next run (no row
captioned twice); beam-temp-* folders left by a kill are removed by the next run."""
import glob
import json
import os
import threading
import time

import pytest

from captionbeam.launch.cli import main as cli_main
from captionbeam.pipelines import io as pio
from captionbeam.pipelines.lease import LeaseHeld, OutputLease, read_claims


@pytest.fixture(scope="module")
def model_dir(image_model_dir):
    return image_model_dir["merge"]


def _images(sample_dir, n):
    return sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:n]


def _bulk(capsys, *argv):
    capsys.readouterr()
    rc = cli_main(["bulk", *argv, "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out[out.index("{"):]) if "{" in out else None), err


def _rows(output):
    return [json.loads(line) for f in pio.match([pio.join(output, "captions", "captions-*")])
            for line in pio.read_text(f).splitlines() if line.strip()]


def test_a_second_run_into_a_leased_bucket_output_fails_fast(gcs_bucket, sample_dir, model_dir, capsys):
    for p in _images(sample_dir, 3):
        gcs_bucket.upload_bytes(f"in/{os.path.basename(p)}", open(p, "rb").read())
    out = f"{gcs_bucket.url}/out"
    argv = ["--images", f"{gcs_bucket.url}/in/*.jpg", "--model-dir", model_dir, "--output", out]
    with OutputLease(out, "20260101T000000Z-0therrun"):          # a live run on another machine
        rc, summary, err = _bulk(capsys, *argv)
        assert rc == 75 and summary is None
        assert f"--output {out} is in use by `captionbeam bulk` run 20260101T000000Z-0therrun" in err and "--force" in err
        assert not gcs_bucket.keys("out/captions") and not gcs_bucket.keys("out/manifest")
        assert [c["run"] for c in read_claims(out)] == ["20260101T000000Z-0therrun"]   # the loser left no claim
    rc, summary, _ = _bulk(capsys, *argv)
    assert rc == 0 and summary["counters"]["captioned"] == 3
    assert not gcs_bucket.keys("out/lease")                     # released at the end of the run


def test_concurrent_claims_on_the_bucket_api_elect_exactly_one(gcs_bucket):
    for trial in range(3):
        out, won, lost = f"{gcs_bucket.url}/race{trial}", [], []

        def claim(n):
            try:
                won.append(OutputLease(out, f"run{n}").acquire())
            except LeaseHeld:
                lost.append(n)
        threads = [threading.Thread(target=claim, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 2
        assert [c["run"] for c in read_claims(out)] == [won[0].run]
        won[0].release()


def test_stale_lease_is_taken_over_and_force_takes_a_live_one(tmp_path, sample_dir, model_dir, capsys, caplog):
    out = tmp_path / "out"
    argv = ["--images", os.path.join(sample_dir, "images", "*.jpg"), "--model-dir", model_dir,
            "--output", str(out)]
    dead = OutputLease(str(out), "20260101T000000Z-deadbeef").acquire()
    dead._stop.set()                                            # killed: no more heartbeats, never released
    old = time.time() - 3600
    for f in glob.glob(str(out / "lease" / "*")):
        os.utime(f, (old, old))
    images = _images(sample_dir, 2)
    argv[1] = images[0]
    rc, summary, _ = _bulk(capsys, *argv)
    assert rc == 0 and summary["counters"]["captioned"] == 1
    assert "removing the stale lease of `captionbeam bulk` run 20260101T000000Z-deadbeef" in caplog.text
    live = OutputLease(str(out), "20260101T000000Z-a11ve000").acquire()
    try:
        argv[1] = images[1]
        rc, _, err = _bulk(capsys, *argv)
        assert rc == 75 and "in use by `captionbeam bulk` run 20260101T000000Z-a11ve000" in err
        rc, summary, _ = _bulk(capsys, *argv, "--force")
        assert rc == 0 and summary["counters"]["captioned"] == 1
        assert "--force: taking the lease" in caplog.text
    finally:
        live._stop.set()


def test_a_kill_between_rows_and_manifest_never_captions_twice(tmp_path, sample_dir, model_dir, capsys):
    out = tmp_path / "out"
    argv = ["--images", os.path.join(sample_dir, "images", "sample_0000*.jpg"), "--model-dir", model_dir,
            "--output", str(out), "--skip-existing"]
    rc, first, _ = _bulk(capsys, *argv)
    n = first["counters"]["captioned"]
    assert rc == 0 and n >= 4
    # a kill after the caption files were finalised and before the manifest and the run record
    for f in first["files"]["manifest"] + [first["run_record"]]:
        os.remove(f)
    leftover = out / "captions" / "beam-temp-captions-0123456789abcdef"
    leftover.mkdir()
    (leftover / "0123").write_text("half a shard")
    rc, second, _ = _bulk(capsys, *argv)
    assert rc == 0 and second["counters"]["captioned"] == 0 and second["counters"]["skipped"] == n
    rows = _rows(str(out))
    assert len(rows) == n and len({(r["path"], r["sha256"]) for r in rows}) == n     # no row twice
    record = json.loads((out / "runs" / f"{first['run']}.json").read_text())
    assert record["recovered"] is True and record["counters"]["captioned"] == n
    assert not leftover.exists()
