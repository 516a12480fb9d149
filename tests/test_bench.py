"""Every bench script runs, as documented, on a tiny corpus made here: a documented
command cannot break unseen. What they measure is not asserted (that needs real data
and minutes); that they run to their tables is."""
import json
import random
import subprocess
import sys

import pytest

from .conftest import POEM_LINES, ROOT, run_cli, write_corpus

pytestmark = pytest.mark.slow
TINY = ["--epochs", "3", "--batch-size", "8", "--emb-dim", "16", "--enc-hidden", "16",
        "--latent", "4", "--dec-hidden", "16", "--refiner-dim", "16", "--refiner-heads", "2",
        "--iw-samples", "5", "--amp", "off", "--min-steps", "0"]


def bench(script, *args, cwd):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)],
                       capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder with 400 lines of the eight poem lines' characters, 150 four-line
    stanzas of them, a small run with a poem chain, and a GRU LM's samples."""
    tmp = tmp_path_factory.mktemp("bench")
    chars, rng = "".join(POEM_LINES), random.Random(0)
    lines = sorted({"".join(rng.choice(chars) for _ in range(5)) for _ in range(400)})
    write_corpus(tmp / "lines.txt", lines)
    write_corpus(tmp / "stanzas.txt", [
        "".join(lines[(4 * i + j) % len(lines)] + "，。"[j % 2] for j in range(4))
        for i in range(150)])
    r = run_cli("train.py", "--corpus", "lines.txt", "--out", "run", *TINY,
                "--poems", "stanzas.txt", "--poem-minutes", "0.05", cwd=tmp)
    assert r.returncode == 0, r.stderr
    bench("charlm.py", "--minutes", "0.02", "--corpus", "lines.txt", "--num", "8",
          "--out", "lm", cwd=tmp)
    assert len(json.loads((tmp / "lm" / "samples.json").read_text())["samples"]) == 8
    return tmp


def test_speed_bench_runs_and_its_two_refiner_paths_agree(tiny):
    out = bench("speed.py", "--smoke", "--steps", "1", "--corpus", "lines.txt",
                "--sizes", "200", "--run", "run", cwd=tiny)
    assert "of ceiling" in out and "cached and full-pass lines identical" in out
    assert "poems, 64 candidates a line, now" in out and "--independent" in out
    assert "full passes, the draw before, one batch" in out
    assert "MFLOP a line; at the fp32 ceiling" in out


def test_quality_bench_trains_and_judges_its_three_systems(tiny):
    out = bench("quality.py", "--minutes", "0.02", "--corpus", "lines.txt",
                "--iw-samples", "2", "--max-lines", "8", "--runs", "runs", cwd=tiny)
    assert all(f"\n{name}: " in out for name in ("default", "su2018", "charlm"))


def test_poems_bench_writes_its_table_and_json(tiny):
    out = bench("poems.py", "--run5", "run", "--runq", "--lm", "lm", "--poems", "3",
                "--candidates", "2", "--rho", "0.5", "--quatrains", "stanzas.txt",
                "--seen", "lines.txt", "--json", "poems.json", cwd=tiny)
    assert "| poem chain, best of 2 |" in out
    rows = dict(json.loads((tiny / "poems.json").read_text())["rows"])
    assert rows["poem chain, best of 2"]["well_formed"] == 1.0


def test_poetry_bench_checks_its_forms(tiny):
    out = bench("poetry.py", "--run5", "run", "--run7", "none", "--poems", "2", "--no-real",
                "--acrostic", "白黄欲更床疑春处", cwd=tiny)
    assert "| wujue | constrained |" in out and "| wulv | acrostic |" in out
