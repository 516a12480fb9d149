"""The command lines as a user meets them: smoke runs and every bad input we promise to handle.

Each bad input must give exit status 2, exactly one line on stderr starting 'error:',
no traceback, and leave existing files unchanged.
"""
import hashlib
import json
from pathlib import Path

import pytest

from .conftest import POEM_LINES, copy_run_files, run_cli, write_corpus

# subprocesses, signals, torchrun or a browser: `pytest -m "not slow"` leaves them out
pytestmark = pytest.mark.slow

TINY = ["--epochs", "3", "--batch-size", "8", "--emb-dim", "16", "--enc-hidden", "16",
        "--latent", "4", "--dec-hidden", "16", "--refiner-dim", "16", "--refiner-heads", "2",
        "--iw-samples", "5", "--amp", "off", "--min-steps", "0"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run made by train.py through a subprocess, as the README does."""
    tmp = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(tmp / "poems.txt", POEM_LINES * 2 + ["山高月小", "水落石出"])
    r = run_cli("train.py", "--corpus", corpus, "--out", tmp / "run", *TINY, cwd=tmp,
                own_process=True)
    assert r.returncode == 0, r.stderr
    assert "run saved in" in r.stdout and "IW-NLL" in r.stdout
    return tmp / "run"


def snapshot(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest()
            for p in Path(folder).rglob("*") if p.is_file()}


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in err[0], err[0]


def test_train_writes_a_self_contained_run_folder(cli_run):
    names = {p.name for p in cli_run.iterdir()}
    assert {"config.json", "tokenizer.model", "model.safetensors", "metrics.jsonl",
            "summary.json"} <= names
    summary = json.loads((cli_run / "summary.json").read_text())
    for key in ("acc_mu", "kl", "au", "well_formed", "novel", "iw_nll"):
        assert key in summary


def test_generate_writes_poems_from_the_run_folder_alone(cli_run, tmp_path):
    r = run_cli("generate.py", "--run", cli_run, "--num", "2", "--seed", "1", cwd=tmp_path,
                own_process=True)  # as a user runs it; other tests call it in-process
    assert r.returncode == 0, r.stderr
    poems = r.stdout.strip().split("\n\n")
    assert len(poems) == 2 and all(len(p.splitlines()) == 4 for p in poems)
    # A copy of the folder, away from its corpus (gone): the same poems.
    alone = copy_run_files(cli_run, tmp_path / "alone")
    corpus = tmp_path / "gone.txt"
    config = json.loads((alone / "config.json").read_text())
    config["train"]["corpus"] = str(corpus)
    (alone / "config.json").write_text(json.dumps(config))
    again = run_cli("generate.py", "--run", alone, "--num", "2", "--seed", "1", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr


def test_generate_json_and_other_commands(cli_run, tmp_path):
    r = run_cli("generate.py", "sample", "--run", cli_run, "--format", "json", "--top-k", "3")
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)
    r = run_cli("generate.py", "interpolate", "白日依山尽", "床前明月光", "--steps", "4",
                "--run", cli_run, "--format", "json")
    path = json.loads(r.stdout)
    assert len(path["linear"]) == 4 and len(path["spherical"]) == 4
    r = run_cli("generate.py", "encode", "白日依山尽", "--run", cli_run)
    assert len(json.loads(r.stdout)[0]["mu"]) == 4
    r = run_cli("generate.py", "--acrostic", "白黄", "--num", "1", "--run", cli_run)
    assert [s[0] for s in r.stdout.split()] == ["白", "黄"]


def test_reconstruct_and_complete_from_the_command_line(overfit_run):
    r = run_cli("generate.py", "reconstruct", "白日依山尽", "疑是地上霜", "--run", overfit_run.dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "白日依山尽\t白日依山尽\n疑是地上霜\t疑是地上霜\n"
    r = run_cli("generate.py", "complete", "白日依山_", "_前明月光", "--run", overfit_run.dir)
    assert r.stdout == "白日依山_\t白日依山尽\n_前明月光\t床前明月光\n"


def test_evaluate_prints_table_and_writes_eval_json(cli_run):
    r = run_cli("generate.py", "evaluate", "--run", cli_run, "--iw-samples", "10",
                "--num-samples", "20", "--split", "train")
    assert r.returncode == 0, r.stderr
    assert "IW-NLL" in r.stdout and "active units" in r.stdout
    assert json.loads((cli_run / "eval.json").read_text())["iw_samples"] == 10


# -- bad inputs ---------------------------------------------------------------------------

def test_corpus_that_does_not_exist(tmp_path):
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "nope.txt", cwd=tmp_path),
                          "not found")


def test_corpus_that_is_a_directory(tmp_path):
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path, cwd=tmp_path), "directory")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n\r\n"], ids=["empty", "blank-lines"])
def test_empty_corpus(tmp_path, content):
    (tmp_path / "c.txt").write_bytes(content)
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", cwd=tmp_path),
                          "no non-blank lines")


def test_non_utf8_corpus_names_file_and_line(tmp_path):
    (tmp_path / "c.txt").write_bytes("白日依山尽\n".encode() + b"\xff\xfe bad\n")
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", cwd=tmp_path),
                          "c.txt: line 2", "--skip-bad-lines")


def test_bom_and_crlf_are_accepted_and_bad_lines_skipped_on_request(tmp_path):
    raw = "\ufeff" + "".join(s + "\r\n" for s in POEM_LINES)
    (tmp_path / "c.txt").write_bytes(raw.encode() + b"\xff\n")
    r = run_cli("train.py", "--corpus", tmp_path / "c.txt", "--skip-bad-lines",
                "--out", tmp_path / "run", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["max_chars"] == 5  # no BOM or \r counted as characters
    assert config["data"]["skipped"]["not_utf8"] == 1


def test_lines_longer_than_max_chars_are_skipped_and_counted(tmp_path):
    write_corpus(tmp_path / "c.txt", POEM_LINES + ["朝辞白帝彩云间"])
    r = run_cli("train.py", "--corpus", tmp_path / "c.txt", "--max-chars", "5",
                "--out", tmp_path / "run", *TINY, cwd=tmp_path)
    assert r.returncode == 0 and "skipped 1 lines" in r.stdout


@pytest.mark.parametrize("flags,fragment", [
    (["--epochs", "-1"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"), (["--kl-schedule", "wild"], "--kl-schedule"),
    (["--encoder", "gru"], "--encoder"), (["--device", "tpu9"], "--device"),
])
def test_numeric_and_choice_flags_out_of_range(tmp_path, flags, fragment):
    write_corpus(tmp_path / "c.txt", POEM_LINES)
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", *flags,
                                  cwd=tmp_path), fragment)


def test_existing_run_folder_is_not_overwritten(cli_run, tmp_path):
    before = snapshot(cli_run)
    write_corpus(tmp_path / "c.txt", POEM_LINES)
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", "--out",
                                  cli_run, cwd=tmp_path), "already exists", "--resume")
    assert snapshot(cli_run) == before


@pytest.mark.parametrize("args,fragment", [
    (["interpolate", "白日依山尽", "麒麟在天上"], "'麒'"),
    (["reconstruct", "白日依山尽白"], "at most 5"),
    (["encode", ""], "empty"),
    (["interpolate", "白日依山尽", "床前明月光", "--steps", "1"], "--steps"),
    (["sample", "--temperature", "-1"], "--temperature"),
    (["sample", "--top-k", "-2"], "--top-k"),
    (["sample", "--num", "0"], "--num"),
    (["sample", "--keywords", "月秋"], "--keywords"),
    (["sample", "--theme-weight", "2"], "--theme-weight"),
    (["shift", "白日依山尽", "--toward", "龙"], "no training line"),
    (["similar", "白日依山尽", "--k", "0"], "--k"),
    (["map", "--out", "/nonexistent/dir/map.png"], "does not exist"),
    (["serve", "--port", "0"], "--port"),
])
def test_generate_bad_inputs(cli_run, args, fragment):
    before = snapshot(cli_run)
    assert_one_line_error(run_cli("generate.py", *args, "--run", cli_run), fragment)
    assert snapshot(cli_run) == before


def test_unknown_character_maps_to_unk_only_when_asked(overfit_run):
    r = run_cli("generate.py", "reconstruct", "白日麒山尽", "--run", overfit_run.dir)
    assert r.returncode == 2 and "'麒'" in r.stderr
    r = run_cli("generate.py", "reconstruct", "白日麒山尽", "--allow-unk", "--run",
                overfit_run.dir)
    assert r.returncode == 0, r.stderr
    line, rec = r.stdout.rstrip("\n").split("\t")
    assert line == "白日麒山尽" and len(rec) == 5 and "□" not in rec


def test_run_folder_missing_or_incomplete(cli_run, tmp_path):
    # In a process of its own: one line on stderr, no traceback.
    assert_one_line_error(run_cli("generate.py", "--run", tmp_path / "none", own_process=True),
                          "not found")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (broken / name).write_bytes((cli_run / name).read_bytes())
    assert_one_line_error(run_cli("generate.py", "--run", broken), "model.safetensors")


def test_truncated_weights_are_refused(cli_run, tmp_path):
    run = copy_run_files(cli_run, tmp_path / "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("generate.py", "--run", run), "safetensors")


def test_config_and_tokenizer_mismatch_names_both_values(cli_run, tmp_path):
    run = copy_run_files(cli_run, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    real = cfg["model"]["vocab_size"]
    cfg["model"]["vocab_size"] = real + 7
    (run / "config.json").write_text(json.dumps(cfg))
    # In a process of its own: an error found once torch and the run's files are read.
    assert_one_line_error(run_cli("generate.py", "--run", run, own_process=True), str(real),
                          str(real + 7))
    cfg["model"]["vocab_size"] = real
    cfg["model"]["latent"] = 9
    (run / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("generate.py", "--run", run), "latent=9")


# -- found by trials as a new user ---------------------------------------------------------

def test_out_folder_under_a_regular_file(tmp_path):
    write_corpus(tmp_path / "c.txt", POEM_LINES)
    (tmp_path / "f.txt").write_text("x")
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", "--out",
                                  tmp_path / "f.txt" / "run", cwd=tmp_path), "is a file")


@pytest.mark.parametrize("lines,fragment", [(["白日依山尽"] * 3, "1 distinct line"),
                                            (["白日依山尽", "黄河\x00海流"], "NUL")])
def test_corpus_of_one_line_or_with_nul_characters(tmp_path, lines, fragment):
    write_corpus(tmp_path / "c.txt", lines)
    # In a process of its own: train.py's errors found once the corpus is read.
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", cwd=tmp_path,
                                  own_process=True), fragment)


def test_even_kernel_is_one_line(tmp_path):
    write_corpus(tmp_path / "c.txt", POEM_LINES)
    assert_one_line_error(run_cli("train.py", "--corpus", tmp_path / "c.txt", "--kernel", "4",
                                  cwd=tmp_path), "--kernel")


@pytest.mark.parametrize("device", ["cuda", "tpu9"])
def test_generate_on_a_device_this_machine_lacks(cli_run, device):
    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(run_cli("generate.py", "--run", cli_run, "--device", device),
                          "--device")


def test_a_huge_num_streams_poems_at_once(cli_run):
    import os
    import subprocess
    import sys
    from .conftest import ROOT
    proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "--run", str(cli_run),
                             "--num", "1000000000000"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.kill()
        proc.wait()
    assert all(len(s.strip()) > 0 for s in first[:4]) and first[4] == "\n"


def test_lstm_encoder_and_su2018_preset_train_on_real_lines_and_generate(tmp_path):
    write_corpus(tmp_path / "c.txt", POEM_LINES * 2)
    for flags in (["--encoder", "lstm", "--no-enc-positions"], ["--preset", "su2018"]):
        out = tmp_path / flags[1]
        r = run_cli("train.py", "--corpus", tmp_path / "c.txt", "--out", out, *TINY, *flags,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        config = json.loads((out / "config.json").read_text())
        if flags[0] == "--preset":
            assert config["model"]["refiner_layers"] == 0 and config["train"]["beta_max"] == 1.0
            assert config["model"]["enc_positions"] is False  # as Su's model
        else:
            assert config["model"]["encoder"] == "lstm"
            assert config["model"]["enc_positions"] is False  # a --no- flag is heard
        r = run_cli("generate.py", "--run", out, "--num", "2")
        assert r.returncode == 0 and len(r.stdout.split()) == 8, r.stderr
        assert all(len(s) == 5 for s in r.stdout.split())


def test_skip_nonfinite_skips_instead_of_stopping(tmp_path):
    write_corpus(tmp_path / "c.txt", POEM_LINES)
    r = run_cli("train.py", "--corpus", tmp_path / "c.txt", "--out", tmp_path / "run", *TINY,
                "--lr", "1e30", "--grad-clip", "0", "--skip-nonfinite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
               if x.strip()]
    used, steps = sum(r["steps_used"] for r in records), records[-1]["step"]
    assert 0 < used < steps, (used, steps)  # some steps trained, the non-finite ones skipped


def test_variable_length_corpus_generates_and_completes(tmp_path):
    lines = ["山高月小", "水落石出", "白日依山尽", "春风又绿江南岸", "明月", "江流天地外"] * 2
    write_corpus(tmp_path / "c.txt", lines)
    out = tmp_path / "run"
    r = run_cli("train.py", "--corpus", tmp_path / "c.txt", "--out", out, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("generate.py", "--run", out, "--num", "3", "--seed", "2")
    assert r.returncode == 0 and len(r.stdout.split()) == 12, (r.stdout, r.stderr)
    assert all(1 <= len(s) <= 7 and "□" not in s for s in r.stdout.split())
    r = run_cli("generate.py", "complete", "_风__江", "--run", out)
    line = r.stdout.split("\t")[1].strip()
    assert r.returncode == 0 and len(line) >= 5 and line[1] == "风" and line[4] == "江"
