"""Fault matrix, storage: the bucket endpoint dies mid-job (a private emulator process, SIGKILLed once the
job holds its lease and runs), a full disk (a 1 MiB tmpfs; root only), a file a reader holds locked.
Each ends in one clear line naming the path or the endpoint (no traceback), within a bounded time, and
nothing half-written is left as if it were good."""
import glob
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32"]


def _env(**extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTEROP_THREADS": "2",
           "TF_NUM_INTRAOP_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EMULATOR = """
import glob, os, sys, time
from gcp_storage_emulator import storage as emulated
from gcp_storage_emulator.server import create_server
def _atomic_write(self, rel, content, _write=emulated._FileStore.write_bytes):
    # the emulator rewrites its whole index (.meta) in place on every change, so a SIGKILL mid-write
    # leaves it empty and the restarted emulator cannot read the bucket back; a real bucket keeps what it
    # acknowledged: write to a side file and rename, as a store that survives a crash does
    if self._use_memory:
        return _write(self, rel, content)
    _write(self, rel + ".~writing", content)
    os.replace(self._disk_path(self._norm(rel + ".~writing")), self._disk_path(self._norm(rel)))
emulated._FileStore.write_bytes = _atomic_write
port, data_dir, bucket, files = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
server = create_server("127.0.0.1", port, data_dir=data_dir)
server.start()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
from google.cloud import storage
client = storage.Client.create_anonymous_client()
if files:
    client.create_bucket(bucket)
for p in files:
    client.bucket(bucket).blob(("in/" if p.endswith(".jpg") else "") + os.path.basename(p)).upload_from_filename(p)
print("ready", flush=True)
time.sleep(3600)
"""


def _start_emulator(data_dir, files=()):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", EMULATOR, str(port), data_dir, "faults", *files],
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}"


def _client(endpoint):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    return storage.Client(project="faults", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})


@pytest.fixture
def private_endpoint(sample_dir, tmp_path):
    """A bucket (12 images under in/, captions.txt) on an emulator in its own process that keeps its
    objects on disk (the test kills it; :func:`_start_emulator` on the same folder reads the bucket back
    as the dead endpoint left it); yields (process, endpoint, data folder)."""
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:12]
    data = str(tmp_path / "bucket")
    proc, endpoint = _start_emulator(data, [*images, os.path.join(sample_dir, "captions.txt")])
    try:
        yield proc, endpoint, data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# command -> (argv writing gs://faults/out, the object a finished run commits last: never there after the fault)
def _endpoint_argv(command, request):
    if command == "features":
        return ["features", "--images", "gs://faults/in/*.jpg", "--output", "gs://faults/out", *TINY], "out/features_spec.json"
    if command == "captions":
        return ["captions", "--captions", "gs://faults/captions.txt", "--output", "gs://faults/out"], "out/stats.json"
    if command == "pack":
        return ["pack", "--images", "gs://faults/in/*.jpg", "--output", "gs://faults/out", "--format", "tar"], "out/pack.json"
    if command == "bulk":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["bulk", "--images", "gs://faults/in/*.jpg", "--model-dir", model, "--output", "gs://faults/out"], "out/runs/"
    if command == "export":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["export", "--model-dir", model, "--output", "gs://faults/out"], "out/captionbeam_export.json"
    if command == "retrain":
        run = request.getfixturevalue("small_run").workdir
        return ["retrain", "--root", "gs://faults/out", "--init", "--from-run", run], "out/CURRENT"
    raise AssertionError(command)


# train, evaluate, caption and the model side of run read and write through TensorFlow's own gs:// client,
# which cannot be pointed at an emulator: their bucket faults are not reproducible here (docs/reliability.md)
@pytest.mark.parametrize("command", ["features", "captions", "pack", "bulk", "export", "retrain"])
def test_endpoint_down_mid_job_ends_with_a_clear_error(command, private_endpoint, tmp_path, request):
    emulator, endpoint, data = private_endpoint
    argv, committed_last = _endpoint_argv(command, request)
    client = _client(endpoint)
    log = tmp_path / "stderr.txt"
    start = time.time()
    with open(log, "w") as stderr:
        job = subprocess.Popen([sys.executable, "-m", "captionbeam.launch.cli", *argv], stderr=stderr, text=True,
                               env=_env(STORAGE_EMULATOR_HOST=endpoint, CAPTIONBEAM_STORAGE_DEADLINE_S="10"), cwd=ROOT)
    try:
        # the job holds its lease on the bucket (it is past its checks and writing): the endpoint dies
        while not [b for b in client.list_blobs("faults", prefix="out") if "lease/" in b.name]:
            assert job.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        emulator.send_signal(signal.SIGKILL)
        emulator.wait()
        killed = time.time()
        rc = job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    err = log.read_text()
    took = time.time() - killed
    line = next((x for x in err.splitlines() if "unreachable" in x), "")
    print(f"{command}: endpoint killed {killed - start:.0f}s after start; job ended {took:.0f}s later, rc {rc}: {line}")
    assert rc == 1, err[-3000:]
    assert f"storage endpoint {endpoint} unreachable" in err and "Traceback" not in err, err[-3000:]
    # the bucket as the dead endpoint left it: nothing committed as if the run had finished
    reader, again = _start_emulator(data)
    try:
        left = sorted(b.name for b in _client(again).list_blobs("faults", prefix="out"))
    finally:
        reader.kill()
        reader.wait()
    assert not [k for k in left if k.startswith(committed_last)], left
    assert not [k for k in left if k.startswith("out.swap") or k.startswith("out/CURRENT")], left


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only: skipped elsewhere, with the reason)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, which only root can mount")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_atomic_commits_keep_the_old_file_and_no_temporary(full_disk):
    import keras
    import captionbeam.pipelines.io as pio
    from captionbeam.model import gfile
    from captionbeam.model.checkpoints import export_weights
    config = os.path.join(full_disk, "config.json")
    with open(config, "w") as f:
        f.write('{"old": 1}')
    with pytest.raises(OSError, match="No space left") as e:
        gfile.write_text(config, "x" * 200_000)
    assert e.value.filename == config
    with pytest.raises(OSError, match="No space left") as e:
        pio.write_text_atomic(os.path.join(full_disk, "CURRENT"), "v002\n" * 40_000)
    assert e.value.filename == os.path.join(full_disk, "CURRENT")
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256)])      # 257 KiB of weights
    with pytest.raises(OSError, match="No space left"):
        export_weights(model, os.path.join(full_disk, "last.weights.h5"))
    # nothing truncated left as if it were good: the old config, no weights file, no temporary
    assert sorted(os.listdir(full_disk)) == ["config.json"] and open(config).read() == '{"old": 1}'


@pytest.mark.parametrize("command", ["features", "train"])
def test_full_disk_ends_a_command_with_one_line_naming_the_path(command, full_disk, sample_dir, request):
    if command == "features":
        argv = ["features", "--images", os.path.join(sample_dir, "images", "*.jpg"), "--output", full_disk, *TINY]
    else:
        data = request.getfixturevalue("synthetic_data")
        argv = ["train", "--data", str(data), "--model-dir", full_disk, "--epochs", "1", "--steps-per-epoch", "2",
                "--units", "256", "--embedding-dim", "256", "--strategy", "one_device"]
    proc = subprocess.run([sys.executable, "-m", "captionbeam.launch.cli", *argv], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=600)
    err = proc.stderr
    assert proc.returncode == 1, err[-3000:]
    [line] = [l for l in err.splitlines() if l.startswith(f"captionbeam {command}: error:")]
    assert "no space left on the device" in line and full_disk in line, line
    assert "Traceback" not in err, err[-3000:]
    # nothing half-written kept as if it were good: no spec (features), no weights file that does not load (train)
    left = sorted(os.listdir(full_disk))
    assert not any(f.startswith(".tmp-") for f in left), left
    if command == "features":
        assert "features_spec.json" not in left, left         # the spec is written last: no run looks finished
    for weights in glob.glob(os.path.join(full_disk, "*.weights.h5")):
        import h5py
        h5py.File(weights, "r").close()


# every other writing command on a full disk: in-process (cheap), the disk filled up to the lease's two
# files, so the command's first byte of output meets the full disk; (argv, what a finished run commits last)
def _writer(command, base, sample_dir, request):
    images = os.path.join(sample_dir, "images", "*.jpg")
    out = os.path.join(base, command)
    if command == "captions":
        return ["captions", "--captions", os.path.join(sample_dir, "captions.txt"), "--output", out], "stats.json"
    if command == "pack":
        return ["pack", "--images", images, "--output", out, "--format", "tar"], "pack.json"
    if command == "evaluate":
        model_dir, data_dir, _ = request.getfixturevalue("decoding_model_dirs")["merge"]
        return ["evaluate", "--model-dir", model_dir, "--data", data_dir, "--output",
                os.path.join(base, "evaluate.jsonl")], "evaluate.metrics.json"
    if command == "export":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["export", "--model-dir", model, "--output", out], "export/captionbeam_export.json"
    if command == "bulk":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["bulk", "--images", images, "--model-dir", model, "--output", out], "runs"
    if command == "retrain":
        run = request.getfixturevalue("small_run").workdir
        return ["retrain", "--root", out, "--init", "--from-run", run], "CURRENT"
    if command == "run":
        return ["run", "--workdir", out, "--sample-images", "20", "--sample-size", "32", "--image-size", "32",
                "--epochs", "1", "--no-report"], "stages/sample.json"
    raise AssertionError(command)


def _fill(path, leave=8192):
    """Fill the file system of ``path`` but ``leave`` bytes (a ballast file)."""
    st = os.statvfs(path)
    with open(os.path.join(path, "ballast"), "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("command", ["captions", "pack", "evaluate", "export", "bulk", "retrain", "run"])
def test_full_disk_every_writer_ends_with_one_line_and_commits_nothing(command, full_disk, sample_dir, request,
                                                                      capsys):
    from captionbeam.launch.cli import main
    argv, committed_last = _writer(command, full_disk, sample_dir, request)
    _fill(full_disk)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith(f"captionbeam {command}: ")]
    print(lines[-1] if lines else err[-500:])
    assert rc == 1, err[-3000:]
    assert any("no space left on the device" in l and full_disk in l for l in lines), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    left = [os.path.relpath(os.path.join(d, f), full_disk) for d, _, fs in os.walk(full_disk) for f in fs]
    assert not os.path.exists(os.path.join(full_disk, committed_last)), left
    # a Beam writer's own beam-temp-* stays (never read as output; the next run removes it under its lease)
    assert not [f for f in left if ".tmp-" in f], left


@pytest.fixture
def immutable(tmp_path):
    """``chattr +i`` on a folder (even root cannot create, rename or delete in it); skipped, with the
    reason, where the file system has no such attribute."""
    made = []

    def lock(path):
        proc = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {proc.stderr.strip()}")
        made.append(path)
    yield lock
    for path in made:
        subprocess.run(["chattr", "-i", path], check=False)


@pytest.mark.parametrize("command", ["features", "captions", "pack", "train", "evaluate", "export", "bulk",
                                     "retrain", "run"])
def test_a_locked_output_ends_every_writer_with_one_line_and_keeps_the_old_files(command, immutable, tmp_path,
                                                                                sample_dir, request, capsys):
    """The output (a folder holding an earlier run's committed file) is locked: nothing can be created,
    renamed or deleted there. One line naming the path, exit 1, the earlier file as it was."""
    from captionbeam.launch.cli import main
    base = str(tmp_path / "locked")
    if command == "features":
        argv = ["features", "--images", os.path.join(sample_dir, "images", "*.jpg"), "--output",
                os.path.join(base, "features"), *TINY]
    elif command == "train":
        data = request.getfixturevalue("synthetic_data")
        argv = ["train", "--data", str(data), "--model-dir", os.path.join(base, "train"), "--epochs", "1"]
    else:
        argv, _ = _writer(command, base, sample_dir, request)
    out = argv[argv.index(next(f for f in ("--output", "--model-dir", "--root", "--workdir") if f in argv)) + 1]
    folder = base if command in ("evaluate", "export") else out     # a file, or a folder replaced whole: beside
    os.makedirs(folder, exist_ok=True)
    earlier = os.path.join(folder, "committed-by-an-earlier-run.txt")
    with open(earlier, "w") as f:
        f.write("earlier\n")
    immutable(folder)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:            # the --output check of the argument parser (exit 2: usage)
        rc = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith(f"captionbeam {command}: ")]
    print(lines[-1] if lines else err[-500:])
    assert rc in (1, 2), err[-3000:]
    assert any("not permitted" in l and folder in l for l in lines), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert sorted(os.listdir(folder)) == ["committed-by-an-earlier-run.txt"] and open(earlier).read() == "earlier\n"


def test_a_reader_holding_the_weights_open_does_not_block_the_writer(tmp_path):
    """Issue 18: a reader with best.weights.h5 open crashed train with BlockingIOError (HDF5's file
    lock): weights are written new and renamed over the old file, which the reader keeps reading."""
    import keras
    from captionbeam.model.checkpoints import export_weights
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "best.weights.h5")
    export_weights(model, path)
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time, h5py\nf = h5py.File(sys.argv[1], 'r')\n"
                               "print('open', flush=True)\ntime.sleep(600)\n", path], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        import h5py
        with pytest.raises((BlockingIOError, OSError)):      # what train used to do: open it for writing in place
            h5py.File(path, "w").close()
        model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)
        export_weights(model, path)                           # the protocol: no error, the new weights are there
        fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        fresh.load_weights(path)
        assert (fresh.layers[0].kernel.numpy() == model.layers[0].kernel.numpy()).all()
    finally:
        reader.kill()
        reader.wait()
    assert sorted(os.listdir(tmp_path)) == ["best.weights.h5"]
