"""captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.

This file is also what Dataflow's ``--setup_file`` ships to workers, so it installs
only what a worker needs; the extras add the rest.

One import root: the distribution installs as ``captionbeam`` (``captionbeam.model``,
``captionbeam.pipelines``, ``captionbeam.launch``), mapped from the repository's top-level ``model/``,
``pipelines/`` and ``launch/`` folders (``package_dir``), so nothing lands at the top of site-packages
under a generic name.
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


def _version() -> str:
    """The one version string, kept in ``captionbeam/__init__.py`` (read, not imported: no TensorFlow here)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for line in open(os.path.join(here, "captionbeam", "__init__.py"), encoding="utf-8"):
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("captionbeam/__init__.py has no __version__")


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

# The repository's top-level packages, installed under the one import root ``captionbeam``.
_SUBPACKAGES = find_packages(include=["pipelines", "pipelines.*", "model", "model.*", "launch", "launch.*"])

setup(
    name="captionbeam",
    version=_version(),
    description="Distributed batch image captioning: Beam feature pipelines, tf.distribute trainer, bulk captioning.",
    packages=["captionbeam"] + [f"captionbeam.{p}" for p in _SUBPACKAGES],
    package_dir={"captionbeam": "captionbeam", **{f"captionbeam.{p}": p.replace(".", "/") for p in _SUBPACKAGES}},
    package_data={"captionbeam.launch": ["profiles.yaml"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["captionbeam=captionbeam.launch.cli:main"]},
)
