"""The journeys' data and helpers (tests/journeys/).

- ``journey_sample``: 48 procedurally drawn sample images with captions and splits (``sample/``), and 12 more
  (ids 48..59) in ``landing/`` with their captions in ``landing-captions.txt``: the photos that land later.
- ``run_cli`` / ``ok`` / ``json_of`` / ``bulk_rows``: one in-process ``captionbeam`` call and what the user
  reads of its output.
"""
import glob
import json
import os
import shutil

import pytest

ENCODER, SIZE = "mobilenet", "32"
TRAIN_FLAGS = ["--arch", "merge", "--units", "32", "--embedding-dim", "32", "--batch-size", "16",
               "--learning-rate", "0.005", "--checkpoint-every", "1000", "--early-stopping-patience", "0"]
FIRST, LANDED = 48, 12


def run_cli(capsys, *argv):
    """``captionbeam ARGV`` in this process -> (exit code, stdout, stderr); earlier output is dropped first."""
    from captionbeam.launch.cli import main as cli
    capsys.readouterr()
    rc = cli(["--log-level", "WARNING", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def ok(capsys, *argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, f"captionbeam {' '.join(argv[:1])} exited {rc}:\n{out[-2000:]}\n{err[-3000:]}"
    return out


def json_of(out):
    return json.loads(out[out.index("{"):])


def bulk_rows(output):
    rows = []
    for f in sorted(glob.glob(os.path.join(output, "captions", "captions-*"))):
        with open(f) as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def split_flags(sample_dir):
    return [a for name in ("train", "dev", "test") for a in ("--split", f"{name}={sample_dir / (name + '.txt')}")]


@pytest.fixture(scope="session")
def journey_sample(tmp_path_factory):
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    root = tmp_path_factory.mktemp("journey")
    write_sample(SampleConfig(output=str(root / "sample"), images=FIRST, seed=0, size=32))
    write_sample(SampleConfig(output=str(root / "more"), images=FIRST + LANDED, seed=0, size=32))
    landing = root / "landing"
    landing.mkdir()
    for i in range(FIRST, FIRST + LANDED):
        name = f"sample_{i:05d}.jpg"
        shutil.copy(root / "more" / "images" / name, landing / name)
    lines = [line for line in (root / "more" / "captions.txt").read_text().splitlines()
             if int(line.split(".jpg#")[0].rsplit("_", 1)[1]) >= FIRST]
    (root / "landing-captions.txt").write_text("\n".join(lines) + "\n")
    return root
