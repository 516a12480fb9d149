"""Shared fixtures: tiny corpora built in-process, and one small model overfit on them."""
import atexit
import contextlib
import faulthandler
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Token caches of the tests' tiny corpora go to a folder of this session, not the user's
# cache (set before anything reads it; subprocesses inherit it).
os.environ["TEXTVAE_CACHE"] = tempfile.mkdtemp(prefix="textvae-test-cache-")
atexit.register(shutil.rmtree, os.environ["TEXTVAE_CACHE"], True)

# Eight real five-character lines (Wang Zhihuan, Li Bai, Meng Haoran, Du Fu).
POEM_LINES = ["白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼",
              "床前明月光", "疑是地上霜", "春眠不觉晓", "处处闻啼鸟"]


def write_corpus(path, lines):
    path.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    return path


def overfit(tmp, lines, **settings):
    """A run trained (through the real train() path) until it memorises ``lines``."""
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.run import load_run
    from textvae.trainer import train
    corpus = write_corpus(tmp / "lines.txt", lines)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp / "run"), epochs=400, batch_size=8,
                     lr=5e-3, kl_schedule="constant", beta_max=0.1, free_bits=0.0,
                     eval_every=1000, ckpt_every=1000, iw_samples=0, amp="off", min_steps=0,
                     **settings)
    mc = VAEConfig(emb_dim=32, enc_hidden=32, latent=8, dec_hidden=32, dropout=0.0,
                   refiner_dim=32, refiner_heads=2)
    return load_run(train(tc, mc, log=lambda *a: None))


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory):
    """A run that has memorised POEM_LINES."""
    return overfit(tmp_path_factory.mktemp("overfit"), POEM_LINES)


def run_cli(script, *args, cwd=None, timeout=300, env=None, own_process=False):
    """Run train.py / generate.py as a user would; returns CompletedProcess. It runs in
    this process unless ``own_process`` (or ``env``) asks for one: each script only
    calls its entry point in textvae.cli, and a process of its own spends ~2 s
    importing torch."""
    if not own_process and env is None:
        return _in_process(script, args, cwd, timeout)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=full_env)


def _in_process(script, args, cwd, timeout):
    """``run_cli`` through the script's entry point, here: stdout, stderr and the exit
    status as a process would give them (argparse's exit, and the warnings a process
    would print, included). The signal handlers training sets and the working
    directory are put back after it; past ``timeout`` seconds the suite stops with
    every thread's traceback, as a hung subprocess would be stopped."""
    from textvae.cli import generate_main, train_main
    main = {"generate.py": generate_main, "train.py": train_main}[script]
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    here = os.getcwd()
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        os.chdir(cwd or here)
        with _process_warnings(err), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    except SystemExit as e:
        code = _exit_status(e.code, err)
    except BaseException as e:  # a traceback: the test fails with what it printed
        if hasattr(e, "add_note"):
            e.add_note(f"stderr of {script}: {err.getvalue()[-2000:]}")
        raise
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.chdir(here)
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(),
                                       err.getvalue())


def _exit_status(code, err):
    """A process's exit status for sys.exit(code): a message goes to stderr, status 1."""
    if code is None or isinstance(code, int):
        return code or 0
    err.write(f"{code}\n")
    return 1


@contextlib.contextmanager
def _process_warnings(err):
    """Warnings filtered as a fresh process filters them (Python's default list),
    written to ``err`` as it would print them: pytest would otherwise keep them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            yield
        finally:
            for w in caught:
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))


def copy_run_files(src, dst):
    """A copy of a run folder's top-level files (not its checkpoints), to tamper with."""
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst
