"""benchmarks/gpu.sh in its CPU dry mode: every section runs and writes its JSON (no GPU needed).

The figures themselves come from a GPU run (README, "GPU"); this checks that the prepared script works
end to end before a device is lent, with the project's real encoders, models and image loader."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), str(out), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("env", "features", "training", "decode_limit", "summary"):
        assert (out / f"{name}.json").is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    features = summary["features"]
    assert {(r["encoder"], r["policy"]) for r in features} == {
        (e, p) for e in ("vgg16", "mobilenet") for p in ("float32", "mixed_bfloat16")}
    assert all(r["images_per_s"] > 0 for r in features), features
    from captionbeam.model.config import ARCHITECTURES
    rows = summary["training"]["rows"]
    assert {r["arch"] for r in rows} == set(ARCHITECTURES)
    assert {r["jit_compile"] for r in rows} == {False, True}
    assert all(r.get("tokens_per_s", 0) > 0 for r in rows), [r for r in rows if "error" in r]
    limit = summary["decode_limit"]
    assert limit["decode_images_per_s_per_core"] > 0
    assert limit["vgg16_decode_cores_needed"] > 0 and limit["mobilenet_decode_cores_needed"] > 0


def test_gpu_script_bad_section_fails_naming_the_flag(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), str(tmp_path),
                           "--sections", "features,gpus"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--sections" in proc.stderr and "gpus" in proc.stderr
