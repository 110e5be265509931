"""Session fixtures for the image-shards area.

- ``packed_shards``: the ``sample_dir`` images packed once (locally, by the real ``captionbeam pack``
  job, with captions) into tar shards and TFRecord shards of 16 images:
  ``{"tar": dir, "tfrecord": dir, "images": glob of the loose images, "captions": captions file}``.
"""
import os

import pytest

SHARD_SIZE = 16
DIRECT = ["--runner=DirectRunner"]


@pytest.fixture(scope="session")
def packed_shards(sample_dir, tmp_path_factory):
    from launch.cli import main
    root = tmp_path_factory.mktemp("packed")
    images = os.path.join(sample_dir, "images", "*.jpg")
    captions = os.path.join(sample_dir, "captions.txt")
    out = {"images": images, "captions": captions}
    for fmt in ("tar", "tfrecord"):
        out[fmt] = str(root / fmt)
        rc = main(["--log-level", "WARNING", "pack", "--images", images, "--output", out[fmt], "--format", fmt,
                   "--shard-size", str(SHARD_SIZE), "--captions", captions] + DIRECT)
        assert rc == 0
    return out
