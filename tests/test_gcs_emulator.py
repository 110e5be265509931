"""The emulator fixture and Beam's gs:// filesystem really talk to each other."""
import apache_beam as beam

from pipelines import io
from pipelines.options import pipeline_options


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
