"""Real multi-replica training in subprocesses (logical CPU devices must be configured before
TensorFlow initialises, so each run gets its own process)."""
import json
import os
import re
import subprocess

import pytest

from tests.plugins.learning import learning_seed, record_margin
from tests.plugins.training import TINY, free_port, train_command, train_env

LOSS_RE = re.compile(r"\(global (\d+)/\d+\) loss ([0-9.]+)")
FINISHED_RE = re.compile(r"training finished: (\{.*\})")
COMMON = [*TINY, "--dropout", "0", "--epochs", "2", "--steps-per-epoch", "4", "--log-every", "1", "--seed", str(learning_seed(3)),
          "--learning-rate", "0.01"]


def _run_all(commands, timeout=400):
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in commands]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _losses(out):
    return {int(s): float(v) for s, v in LOSS_RE.findall(out)}


def _summary(out):
    return json.loads(FINISHED_RE.search(out).group(1))


@pytest.mark.learning
def test_two_cpu_replicas_match_one_replica_at_the_same_global_batch(synthetic_data, tmp_path):
    one, two = _run_all([
        (train_command(synthetic_data, tmp_path / "one", *COMMON, "--strategy", "one_device", "--batch-size", "32"),
         train_env()),
        (train_command(synthetic_data, tmp_path / "two", *COMMON, "--strategy", "mirrored", "--cpu-replicas", "2",
                       "--batch-size", "16"), train_env()),
    ])
    assert "1 replica(s)" in one and "2 replica(s)" in two and "global batch 32 = 16 per replica x 2" in two
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    record_margin("two_cpu_replicas loss[1] - loss[8]", a[1] - a[8], 0.3)
    assert a[8] < a[1] - 0.3                     # it is learning, not a flat line
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-3, abs=2e-3), (step, a, b)
    ha = json.load(open(tmp_path / "one" / "history.json"))["epochs"]
    hb = json.load(open(tmp_path / "two" / "history.json"))["epochs"]
    assert [e["val_loss"] for e in hb] == pytest.approx([e["val_loss"] for e in ha], rel=2e-3)


def test_two_worker_multiworker_run_on_loopback(synthetic_data, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "mw"
    commands = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        commands.append((train_command(synthetic_data, model_dir, *COMMON, "--strategy", "multiworker",
                                       "--batch-size", "16", "--checkpoint-every", "3"),
                         train_env(TF_CONFIG=tf_config)))
    chief, other = _run_all(commands)
    assert "2 replica(s) on 2 worker(s)" in chief and "this is worker 0 (chief)" in chief
    assert "this is worker 1" in other and "(chief)" not in other.split("this is worker 1")[1].split("\n")[0]
    a, b = _summary(chief), _summary(other)
    assert a["step"] == b["step"] == 8
    assert a["weights_sha256"] == b["weights_sha256"]            # both workers hold the same model
    assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-6)
    la, lb = _losses(chief), _losses(other)
    assert la == lb and la[8] < la[1]                             # same reduced loss on both, and learning
    # only the chief writes the model dir; the other worker's temporary checkpoints are gone
    assert (model_dir / "best.weights.h5").exists() and (model_dir / "history.json").exists()
    assert not (model_dir / ".worker_tmp" / "worker_1").exists()
    names = os.listdir(model_dir / "checkpoints")
    assert "ckpt-8.index" in names
