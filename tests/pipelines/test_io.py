"""The emulator fixture and Beam's gs:// filesystem really talk to each other."""
import os

import apache_beam as beam

from captionbeam.pipelines import io
from captionbeam.pipelines.options import pipeline_options


def test_beam_reads_and_writes_emulated_bucket_in_worker_processes(gcs_bucket):
    gcs_bucket.upload_bytes("in/a.txt", b"alpha\nbeta\n")
    gcs_bucket.upload_bytes("in/b.txt", b"gamma\n")
    opts = pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with beam.Pipeline(options=opts) as p:
        (p | beam.io.ReadFromText(f"{gcs_bucket.url}/in/*.txt")
           | beam.Map(str.upper)
           | beam.io.WriteToText(f"{gcs_bucket.url}/out/lines", num_shards=1))
    outputs = io.match([f"{gcs_bucket.url}/out/*"])
    assert outputs == [f"{gcs_bucket.url}/out/lines-00000-of-00001"]
    assert sorted(io.read_text(outputs[0]).split()) == ["ALPHA", "BETA", "GAMMA"]
    assert gcs_bucket.keys("out/") == ["out/lines-00000-of-00001"]


def test_importing_pipelines_leaves_beam_credentials_alone_until_a_pipeline_is_built():
    """No import-time side effect: importing every pipelines module (with an emulator configured) leaves
    Beam's credential cache untouched; building pipeline options, or a gs:// helper, sets it."""
    import subprocess
    import sys
    code = (
        "import importlib, pkgutil, captionbeam.pipelines as pipelines\n"
        "from apache_beam.internal.gcp import auth\n"
        "for m in pkgutil.walk_packages(pipelines.__path__, 'captionbeam.pipelines.'):\n"
        "    if m.name != 'captionbeam.pipelines.worker_plugin': importlib.import_module(m.name)\n"
        "before = auth._Credentials._credentials_init\n"
        "from captionbeam.pipelines.options import pipeline_options\n"
        "pipeline_options([])\n"
        "print(before, auth._Credentials._credentials_init, auth._Credentials._credentials)\n")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "None"]
