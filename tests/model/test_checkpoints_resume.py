"""Kill-and-resume: a run stopped mid-epoch resumes at its step, not at zero."""
import json
import os
import re
import signal
import subprocess
import time

from tests.plugins.training import TINY, train_command, train_env

RESUMED_RE = re.compile(r"resumed from \S+: step (\d+), (\d+) epoch\(s\) done")
STEP_RE = re.compile(r"\(global (\d+)/\d+\)")
CKPT_RE = re.compile(r"checkpoint \S+ckpt-(\d+) \(every")
BASE = [*TINY, "--steps-per-epoch", "10", "--log-every", "1", "--checkpoint-every", "3", "--strategy", "one_device",
        "--batch-size", "16"]
COMMON = [*BASE, "--epochs", "2"]


def _run(cmd, timeout=300):
    p = subprocess.run(cmd, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:]
    return p.stdout


def test_stop_mid_epoch_then_rerun_resumes_at_that_step(synthetic_data, tmp_path):
    model_dir = tmp_path / "m"
    first = _run(train_command(synthetic_data, model_dir, *COMMON, "--stop-after-steps", "7"))
    assert "stopping at step 7" in first and "starting from scratch" in first
    second = _run(train_command(synthetic_data, model_dir, *COMMON))
    assert RESUMED_RE.search(second).groups() == ("7", "0")
    steps = [int(s) for s in STEP_RE.findall(second)]
    assert steps[0] == 8 and steps[-1] == 20          # continued mid-epoch 1, not from step 1
    history = json.load(open(model_dir / "history.json"))["epochs"]
    assert [e["epoch"] for e in history] == [1, 2] and history[-1]["step"] == 20

    # a finished run: the same command does nothing; a larger --epochs extends it from where it ended
    again = _run(train_command(synthetic_data, model_dir, *COMMON))
    assert "nothing to do" in again and "--epochs 2 reached" in again and not STEP_RE.search(again)
    more = _run(train_command(synthetic_data, model_dir, *BASE, "--epochs", "3"))
    assert "extending it to --epochs 3" in more
    steps = [int(s) for s in STEP_RE.findall(more)]
    assert steps[0] == 21 and steps[-1] == 30
    history = json.load(open(model_dir / "history.json"))["epochs"]
    assert [e["epoch"] for e in history] == [1, 2, 3] and history[-1]["step"] == 30


def test_sigkill_mid_epoch_loses_at_most_checkpoint_every_steps(synthetic_data, tmp_path):
    model_dir = tmp_path / "k"
    cmd = train_command(synthetic_data, model_dir, *BASE, "--epochs", "50")
    proc = subprocess.Popen(cmd, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, saved, last_step = [], [], 0
    deadline = time.time() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            saved += [int(s) for s in CKPT_RE.findall(line)]
            last_step = max([last_step] + [int(s) for s in STEP_RE.findall(line)])
            if len(saved) >= 2 and saved[-1] % 10:       # a step checkpoint that is not at an epoch end
                break
            assert time.time() < deadline and proc.poll() is None, "".join(lines)[-3000:]
        os.kill(proc.pid, signal.SIGKILL)                  # no clean shutdown
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = saved[-1]
    again = _run(train_command(synthetic_data, model_dir, *BASE, "--epochs", "50",
                               "--stop-after-steps", str(killed_at + 2)))
    resumed_step, epochs_done = map(int, RESUMED_RE.search(again).groups())
    assert resumed_step >= killed_at > 0                    # not from zero
    assert resumed_step >= last_step - 3                    # lost at most --checkpoint-every steps
    assert epochs_done == resumed_step // 10
    assert int(STEP_RE.findall(again)[0]) == resumed_step + 1
