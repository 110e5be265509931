"""captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.

This file is also what Dataflow's ``--setup_file`` ships to workers, so it installs
only what a worker needs (``pipelines`` + ``model``); the extras add the rest.
"""
import platform

from setuptools import find_packages, setup


def _tensorflow_requirement() -> str:
    # tensorflow-cpu has no wheels for macOS/arm64; there plain tensorflow is the CPU build.
    if platform.system() == "Darwin":
        return "tensorflow>=2.16"
    return "tensorflow-cpu>=2.16"


REQUIRED = [
    "apache-beam[gcp]>=2.60",
    _tensorflow_requirement(),
    "keras>=3.0",
    "numpy",
    "pillow>=10",
    "nltk>=3.8",
    "google-cloud-storage>=2.10",
    "tfrecord>=1.14",
    "pyyaml>=6",
]

EXTRAS = {
    # GPU workers and training hosts: the full TensorFlow build with CUDA.
    "gpu": ["tensorflow[and-cuda]>=2.16"],
    # COCO caption metrics (METEOR, CIDEr-D, ROUGE-L, PTB tokenizer; needs Java).
    "eval": ["pycocoevalcap>=1.2"],
    # Plots in reports: training curves, attention maps, galleries.
    "report": ["matplotlib>=3.7"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2",
        "gcp-storage-emulator>=2024.0",
        "pycocoevalcap>=1.2",
        "matplotlib>=3.7",
        "pyarrow",
    ],
}
EXTRAS["all"] = sorted({r for k, v in EXTRAS.items() if k != "gpu" for r in v})

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
