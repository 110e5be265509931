"""The bulk job's anti-join against its manifest carries keys, not image bytes (issue 21.5): checked on
the real pipeline (in-process DirectRunner, the tiny trained model) by looking at every element that
enters the join, and by what is read again afterwards."""
import dataclasses
import glob
import io
import os
import shutil
import tarfile

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from captionbeam.launch.cli import main as cli_main
from captionbeam.pipelines.bulk import BulkCaption, BulkConfig, ModelInfo, bulk_counters
from captionbeam.pipelines.counters import NAMESPACE, query_counters
from captionbeam.pipelines.io import sha256_hex
from captionbeam.pipelines.options import new_pipeline

JOIN = "SkipExisting/CoGroupByPath"


def _carries_bytes(value) -> bool:
    """Whether an element holds raw bytes anywhere (tuples, lists, dicts, dataclasses, objects)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, (str, int, float, bool, type(None))):
        return False
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_carries_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(_carries_bytes(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return any(_carries_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return any(_carries_bytes(v) for v in getattr(value, "__dict__", {}).values())


def _join_inputs(pipeline):
    """The PCollections that enter the skip-existing CoGroupByKey."""
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            if node.full_label.endswith(JOIN):
                found.extend(node.main_inputs.values())

    pipeline.visit(Visitor())
    assert found, f"no {JOIN} in the pipeline"
    return found


def test_the_join_carries_no_image_bytes_and_only_what_is_new_is_read_again(tmp_path, sample_dir, image_model_dir):
    from captionbeam.model.captioner import Captioner
    model_dir = image_model_dir["merge"]
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in images[:3]:
        shutil.copy(p, loose)
    out = str(tmp_path / "out")
    assert cli_main(["bulk", "--images", str(loose / "*.jpg"), "--model-dir", model_dir, "--output", out]) == 0
    for p in images[3:5]:                       # two new loose files, and a shard of two new members
        shutil.copy(p, loose)
    with tarfile.open(tmp_path / "new.tar", "w") as tar:
        for p in images[5:7]:
            tar.add(p, arcname=os.path.basename(p))
    name = lambda p: os.path.basename(p)[:-4]  # noqa: E731

    cap = Captioner.load(model_dir)
    model = ModelInfo(model_version=cap.model_version, encoder=cap.encoder_name, image_size=int(cap.image_size[0]))
    config = BulkConfig(images=(str(loose / "*.jpg"), str(tmp_path / "*.tar")), output=out, model_dir=model_dir,
                        batch_size=4)
    p = new_pipeline(["--runner=DirectRunner"])
    outputs = p | "BulkCaption" >> BulkCaption(config, model)
    for i, pcoll in enumerate(_join_inputs(p)):
        with_bytes = (pcoll | f"WithBytes{i}" >> beam.Filter(_carries_bytes)
                      | f"Short{i}" >> beam.Map(lambda e: repr(e)[:200]))
        assert_that(with_bytes, equal_to([]), label=f"join_input_{i}")
    assert_that(outputs["rows"] | "Rows" >> beam.Map(lambda r: (r.image_id, r.sha256)),
                equal_to([(name(f), sha256_hex(open(f, "rb").read())) for f in images[3:7]]), label="rows")
    assert_that(outputs["skipped"] | "Skipped" >> beam.Map(lambda k: k.image_id),
                equal_to([name(f) for f in images[:3]]), label="skipped")
    result = p.run()
    result.wait_until_finish()
    assert bulk_counters(result) == {"matched": 7, "captioned": 4, "skipped": 3, "failed": 0}
    assert query_counters(result, NAMESPACE).get("shards_reread") == 1
