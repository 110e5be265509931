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

A failure names the step, and carries that command's stdout and stderr tails and the Prism job server's
log tail (the one failure in five runs before this was diagnosed from a leftover job server log: Prism
failed the features job with its own "nothing in progress and no refreshes with non zero pending
elements" check, an engine bug). A Beam step that Prism stops that way, and only that way, is run again
once, as its message tells a user to; any other failure fails the test at once.
"""
import contextlib
import glob
import json
import os
import subprocess
import sys

import pytest

from captionbeam.launch.engine_failures import PRISM_STUCK
from tests.plugins.engines import need_engine
from tests.plugins.journeys import ENCODER, FIRST, LANDED, SIZE, TRAIN_FLAGS, bulk_rows, json_of, run_cli, split_flags
from tests.plugins.progress import assert_progress_lines, progress_messages_in

pytestmark = pytest.mark.slow

ENGINE = "prism"
BROKEN = "broken.jpg"   # a photo that cannot be decoded, among bulk's inputs: one dead letter, never two
MATCHED = FIRST + 1
PROCESS_TIMEOUT_S = 600


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


class Journey:
    """Runs the journey's commands and keeps the last one's output, so that any failure (an assertion, an
    exception, a timeout) reads with the step, its stdout and stderr tails and the job server's log tail."""

    def __init__(self, capsys, server):
        self.capsys, self.server = capsys, server
        self.step, self.out, self.err = "start", "", ""

    def _record(self, argv, rc, out, err):
        self.step, self.out, self.err = f"captionbeam {' '.join(argv)} -> exit {rc}", out, err
        return rc, out, err

    def run(self, *argv):
        """In this process: (exit code, stdout, stderr)."""
        return self._record(argv, *run_cli(self.capsys, *argv))

    def process(self, *argv):
        """As its own process, as a user runs it: (exit code, stdout, stderr); a timeout fails the step with
        what the process had written."""
        try:
            proc = subprocess.run([sys.executable, "-m", "captionbeam.launch.cli", *argv], capture_output=True,
                                  text=True, timeout=PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            self._record(argv, "timeout", _text(e.stdout), _text(e.stderr))
            raise AssertionError(f"no exit within {PROCESS_TIMEOUT_S}s") from None
        return self._record(argv, proc.returncode, proc.stdout, proc.stderr)

    def beam_step(self, run, *argv):
        """A Beam command (``run``: :meth:`run` or :meth:`process`) that must exit 0; one more run when
        Prism stopped it with its own stuck-job check (an engine bug), as its message tells a user:
        (stdout, stderr, whether it ran twice)."""
        rc, out, err = run(*argv)
        retried = rc != 0 and PRISM_STUCK in err
        if retried:
            sys.__stderr__.write(f"\n{self.step}: Prism stopped the job as stuck; running it again once\n")
            again = [*argv, "--overwrite"] if argv[0] in ("features", "captions") else argv  # as the hint says
            rc, out, err = run(*again)
        assert rc == 0, "the command failed"
        return out, err, retried

    def ok(self, *argv):
        rc, out, _ = self.run(*argv)
        assert rc == 0, "the command failed"
        return out

    @contextlib.contextmanager
    def explained(self):
        try:
            yield self
        except Exception as e:
            try:
                log = self.server.log()[-3000:]
            except OSError as read_error:
                log = f"(unreadable: {read_error})"
            raise AssertionError(f"{type(e).__name__}: {e}\nstep: {self.step}\n--- its stdout (tail) ---\n"
                                 f"{self.out[-2000:]}\n--- its stderr (tail) ---\n{self.err[-5000:]}\n"
                                 f"--- {self.server.engine} job server log (tail) ---\n{log}") from e


def run_record(output, run):
    with open(os.path.join(output, "runs", f"{run}.json")) as f:
        return json.load(f)


def test_journey_with_its_beam_stages_on_prism_and_progress_lines(journey_sample, engine_servers, tmp_path, capsys):
    need_engine(ENGINE)
    server = engine_servers(ENGINE)
    journey = Journey(capsys, server)
    with journey.explained():
        walk(journey, server.pipeline_args(), journey_sample, tmp_path)


def walk(journey, engine, journey_sample, tmp_path):
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.model.records import FeaturesSpec
    from captionbeam.pipelines.deadletter import read_dead_letters
    from captionbeam.pipelines.features import read_feature_ids
    s, landing = journey_sample / "sample", journey_sample / "landing"
    images = sorted(glob.glob(str(s / "images" / "*.jpg")))
    landed = sorted(glob.glob(str(landing / "*.jpg")))
    assert (len(images), len(landed)) == (FIRST, LANDED)
    F, D, M, B, B2, R = (str(tmp_path / n) for n in ("features", "data", "model", "bulk", "bulk-v2", "root"))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / BROKEN).write_bytes(b"\xff\xd8 not a whole jpeg")

    # 1. features on Prism: one record per image
    journey.beam_step(journey.run, "features", "--images", str(s / "images" / "*.jpg"), "--output", F,
                      "--encoder", ENCODER, "--weights", "none", "--image-size", SIZE, "--batch-size", "16", *engine)
    spec = FeaturesSpec.load(F)
    assert (spec.count, spec.dead_letters, spec.encoder_spec.name) == (FIRST, 0, ENCODER)
    assert sorted(r["path"] for r in read_feature_ids(F)) == images

    # 2. captions on Prism: every split's images, a vocabulary
    journey.beam_step(journey.run, "captions", "--captions", str(s / "captions.txt"), "--format", "flickr8k",
                      *split_flags(s), "--features", F, "--output", D, "--min-count", "1", *engine)
    stats = json.loads(open(os.path.join(D, "stats.json")).read())
    assert sum(v["images"] for v in stats["splits"].values()) == FIRST and stats["vocab_size"] > 4

    # 3. train (no Beam): a tiny model, one epoch
    journey.ok("train", "--data", D, "--model-dir", M, *TRAIN_FLAGS, "--epochs", "1")

    # 4. bulk on Prism, as the user's own process: one row per photo, one dead letter for the broken one
    #    (exit 0: a finished run that accounts for it); on stderr its total, then done/total, %, rate, ETA
    #    (the last 49/49: 48 rows and a dead letter), counted by its LOOPBACK workers into the progress files
    bulk = ["bulk", "--images", str(s / "images" / "*.jpg"), str(tmp_path / "damaged" / "*.jpg"), "--model-dir", M,
            "--output", B, "--json", *engine]
    out, err, retried = journey.beam_step(journey.process, *bulk)
    first = json_of(out)
    rows = bulk_rows(B)
    assert sorted(r["path"] for r in rows) == images and all(r["caption"].strip() for r in rows)
    c = first["counters"]
    if retried:   # the stopped run's finalised rows are skipped by the second, never captioned twice
        assert (c["matched"], c["captioned"] + c["skipped"], c["failed"]) == (MATCHED, FIRST, 1), first
    else:
        assert c == {"matched": MATCHED, "captioned": FIRST, "skipped": 0, "failed": 1}, first
    assert [os.path.basename(d.path) for d in read_dead_letters(B)] == [BROKEN]
    version_1 = {r["model_version"] for r in rows}
    assert len(version_1) == 1
    assert_progress_lines(progress_messages_in(err), "bulk", MATCHED)

    # 5. the same bulk command again: exit 0, every photo skipped, no row and no dead letter added
    out, _, _ = journey.beam_step(journey.run, *bulk)
    again = json_of(out)
    assert again["counters"] == {"matched": MATCHED, "captioned": 0, "skipped": FIRST, "failed": 1}, again
    assert again["already_filed"] == 1 and len(read_dead_letters(B)) == 1
    assert len(bulk_rows(B)) == FIRST and run_record(B, again["run"])["counters"]["skipped"] == FIRST

    # 6. a model root from what the user has; 12 images land with their captions; retrain on Prism
    init = json_of(journey.ok("retrain", "--root", R, "--init", "--model-dir", M, "--features", F, "--data", D,
                              "--captions", str(s / "captions.txt"), *split_flags(s), "--json", *engine))
    assert init["status"] == "promoted"
    attempt = json_of(journey.ok("retrain", "--root", R, "--images", str(landing / "*.jpg"),
                                 "--captions", str(journey_sample / "landing-captions.txt"), "--epochs", "1",
                                 "--batch-size", "16", "--tolerance", "1.0", "--min-drop", "100", "--json", *engine))
    root = ModelRoot(R)
    assert (attempt["status"], attempt["new_images"], attempt["featurised"]) == ("promoted", LANDED, LANDED), attempt
    assert root.current() == attempt["version"] == "v002"
    assert len(read_feature_ids(root.path("features"))) == FIRST + LANDED

    # 7. bulk on Prism with the new current model: the old and the landed images, once each
    out, _, _ = journey.beam_step(journey.run, "bulk", "--images", str(s / "images" / "*.jpg"), str(landing / "*.jpg"),
                                  "--model-dir", root.current_dir(), "--output", B2, "--json", *engine)
    rows = bulk_rows(B2)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == FIRST + LANDED and set(landed) <= set(paths), json_of(out)
    assert all(r["caption"].strip() for r in rows if r["path"] in landed)
    versions = {r["model_version"] for r in rows}
    assert len(versions) == 1 and versions != version_1
