"""Session fixtures for the image-shards area.

- ``gcs_packed``: the ``sample_dir`` images packed once by the real ``captionbeam pack`` job onto the
  GCS emulator (a session bucket), with captions, in shards of ``SHARD_SIZE``:
  tar from the local images, gzip'd TFRecord from a copy of the images uploaded to the bucket.
  Read-only for tests.
"""
import os
from dataclasses import dataclass

import pytest

SHARD_SIZE = 16
DIRECT = ["--runner=DirectRunner"]


@dataclass(frozen=True)
class Packed:
    bucket: object  # tests.plugins.gcs.Bucket
    images: str  # local glob of the loose images
    gcs_images: str  # gs:// glob of the same images
    captions: str  # local captions file
    tar: str  # gs:// output directory of the tar pack
    tfrecord: str  # gs:// output directory of the TFRecord pack (gzip)


@pytest.fixture(scope="session")
def gcs_packed(gcs_server, sample_dir) -> Packed:
    from captionbeam.launch.cli import main
    from tests.plugins.gcs import Bucket
    name = f"shards-{os.getpid()}"
    gcs_server.create_bucket(name)
    bucket = Bucket(gcs_server, name)
    images_dir = os.path.join(sample_dir, "images")
    gcs_images = bucket.upload_dir(images_dir, "loose") + "/*.jpg"
    captions = os.path.join(sample_dir, "captions.txt")
    packed = Packed(bucket, os.path.join(images_dir, "*.jpg"), gcs_images, captions,
                    f"{bucket.url}/tar", f"{bucket.url}/tfrecord")
    common = ["--shard-size", str(SHARD_SIZE), "--captions", captions] + DIRECT
    assert main(["--log-level", "WARNING", "pack", "--images", packed.images, "--output", packed.tar,
                 "--format", "tar"] + common) == 0
    assert main(["--log-level", "WARNING", "pack", "--images", gcs_images, "--output", packed.tfrecord,
                 "--format", "tfrecord", "--compress"] + common) == 0
    return packed
