"""The Python API (captionbeam/api.py): the example of docs/api.md runs as written (on the test suite's
model and images), an export loads like a model dir, and run_job refuses what no command takes."""
import glob
import os
import re
import subprocess
import sys

import pytest

import captionbeam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example() -> str:
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_example_runs(image_model_dir, sample_dir, tmp_path):
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:2]
    code = _example()
    for name, value in (("MODEL", image_model_dir["merge"]), ("IMAGES", images), ("OUT", str(tmp_path / "bulk"))):
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, name
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{images[0]} -> ") and len(lines[0]) > len(images[0]) + 5
    assert lines[1].startswith("<bytes #1> -> ") and lines[2].startswith("<bytes #2> -> NotAnImageError: ")
    assert re.match(r"run \S+: model \S+ \(mobilenet\)", lines[3])
    assert "matched 2  captioned 2  skipped 0  failed 0  (balanced)" in lines[4]
    assert len(glob.glob(str(tmp_path / "bulk" / "captions" / "captions-*.jsonl"))) == 1


def test_an_export_loads_like_a_model_dir_and_run_job_refuses_a_stranger(exported_model, image_model_dir,
                                                                        sample_dir, tmp_path):
    data = open(sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[0], "rb").read()
    exported = captionbeam.Captioner.load(str(exported_model))
    got = exported.caption([data, b""])
    assert exported.exported and got[0].ok and got[0].caption and got[0].log_prob <= 0
    assert not got[1].ok and got[1].caption is None and got[1].source == "<bytes #1>"
    with pytest.raises(ValueError, match="beam_size=5.*baked in"):
        captionbeam.Captioner.load(str(exported_model), beam_size=5)
    with pytest.raises(TypeError, match="no captionbeam command runs a dict"):
        captionbeam.run_job({"images": []})
    config = captionbeam.job_config("export", model_dir=image_model_dir["merge"], output=str(tmp_path / "e"))
    assert type(config).__name__ == "ExportConfig" and config.beam_size == 1 and config.weights == "best"
