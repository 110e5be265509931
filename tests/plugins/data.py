"""Session fixtures for the data area.

- ``sample_dir``: the sample captioning dataset (``captionbeam sample``), 60 images of 64x64:
  ``images/*.jpg``, ``captions.txt``, ``train.txt``/``dev.txt``/``test.txt``, ``scenes.jsonl``.
- ``sample_records``: ``sample_dir`` run through the real command line (``str()`` of it is the data dir), ``captionbeam features``
  (``mobilenet``, random seeded weights, 32 px: 1024-d pooled vectors) then ``captionbeam captions``
  (``--clean seed``, ``--min-count 2``, the three splits): training TFRecords for trainer tests.
- ``sample_records_conv``: the same with ``mobilenet-conv`` at 64 px: a 2x2x1024 spatial map per image,
  for attention models.

Both record fixtures return a :class:`SampleRecords` (paths plus the parsed ``stats.json`` and spec).
They are expensive (two Beam jobs each): request them only where real records are needed.

Helper: :func:`read_with_tfrecord_package` reads TFRecords with the ``tfrecord`` package in a child
process. The package registers its own copy of TensorFlow's ``example.proto`` in protobuf's default
descriptor pool, so it cannot be imported in a process that has imported TensorFlow (either order
fails with "duplicate symbol 'tensorflow.BytesList'"); a TF-free process is also what a PyTorch
consumer of the records looks like.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import pytest

SAMPLE_IMAGES = 60
SAMPLE_SIZE = 64
SAMPLE_SEED = 0
RECORDS_MIN_COUNT = 2


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """Path (str) of a sample dataset written once per test session. Read-only for tests."""
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    out = str(tmp_path_factory.mktemp("sample"))
    write_sample(SampleConfig(output=out, images=SAMPLE_IMAGES, seed=SAMPLE_SEED, size=SAMPLE_SIZE))
    return out


@dataclass
class SampleRecords:
    """Outputs of ``features`` + ``captions`` on the sample dataset. Read-only for tests."""
    sample_dir: str       # images/, captions.txt, train.txt, dev.txt, test.txt, scenes.jsonl
    features_dir: str     # features-*.tfrecord, features_spec.json
    data_dir: str         # vocab.txt, stats.json, features_spec.json, {train,dev,test}-*-of-*.tfrecord
    encoder: str
    feature_shape: List[int]
    stats: Dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        """The data directory (what ``captionbeam train --data`` takes): ``str(sample_records)`` and
        ``os.fspath(sample_records)`` both give it."""
        return self.data_dir

    def __fspath__(self) -> str:
        return self.data_dir

    @property
    def vocab_path(self) -> str:
        return os.path.join(self.data_dir, "vocab.txt")

    @property
    def captions_path(self) -> str:
        return os.path.join(self.sample_dir, "captions.txt")

    def records(self, split: str) -> List[str]:
        """The split's TFRecord files, sorted."""
        import glob
        return sorted(glob.glob(os.path.join(self.data_dir, f"{split}-[0-9]*-of-*.tfrecord")))

    def split_ids(self, split: str) -> List[str]:
        with open(os.path.join(self.sample_dir, f"{split}.txt"), encoding="utf-8") as f:
            return [line.strip()[:-4] for line in f if line.strip()]


def make_sample_records(sample_dir: str, workdir: str, encoder: str, image_size: int) -> SampleRecords:
    """Run the real CLI: features, then captions joined with them."""
    from captionbeam.launch.cli import main as cli
    features_dir = os.path.join(workdir, "features")
    data_dir = os.path.join(workdir, "data")
    rc = cli(["features", "--images", os.path.join(sample_dir, "images", "*.jpg"), "--output", features_dir,
              "--encoder", encoder, "--weights", "none", "--image-size", str(image_size), "--batch-size", "16",
              "--runner=DirectRunner"])
    assert rc == 0, f"captionbeam features failed with {rc}"
    splits = []
    for name in ("train", "dev", "test"):
        splits += ["--split", f"{name}={os.path.join(sample_dir, name + '.txt')}"]
    rc = cli(["captions", "--captions", os.path.join(sample_dir, "captions.txt"), *splits,
              "--features", features_dir, "--output", data_dir, "--min-count", str(RECORDS_MIN_COUNT),
              "--runner=DirectRunner"])
    assert rc == 0, f"captionbeam captions failed with {rc}"
    with open(os.path.join(data_dir, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    with open(os.path.join(data_dir, "features_spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    return SampleRecords(sample_dir, features_dir, data_dir, encoder, list(spec["feature_shape"]), stats)


@pytest.fixture(scope="session")
def sample_records(sample_dir, tmp_path_factory) -> SampleRecords:
    """Training records of the sample dataset with 1024-d pooled features (mobilenet, 32 px, random weights)."""
    return make_sample_records(sample_dir, str(tmp_path_factory.mktemp("sample_records")), "mobilenet", 32)


@pytest.fixture(scope="session")
def sample_records_conv(sample_dir, tmp_path_factory) -> SampleRecords:
    """Training records with a spatial map per image (mobilenet-conv, 64 px, random weights): 2x2x1024."""
    return make_sample_records(sample_dir, str(tmp_path_factory.mktemp("sample_records_conv")), "mobilenet-conv", 64)


_TFRECORD_READER = r"""
import json, sys
from tfrecord.reader import tfrecord_loader
req = json.load(sys.stdin)
rows = []
for path in req["paths"]:
    for ex in tfrecord_loader(path, None, req["description"], compression_type=req["compression"]):
        row = {}
        for k, v in ex.items():
            if req["description"][k] == "byte":
                v = v if isinstance(v, bytes) else v.tobytes()
                row[k] = v.decode("utf-8")
            else:
                row[k] = v.tolist()
        rows.append(row)
json.dump(rows, sys.stdout)
"""


def read_with_tfrecord_package(paths: Sequence[str], description: Dict[str, str],
                               compression: Optional[str] = None) -> List[Dict[str, object]]:
    """Records of local TFRecord files read by ``tfrecord.reader.tfrecord_loader`` in a child process
    without TensorFlow. ``description`` maps feature names to ``byte`` (returned as str, UTF-8),
    ``int`` or ``float`` (returned as lists). ``compression``: None or ``"gzip"``."""
    request = json.dumps({"paths": list(paths), "description": description, "compression": compression})
    proc = subprocess.run([sys.executable, "-c", _TFRECORD_READER], input=request, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"tfrecord package failed to read {list(paths)}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
