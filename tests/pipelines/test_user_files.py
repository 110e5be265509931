"""The one reader of users' files (``pipelines.user_files``): regular files only, one byte limit, the same
reasons everywhere; and, read from the source with ``ast``, no module opens a path any other way
except the listed ones, which open only the project's own files (specs, configs, vocabularies, their
own outputs) or decode bytes already read."""
import ast
import functools
import hashlib
import os

import pytest

from captionbeam.pipelines.user_files import (UserFileError, file_problem, read_user_file, sha256_user_file)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("model", "pipelines", "launch", "captionbeam")     # captionbeam/: the Python API
OPENERS = ("open", "GFile", "read_bytes")      # open(), X.open(), tf.io.gfile.GFile(), pio.read_bytes()

# (file, function) -> why it may open a path: never a user's image or archive.
ALLOWED = {
    ("pipelines/user_files.py", "open_user_file"): "the reader itself",
    ("launch/commands/export.py", "_roll_forward_gcs"): "copies the SavedModel this run wrote over --output",
    ("pipelines/images.py", "_open"): "Image.open of bytes the reader returned",
    ("pipelines/images.py", "image_size"): "Image.open of bytes the reader returned",
    ("pipelines/io.py", "read_bytes"): "the project's small files (specs, summaries, caption files)",
    ("pipelines/io.py", "read_text"): "the project's small files (specs, summaries, caption files)",
    ("pipelines/bulk.py", "_caption_file_rows"): "bulk's own output rows",
    ("pipelines/bulk.py", "drop_empty_parquet"): "bulk's own output files",
    ("pipelines/bulk.py", "_count_lines"): "bulk's own output rows (this run's caption and dead-letter files)",
    ("pipelines/bulk.py", "_count_caption_rows"): "bulk's own output rows (a Parquet file's metadata)",
    ("pipelines/caption_steps.py", "ParseCaptionFile.process"): "a caption text file",
    ("pipelines/captions.py", "_head"): "the first bytes of a caption file (format sniffing)",
    ("pipelines/sample.py", "_writer.write_local"): "writes the sample data set",
    ("pipelines/io.py", "write_text_atomic"): "writes an output (temp name + rename)",
    ("pipelines/lease.py", "_boot_id"): "/proc (the lease holder's liveness)",
    ("pipelines/lease.py", "_process_start"): "/proc (the lease holder's liveness)",
    ("pipelines/redact.py", "write_private_text"): "writes a run record (os.open with mode 0600)",
    ("model/captioner.py", "_read_bytes"): "a model directory's files (its version hash)",
    ("model/encoders.py", "TFLiteEncoder.__init__"): "an encoder model file",
    ("model/export.py", "check_serving_signature"): "an export's saved_model.pb",
    ("model/gfile.py", "read_text"): "a model directory's small files",
    ("model/gfile.py", "write_text"): "writes",
    ("model/hashing.py", "sha256_file"): "model and encoder files (integrity)",
    ("model/progress.py", "plot_curve"): "writes",
    ("model/references.py", "read_text"): "a references file",
    ("model/vocab.py", "Vocabulary.load"): "vocab.txt",
    ("launch/config.py", "load"): "a run config",
    ("launch/engines.py", "_stamp"): "engine cache",
    ("launch/engines.py", "_write_stamp"): "engine cache",
    ("launch/engines.py", "fetch_job_server"): "engine cache",
    ("launch/engines.py", "verify_job_server"): "engine log",
    ("launch/engines.py", "wait_for_port"): "engine log",
    ("launch/profiles.py", "load_profiles"): "profiles.yaml",
    ("launch/report.py", "_thumbnail"): "Image.open of bytes of the run's own sample images",
    ("launch/report.py", "write_report"): "the run's own outputs",
    ("launch/run.py", "RunPipeline.prepare_encoder"): "an encoder model file",
    ("launch/staging.py", "copy_tree"): "stages the project's own files",
    ("launch/retrain/bootstrap.py", "init_root"): "a features spec and encoder file",
    ("launch/retrain/manifest.py", "add_features"): "the features job's sidecar",
    ("launch/commands/score.py", "run"): "writes --per-image",
    ("launch/cli.py", "run_command"): "os.open of /dev/null (a closed stdout pipe)",
    ("launch/cluster.py", "spawn"): "the cluster's own log files (.cluster/logs)",
    ("launch/cluster.py", "_tail"): "the cluster's own log files (.cluster/logs)",
    ("launch/cluster.py", "_write_state"): "the cluster's own cluster.json",
    ("launch/cluster.py", "read_state"): "the cluster's own cluster.json",
    ("launch/cluster.py", "cmdline"): "/proc (a process's command line: whether it is one of the cluster's)",
    ("launch/cluster.py", "_first_errors"): "the cluster's own log files (.cluster/logs)",
    ("launch/cluster.py", "owned"): "/proc (whether a pid is one of the cluster's processes)",
    ("launch/cluster.py", "gone"): "/proc (whether a pid has exited)",
    ("launch/cluster.py", "logged_since"): "the cluster's own log files (.cluster/logs)",
    ("launch/cluster.py", "sdk_worker_pids"): "/proc (the pool's SDK worker processes)",
    ("launch/cluster.py", "flink_job_server_jar"): "writes the service entry of the engines cache's own staged-jars.jar",
    ("launch/cluster.py", "_start_once"): "the cluster's own config and log files",
    ("launch/engines.py", "_unpack"): "engine cache (a downloaded distribution wheel)",
    ("launch/engines.py", "fetch_distribution"): "engine cache",
}


def path_openers(source: str):
    """``function`` (dotted, with its classes) of every call that opens a path in ``source``."""
    found = []

    def walk(node, where):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(child, where + [child.name])
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
                if name in OPENERS and owner != "tarfile":        # tarfile.open(fileobj=...) of a stream
                    found.append(".".join(where))
            walk(child, where)

    walk(ast.parse(source), [])
    return found


@functools.lru_cache(maxsize=None)
def _openers_in_tree():
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
                    for fn in path_openers(open(path, encoding="utf-8").read()):
                        out[(rel, fn)] = path
    return out


def test_the_scan_sees_every_way_of_opening_a_path():
    src = ("import tensorflow as tf\nfrom PIL import Image\n"
           "def a(p):\n    return open(p).read()\n"
           "class B:\n    def c(self, p):\n        return Image.open(p)\n"
           "def d(p):\n    from apache_beam.io.filesystems import FileSystems\n    return FileSystems.open(p)\n"
           "def e(p):\n    return tf.io.gfile.GFile(p).read()\n"
           "def f(p):\n    return pio.read_bytes(p)\n"
           "def g(f):\n    import tarfile\n    return tarfile.open(fileobj=f)\n")
    assert path_openers(src) == ["a", "B.c", "d", "e", "f"]


def test_no_module_opens_a_path_around_the_one_reader():
    stray = sorted(k for k in _openers_in_tree() if k not in ALLOWED)
    assert not stray, (f"these open paths without pipelines.user_files (read users' files through "
                       f"read_user_file / open_user_file / sha256_user_file, or add a project-file reader "
                       f"to ALLOWED with its reason): {stray}")
    stale = sorted(k for k in ALLOWED if k not in _openers_in_tree())
    assert not stale, f"ALLOWED lists functions that no longer open a path: {stale}"


# ----------------------------------------------------------------------------- the reader itself
@pytest.fixture
def hostile(tmp_path):
    d = tmp_path
    (d / "ok.jpg").write_bytes(b"x" * 100)
    with open(d / "huge.jpg", "wb") as f:
        f.truncate(3 << 30)                                   # sparse: no disk, never read
    os.mkfifo(d / "fifo.jpg")
    os.symlink(d / "gone.jpg", d / "dangling.jpg")
    os.symlink("loop2.jpg", d / "loop1.jpg")
    os.symlink("loop1.jpg", d / "loop2.jpg")
    os.mkdir(d / "dir.jpg")
    os.symlink("/dev/zero", d / "zero.jpg")
    return d


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, error", [("huge.jpg", "too_large"), ("fifo.jpg", "not_a_regular_file"),
                                         ("dangling.jpg", "broken_link"), ("loop1.jpg", "symlink_loop"),
                                         ("dir.jpg", "not_a_regular_file"), ("zero.jpg", "not_a_regular_file"),
                                         ("missing.jpg", "not_found")])
def test_hostile_files_are_refused_by_name_never_opened(hostile, name, error):
    path = str(hostile / name)
    for read in (lambda: read_user_file(path, 1 << 20), lambda: sha256_user_file(path, 1 << 20)):
        with pytest.raises(UserFileError) as e:
            read()
        assert e.value.error == error and e.value.path == path and path in str(e.value)
    assert file_problem(path, 1 << 20)[0] == error


def test_regular_files_are_read_and_hashed_within_the_limit(hostile):
    path = str(hostile / "ok.jpg")
    assert read_user_file(path, 100) == b"x" * 100
    assert sha256_user_file(path, 100) == hashlib.sha256(b"x" * 100).hexdigest()
    for read in (read_user_file, sha256_user_file):
        with pytest.raises(UserFileError, match="--max-bytes 99") as e:
            read(path, 99)
        assert e.value.error == "too_large"
    with pytest.raises(ValueError, match="--max-bytes must be a positive"):
        read_user_file(path, 0)


def test_gs_objects_are_bounded_by_the_read(gcs_bucket):
    url = gcs_bucket.upload_bytes("u/a.jpg", b"y" * 5000)
    assert read_user_file(url, 5000) == b"y" * 5000
    assert sha256_user_file(url, 5000) == hashlib.sha256(b"y" * 5000).hexdigest()
    for read in (read_user_file, sha256_user_file):
        with pytest.raises(UserFileError) as e:
            read(url, 4999)
        assert e.value.error == "too_large"
