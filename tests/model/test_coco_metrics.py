"""``model.coco_metrics`` around its Java children: a tokenizer that fails is reported with what it wrote
to stderr (which no longer reaches the terminal directly)."""
import logging
import os

import pytest

from captionbeam.model.coco_metrics import CocoMetricsError, ptb_tokenize


def test_a_failing_tokenizer_is_reported_with_its_stderr(tmp_path, monkeypatch, caplog, capfd):
    """A ``java`` that only complains (a broken runtime): the error names what it said; nothing of it was
    written to the terminal by the child itself."""
    caplog.set_level(logging.INFO, logger="captionbeam.model.coco_metrics")   # not DEBUG: captured
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine (test)' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    capfd.readouterr()
    with pytest.raises(CocoMetricsError) as e:
        ptb_tokenize({"a": ["a dog runs", "a dog"], "b": ["a cat"]})
    assert "does not line up" in str(e.value) and "could not create the Java Virtual Machine (test)" in str(e.value)
