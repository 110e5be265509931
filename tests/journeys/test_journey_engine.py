"""The journey's Beam stages on a real engine: Prism (the cheapest of the three to start; one job server
for the session, tests/plugins/engines.py), the jobs reaching it with ``--runner=PortableRunner
--job_endpoint=... --environment_type=LOOPBACK`` as the ``prism`` profile does once its server is up.

features -> captions (on Prism) -> train (tiny, no Beam) -> bulk (on Prism, as a user's own
``captionbeam`` process, whose stderr is read as the user reads it; a broken photo among its inputs) ->
the same bulk again (no row and no dead letter added) -> 12 new images land -> retrain (its features and
captions stages on Prism) -> bulk with the new current model over the old and the new images. Each step
checks what a user checks: exit codes, counts, rows, no duplicates, the new images captioned; and the
bulk process printed its total, then done/total, percent, rate and ETA read from the progress files its
workers wrote (pipelines/progress.py) on a portable runner.

The engines come from ``make engines``: without them the tests skip, saying so (CI fetches them and fails
instead). The local and gs:// journeys (test_journey_local.py) walk the non-Beam steps too.
"""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from tests.plugins.engines import need_engine
from tests.plugins.journeys import (ENCODER, FIRST, LANDED, SIZE, TRAIN_FLAGS, bulk_rows, json_of, ok, run_cli,
                                    split_flags)

pytestmark = pytest.mark.slow

ENGINE = "prism"
PROGRESS_RE = re.compile(r"captionbeam\.progress: bulk: (\d+)/(\d+) images \((\d+)%\), ([\d.,]+) images/s, ETA (\S+)$")
BROKEN = "broken.jpg"   # a photo that cannot be decoded, among bulk's inputs: one dead letter, never two
MATCHED = FIRST + 1
TOTAL_LINE = f"captionbeam.progress: bulk: {MATCHED} images to process"


def cli_process(*argv):
    """``captionbeam ARGV`` as its own process, as a user runs it: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "captionbeam.launch.cli", *argv], capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def run_record(output, run):
    with open(os.path.join(output, "runs", f"{run}.json")) as f:
        return json.load(f)


def test_journey_with_its_beam_stages_on_prism_and_progress_lines(journey_sample, engine_servers, tmp_path, capsys):
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.model.records import FeaturesSpec
    from captionbeam.pipelines.deadletter import read_dead_letters
    from captionbeam.pipelines.features import read_feature_ids
    need_engine(ENGINE)
    engine = engine_servers(ENGINE).pipeline_args()
    s, landing = journey_sample / "sample", journey_sample / "landing"
    images = sorted(glob.glob(str(s / "images" / "*.jpg")))
    landed = sorted(glob.glob(str(landing / "*.jpg")))
    assert (len(images), len(landed)) == (FIRST, LANDED)
    F, D, M, B, B2, R = (str(tmp_path / n) for n in ("features", "data", "model", "bulk", "bulk-v2", "root"))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / BROKEN).write_bytes(b"\xff\xd8 not a whole jpeg")

    # 1. features on Prism: one record per image
    ok(capsys, "features", "--images", str(s / "images" / "*.jpg"), "--output", F, "--encoder", ENCODER,
       "--weights", "none", "--image-size", SIZE, "--batch-size", "16", *engine)
    spec = FeaturesSpec.load(F)
    assert (spec.count, spec.dead_letters, spec.encoder_spec.name) == (FIRST, 0, ENCODER)
    assert sorted(r["path"] for r in read_feature_ids(F)) == images

    # 2. captions on Prism: every split's images, a vocabulary
    ok(capsys, "captions", "--captions", str(s / "captions.txt"), "--format", "flickr8k", *split_flags(s),
       "--features", F, "--output", D, "--min-count", "1", *engine)
    stats = json.loads(open(os.path.join(D, "stats.json")).read())
    assert sum(v["images"] for v in stats["splits"].values()) == FIRST and stats["vocab_size"] > 4

    # 3. train (no Beam): a tiny model, one epoch
    ok(capsys, "train", "--data", D, "--model-dir", M, *TRAIN_FLAGS, "--epochs", "1")

    # 4. bulk on Prism, as the user's own process: one row per photo, one dead letter for the broken one
    #    (exit 0: a finished run that accounts for it); progress on stderr (see below)
    bulk = ["bulk", "--images", str(s / "images" / "*.jpg"), str(tmp_path / "damaged" / "*.jpg"), "--model-dir", M,
            "--output", B, "--json", *engine]
    rc, out, err = cli_process(*bulk)
    assert rc == 0, err[-3000:]
    first = json_of(out)
    rows = bulk_rows(B)
    assert sorted(r["path"] for r in rows) == images and all(r["caption"].strip() for r in rows)
    assert first["counters"] == {"matched": MATCHED, "captioned": FIRST, "skipped": 0, "failed": 1}, first
    assert [os.path.basename(d.path) for d in read_dead_letters(B)] == [BROKEN]
    version_1 = {r["model_version"] for r in rows}
    assert len(version_1) == 1
    assert_progress_lines(err)

    # 5. the same bulk command again: exit 0, every photo skipped, no row and no dead letter added
    rc, out, err = run_cli(capsys, *bulk)
    assert rc == 0, err[-3000:]
    again = json_of(out)
    assert again["counters"] == {"matched": MATCHED, "captioned": 0, "skipped": FIRST, "failed": 1}, again
    assert again["already_filed"] == 1 and len(read_dead_letters(B)) == 1
    assert len(bulk_rows(B)) == FIRST and run_record(B, again["run"])["counters"]["skipped"] == FIRST

    # 6. a model root from what the user has; 12 images land with their captions; retrain on Prism
    init = json_of(ok(capsys, "retrain", "--root", R, "--init", "--model-dir", M, "--features", F, "--data", D,
                      "--captions", str(s / "captions.txt"), *split_flags(s), "--json", *engine))
    assert init["status"] == "promoted"
    attempt = json_of(ok(capsys, "retrain", "--root", R, "--images", str(landing / "*.jpg"),
                         "--captions", str(journey_sample / "landing-captions.txt"), "--epochs", "1",
                         "--batch-size", "16", "--tolerance", "1.0", "--min-drop", "100", "--json", *engine))
    root = ModelRoot(R)
    assert (attempt["status"], attempt["new_images"], attempt["featurised"]) == ("promoted", LANDED, LANDED), attempt
    assert root.current() == attempt["version"] == "v002"
    assert len(read_feature_ids(root.path("features"))) == FIRST + LANDED

    # 7. bulk on Prism with the new current model: the old and the landed images, once each
    out = ok(capsys, "bulk", "--images", str(s / "images" / "*.jpg"), str(landing / "*.jpg"),
             "--model-dir", root.current_dir(), "--output", B2, "--json", *engine)
    rows = bulk_rows(B2)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == FIRST + LANDED and set(landed) <= set(paths), json_of(out)
    assert all(r["caption"].strip() for r in rows if r["path"] in landed)
    versions = {r["model_version"] for r in rows}
    assert len(versions) == 1 and versions != version_1


def assert_progress_lines(stderr):
    """The bulk process's stderr: its total first, then done/total (percent), rate and ETA lines, the
    last one 49/49 (100%: 48 rows and a dead letter) -- counted by the LOOPBACK workers into the progress
    files and read back by the submitting process while and after Prism ran the job."""
    lines = [line for line in stderr.splitlines() if "captionbeam.progress: " in line]
    assert lines and lines[0].endswith(TOTAL_LINE), stderr[-3000:]
    done = [PROGRESS_RE.search(line) for line in lines[1:]]
    assert done and all(done), lines
    counts = [int(m.group(1)) for m in done]
    assert counts == sorted(counts) and {int(m.group(2)) for m in done} == {MATCHED}, lines
    assert done[-1].group(1, 3) == (str(MATCHED), "100"), lines
    assert float(done[-1].group(4).replace(",", "")) > 0 and done[-1].group(5) == "0:00:00", lines
