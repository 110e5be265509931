"""captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.

This file is also what Dataflow's ``--setup_file`` ships to workers, so it installs
only what a worker needs (``pipelines`` + ``model``); the extras add the rest.
"""
import os
import platform
import shutil

from setuptools import find_packages, setup


def _tensorflow_requirement() -> str:
    """The TensorFlow build for this machine, chosen at install time.

    ``$CAPTIONBEAM_TENSORFLOW`` wins (e.g. ``tensorflow[and-cuda]>=2.16`` when building a GPU worker
    image on a machine without a GPU). Otherwise Linux with an NVIDIA driver (``nvidia-smi`` on PATH)
    gets the CUDA build, macOS plain ``tensorflow`` (its CPU build; tensorflow-cpu has no macOS/arm64
    wheels), everything else ``tensorflow-cpu``. Only one of them is ever installed: they ship the same
    ``tensorflow`` package and overwrite each other's files.
    """
    override = os.environ.get("CAPTIONBEAM_TENSORFLOW", "").strip()
    if override:
        return override
    if platform.system() == "Darwin":
        return "tensorflow>=2.16"
    if platform.system() == "Linux" and shutil.which("nvidia-smi"):
        return "tensorflow[and-cuda]>=2.16"
    return "tensorflow-cpu>=2.16"


REQUIRED = [
    "apache-beam[gcp]>=2.60",
    _tensorflow_requirement(),
    "keras>=3.0",
    "numpy",
    "pillow>=10",
    "nltk>=3.8",
    "google-cloud-storage>=2.10",
    "google-crc32c>=1.5",  # TFRecord CRCs of image shards (pipelines/shards/tfrecord.py)
    "pyyaml>=6",
]

EXTRAS = {
    # COCO caption metrics (METEOR, CIDEr-D, ROUGE-L, PTB tokenizer; needs Java).
    "eval": ["pycocoevalcap>=1.2"],
    # Plots in reports: training curves, attention maps, galleries.
    "report": ["matplotlib>=3.7"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2",
        "gcp-storage-emulator>=2024.0",
        "tfrecord>=1.14",  # the tests read TFRecords back with it, next to TensorFlow
        "pycocoevalcap>=1.2",
        "matplotlib>=3.7",
        "pyarrow",
    ],
}
EXTRAS["all"] = sorted({r for v in EXTRAS.values() for r in v})

setup(
    name="captionbeam",
    version="0.1.0",
    description="Distributed batch image captioning: Beam feature pipelines, tf.distribute trainer, bulk captioning.",
    packages=find_packages(include=["pipelines", "pipelines.*", "model", "model.*", "launch", "launch.*"]),
    package_data={"launch": ["profiles.yaml"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["captionbeam=launch.cli:main"]},
)
