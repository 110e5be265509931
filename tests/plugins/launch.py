"""Session fixtures for launch/: one small ``captionbeam run`` shared by the run, report and retrain tests.

``small_run``: ``captionbeam run`` end to end on a 48-image sample dataset at 32 px (thumbnail encoder,
small merge model, 8 epochs), in-process through ``launch.cli.main``; returns a :class:`SmallRun`
(workdir, exit status, what it printed). Read-only for tests.
"""
import contextlib
import io
import os
from dataclasses import dataclass

import pytest

SMALL_RUN_FLAGS = ["--sample-images", "48", "--sample-size", "32", "--image-size", "32", "--epochs", "8",
                   "--batch-size", "16", "--learning-rate", "0.005", "--caption-images", "3", "--min-count", "1",
                   "--train-arg=--units=64", "--train-arg=--embedding-dim=64", "--train-arg=--checkpoint-every=1000",
                   "--train-arg=--early-stopping-patience=0", "--eval-arg=--coco-metrics=bleu,rouge,cider"]


@dataclass
class SmallRun:
    workdir: str
    rc: int
    stdout: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SmallRun:
    from captionbeam.launch.cli import main
    workdir = str(tmp_path_factory.mktemp("run") / "work")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["run", "--workdir", workdir, *SMALL_RUN_FLAGS])
    return SmallRun(workdir=workdir, rc=rc, stdout=out.getvalue())
