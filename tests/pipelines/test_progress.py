"""Progress you can watch: the pure formatter, the side channel (workers' count files summed by the
job's own process), a real DirectRunner ``features`` job that logs its total and a done/total line, and
``train``'s first progress line before its first epoch ends."""
import json
import logging
import re

import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.pipelines import progress
from tests.pipelines.test_images import make_corrupt, make_rgb_jpeg

LINE_RE = re.compile(r"^(\w+): ([\d,]+)/([\d,]+) images \((\d+)%\), ([\d,.]+) images/s, ETA (\S+)$")


def test_format_progress_with_and_without_a_total():
    assert progress.format_total("features", 1200) == "features: 1,200 images to process"
    assert progress.format_progress("features", 120, 600, 10.0) == \
        "features: 120/600 images (20%), 12.0 images/s, ETA 0:00:40"
    assert progress.format_progress("bulk", 600, 600, 30.0) == "bulk: 600/600 images (100%), 20.0 images/s, ETA 0:00:00"
    assert progress.format_progress("bulk", 0, 600, 3.0) == "bulk: 0/600 images (0%), 0.0 images/s, ETA ?"
    assert progress.format_progress("captions", 90, None, 3.0, unit="captions") == "captions: 90 captions, 30.0 captions/s"
    # more done than the listing said (a file appeared meanwhile): capped, never over 100%
    assert progress.format_progress("pack", 7, 5, 1.0) == "pack: 5/5 images (100%), 7.0 images/s, ETA 0:00:00"
    assert progress.format_progress("pack", 0, 0, 0.0) == "pack: 0/0 images (100%), 0.0 images/s, ETA 0:00:00"
    assert progress.format_duration(3725) == "1:02:05"


def test_reporter_sums_the_workers_files_and_keeps_a_half_written_ones_last_value(tmp_path):
    folder = tmp_path / "out" / progress.PROGRESS_FOLDER / "run1"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({"done": 3}))
    (folder / "b.json").write_text(json.dumps({"done": 4}))
    last = {}
    assert progress.read_done(str(folder), last) == 7
    (folder / "b.json").write_text('{"do')                        # being rewritten
    assert progress.read_done(str(folder), last) == 7
    assert progress.read_done(str(tmp_path / "missing")) == 0
    (folder / "b.json").write_text(json.dumps({"done": 4}))

    lines = []
    with progress.ProgressReporter("features", str(folder), 10, interval_s=3600, emit=lines.append):
        pass
    assert lines[0] == "features: 10 images to process"
    assert LINE_RE.match(lines[-1]).group(2, 3, 4) == ("7", "10", "70")
    assert not (tmp_path / "out" / progress.PROGRESS_FOLDER).exists()   # the job's output keeps no trace


def test_count_done_sums_each_named_kind_apart(tmp_path):
    """A real DirectRunner pipeline: a mapping of parts counts each kind into the progress files; the
    reporter keeps the final sums per kind (bulk's exact accounting where a runner loses metrics)."""
    import apache_beam as beam
    from captionbeam.pipelines.options import new_pipeline
    folder = str(tmp_path / "out" / progress.PROGRESS_FOLDER / "run")
    p = new_pipeline(["--runner=DirectRunner"])
    progress.count_done({"captioned": p | "Rows" >> beam.Create(list(range(5))),
                         "skipped": p | "Skipped" >> beam.Create(["a", "b"]),
                         "failed": p | "Failed" >> beam.Create([{"path": "x"}])}, folder)
    lines = []
    with progress.ProgressReporter("bulk", folder, 8, interval_s=3600, emit=lines.append) as reporter:
        p.run().wait_until_finish()
    assert reporter.counts == {"captioned": 5, "skipped": 2, "failed": 1}
    assert LINE_RE.match(lines[-1]).group(2, 3, 4) == ("8", "8", "100")


def test_reporter_logs_while_the_job_runs(tmp_path):
    """The periodic line comes from the reporter's own thread, while the block is still running."""
    import threading
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "w.json").write_text(json.dumps({"done": 2}))
    seen = threading.Event()
    lines = []

    def emit(line):
        lines.append(line)
        if len(lines) >= 2:
            seen.set()

    with progress.ProgressReporter("bulk", str(folder), 4, interval_s=0.01, emit=emit):
        assert seen.wait(60)                           # a line arrived before the block ended
    assert LINE_RE.match(lines[1]).group(2, 3, 4) == ("2", "4", "50")


def test_a_real_directrunner_features_job_logs_its_total_and_done_over_total(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"img_{i}.jpg").write_bytes(make_rgb_jpeg(i, (40, 36)))
    (images / "bad.jpg").write_bytes(make_corrupt())
    with caplog.at_level(logging.INFO, logger="captionbeam.progress"):
        assert cli(["features", "--images", str(images / "*.jpg"), "--output", str(tmp_path / "f"), "--encoder",
                    "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "4",
                    "--runner=DirectRunner"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "captionbeam.progress"]
    assert lines[0] == "features: 6 images to process"
    done = [LINE_RE.match(line) for line in lines[1:]]
    assert done and all(done), lines
    assert done[-1].group(1, 2, 3, 4) == ("features", "6", "6", "100")     # 5 encoded + 1 dead letter
    assert not (tmp_path / "f" / progress.PROGRESS_FOLDER).exists()


def test_training_progress_is_due_at_the_first_step_every_n_the_last_and_after_10_s_of_silence():
    from captionbeam.model.progress import progress_due
    assert [s for s in range(1, 13) if progress_due(s, 0, 12, 5, since_last_s=0.5)] == [1, 5, 10, 12]
    assert [s for s in range(8, 13) if progress_due(s, 7, 12, 5, since_last_s=0.5)] == [8, 10, 12]   # resumed
    assert progress_due(3, 0, 12, 5, since_last_s=10.0)


def test_train_logs_a_progress_line_before_its_first_epoch_ends(synthetic_data, tmp_path, caplog):
    """--log-every larger than the run: the first step's line still comes first, before "epoch 1/2 done"."""
    with caplog.at_level(logging.INFO, logger="captionbeam.train"):
        assert cli(["train", "--data", synthetic_data, "--model-dir", str(tmp_path / "m"), "--units", "16",
                    "--embedding-dim", "16", "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "16",
                    "--log-every", "1000", "--strategy", "one_device"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "captionbeam.train"]
    first_step = next(i for i, line in enumerate(lines) if "(global 1/8) loss" in line)
    first_epoch_done = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2 done"))
    assert first_step < first_epoch_done
    assert "ETA" in lines[first_step]


def test_counts_are_live_while_the_producing_stage_runs(tmp_path):
    """Each part is counted in the stage that produces it: while a DirectRunner job still works through its
    elements, the progress files already hold the ones before (a count behind a stage boundary, such as a
    Flatten of the parts, only moves once the whole stage is done: 'features: 0/8,091' for minutes)."""
    import apache_beam as beam
    from captionbeam.pipelines.options import new_pipeline
    folder = str(tmp_path / "out" / progress.PROGRESS_FOLDER / "run")
    seen = tmp_path / "seen.txt"

    def work(x):
        with open(seen, "a") as f:       # what the progress files said when this element was being worked on
            f.write(f"{progress.read_done(folder)}\n")
        return x

    p = new_pipeline(["--runner=DirectRunner"])
    done = p | "Items" >> beam.Create(list(range(12))) | "Work" >> beam.Map(work)
    failed = p | "Failed" >> beam.Create([{"path": "x"}])
    progress.count_done((done, failed), folder)
    p.run().wait_until_finish()
    counts = [int(n) for n in seen.read_text().split()]
    assert len(counts) == 12 and max(counts) >= 1, counts
