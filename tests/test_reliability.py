"""Interruptions, crashes and hostile files: nothing lost, nothing executed."""
import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from textvae import files as tio
from textvae.run import load_run, read_metrics

from .conftest import POEM_LINES, ROOT, copy_run_files, run_cli, write_corpus

# subprocesses, signals, torchrun or a browser: `pytest -m "not slow"` leaves them out
pytestmark = pytest.mark.slow

# Long enough (600 steps, 4 an epoch) that a signal lands mid-run; fp32 so runs are
# bit-reproducible. A record redraws curves.png (~0.6 s), so records are few.
EPOCHS = 150
STEPS = EPOCHS * 4  # the corpus of 16 lines at batch 4
FLAGS = ["--epochs", str(EPOCHS), "--batch-size", "4", "--emb-dim", "16", "--enc-hidden", "16",
         "--latent", "4", "--dec-hidden", "16", "--eval-every", "100", "--ckpt-every", "20",
         "--refiner-dim", "16", "--refiner-heads", "2", "--iw-samples", "0", "--amp", "off",
         "--min-steps", "0"]


def corpus(tmp_path):
    return write_corpus(tmp_path / "c.txt", POEM_LINES + [s[::-1] for s in POEM_LINES])


def start(tmp_path, out, *more):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--corpus",
                             str(corpus(tmp_path)), "--out", str(out), *FLAGS, *more],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(out, proc, n=2, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list((out / "checkpoints").glob("step-*.pt"))) >= n or proc.poll() is not None:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    r = run_cli("train.py", "--corpus", corpus(tmp), "--out", tmp / "run", *FLAGS, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def test_sigterm_saves_exits_130_and_resume_follows_the_same_course(tmp_path, straight):
    out = tmp_path / "run"
    proc = start(tmp_path, out)
    wait_for_checkpoint(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGTERM: saved" in err and f"--resume {out}" in err
    r = run_cli("train.py", "--resume", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = read_metrics(straight), read_metrics(out)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["valid_nelbo"] == pytest.approx(y["valid_nelbo"], rel=1e-4, abs=1e-4)


def test_a_run_stopped_before_its_first_validation_record_has_usable_weights(tmp_path):
    # keep_best writes the weights at validation records; a run stopped before its
    # first (--eval-every past the stop) must still leave weights generate can load.
    out = tmp_path / "run"
    proc = start(tmp_path, out, "--eval-every", "5000")
    wait_for_checkpoint(out, proc, n=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert read_metrics(out) == []
    assert load_run(out).sample(2)


def last_step_shown(stderr):
    """The highest step the progress bar printed (it lags the loop by up to a second)."""
    return max(map(int, re.findall(rf"(\d+)/{STEPS} \[", stderr)), default=0)


def test_sigkill_loses_at_most_one_interval_and_leaves_every_file_loadable(tmp_path):
    out = tmp_path / "run"
    proc = start(tmp_path, out)
    wait_for_checkpoint(out, proc, n=2)
    time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    _, err = proc.communicate()
    steps = [int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("step-*.pt")]
    for ckpt in (out / "checkpoints").glob("step-*.pt"):
        torch.load(ckpt, weights_only=True)
    load_run(out)
    reached = last_step_shown(err)
    assert 0 < max(steps) < STEPS and reached - max(steps) <= 20  # --ckpt-every 20
    r = run_cli("train.py", "--resume", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    load_run(out)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train.py", "--corpus", corpus(tmp_path), "--out", out, *FLAGS,
                "--max-steps", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p in (out / "checkpoints").glob("*"):
        p.unlink()
    (out / "model.safetensors").unlink()
    (out / ".model.safetensors.x1y2.tmp").write_bytes(b"half a file")
    r = run_cli("train.py", "--resume", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "from step 0" in r.stdout and "removed 1 temporary file" in r.stdout
    assert not list(out.glob(".*.tmp"))
    assert [x["step"] for x in read_metrics(out)] == [8]


def test_resume_applies_a_longer_run_refuses_other_changes_and_adds_up_time(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train.py", "--corpus", corpus(tmp_path), "--out", out, *FLAGS,
                "--max-steps", "40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = json.loads((out / "summary.json").read_text())
    for flags, fragment in ((["--lr", "0.1"], "--lr"), (["--latent", "9"], "--latent"),
                            (["--batch-size", "8"], "--batch-size")):
        r = run_cli("train.py", "--resume", out, *flags, cwd=tmp_path)
        assert r.returncode == 2 and fragment in r.stderr and "cannot change" in r.stderr
    r = run_cli("train.py", "--resume", out, "--max-steps", "80", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = json.loads((out / "summary.json").read_text())
    assert second["steps"] == 80 and second["train_s"] > first["train_s"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_place_of_weights_is_refused_without_running(tmp_path, straight):
    run = copy_run_files(straight, tmp_path / "run")
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    r = run_cli("generate.py", "--run", run)
    assert r.returncode == 2 and "refusing" in r.stderr
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_on_resume_without_running(tmp_path, straight):
    run = copy_run_files(straight, tmp_path / "run")
    # config.json names the corpus relative to the run folder: copy it alongside.
    (tmp_path / "c.txt").write_bytes((straight.parent / "c.txt").read_bytes())
    (run / "checkpoints").mkdir()
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, run / "checkpoints" / "step-00000020.pt")
    r = run_cli("train.py", "--resume", run, cwd=tmp_path)
    assert r.returncode == 2 and "no readable checkpoint" in r.stderr, r.stderr
    assert not marker.exists()


def test_full_disk_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    tio.atomic_write_bytes(target, b"previous")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        tio.atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left


def test_non_finite_loss_stops_naming_the_steps(tmp_path):
    r = run_cli("train.py", "--corpus", corpus(tmp_path), "--out", tmp_path / "run",
                *FLAGS[:2], "--lr", "1e30", "--grad-clip", "0", *FLAGS[4:], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "between steps" in r.stderr and "--skip-nonfinite" in r.stderr
