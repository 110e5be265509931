"""A real GCS API on loopback: ``gcp-storage-emulator`` started once per test session.

Sets ``STORAGE_EMULATOR_HOST`` for this process and every process it starts (Beam workers), so
``google-cloud-storage`` and Beam's ``gs://`` filesystem both talk to it.
"""
import itertools
import os
import socket
from dataclasses import dataclass

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Bucket:
    client: object
    name: str

    @property
    def url(self) -> str:
        return f"gs://{self.name}"

    def upload_bytes(self, key: str, data: bytes) -> str:
        self.client.bucket(self.name).blob(key).upload_from_string(data)
        return f"gs://{self.name}/{key}"

    def upload_dir(self, local_dir: str, prefix: str) -> str:
        """Upload every file under ``local_dir`` to ``prefix``; returns ``gs://bucket/prefix``."""
        for root, _, files in os.walk(local_dir):
            for f in sorted(files):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    self.upload_bytes(f"{prefix.strip('/')}/{rel}", fh.read())
        return f"gs://{self.name}/{prefix.strip('/')}"

    def keys(self, prefix: str = ""):
        return sorted(b.name for b in self.client.list_blobs(self.name, prefix=prefix))

    def read(self, key: str) -> bytes:
        return self.client.bucket(self.name).blob(key).download_as_bytes()


@pytest.fixture(scope="session")
def gcs_server():
    from gcp_storage_emulator.server import create_server
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    import captionbeam.pipelines.io
    captionbeam.pipelines.io.use_anonymous_gcs_if_emulated()
    from google.cloud import storage
    client = storage.Client.create_anonymous_client()
    yield client
    server.stop()
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old


_bucket_ids = itertools.count()


@pytest.fixture
def gcs_bucket(gcs_server) -> Bucket:
    """A fresh, empty bucket on the emulator for one test."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_ids)}"
    gcs_server.create_bucket(name)
    return Bucket(gcs_server, name)
