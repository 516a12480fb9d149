"""The Python API, as the README shows it, and what a run folder stores about paths."""
import json
import os
import re
from pathlib import Path

import pytest

from textvae.data import corpus_of_run

from .conftest import POEM_LINES, ROOT, run_cli


def readme_api_example():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs(overfit_run, capsys):
    code = readme_api_example().replace('"runs/tang5"', repr(str(overfit_run.dir)))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "白日依山尽" in out  # the example reconstructs it


def test_api_methods_return_what_the_cli_prints(overfit_run):
    import textvae
    run = textvae.load_run(overfit_run.dir)
    assert run.reconstruct(POEM_LINES) == POEM_LINES
    assert len(run.sample(3)) == 3
    path = run.interpolate(POEM_LINES[0], POEM_LINES[4], steps=5)
    assert path[0] == POEM_LINES[0] and path[-1] == POEM_LINES[4]
    mu, logvar = run.encode(POEM_LINES[:2])
    assert mu.shape == logvar.shape == (2, run.model.cfg.latent)
    assert run.complete("白日依山_")[0].startswith("白日依山")
    assert all(len(p) == 4 for p in run.poems(2, form="wujue", tones=True))


def test_config_stores_paths_relative_to_the_run_folder(overfit_run):
    raw = json.loads((Path(overfit_run.dir) / "config.json").read_text(encoding="utf-8"))
    for key in ("corpus", "data_dir"):
        assert not os.path.isabs(raw["train"][key]), raw["train"][key]
    assert corpus_of_run(overfit_run).train  # and they still lead to the corpus


@pytest.mark.slow
def test_bare_help_lists_the_default_commands_options():
    r = run_cli("generate.py", "--help")
    assert r.returncode == 0 and "--num" in r.stdout and "--form" in r.stdout


@pytest.mark.parametrize("args, field, value", [
    (["sample", "--temperature", "0.5"], "temperature", 0.5),
    (["interpolate", "a", "b", "--stay", "3"], "stay", 3.0),
    (["sample", "--top-k", "7", "--independent"], "top_k", 7),
    (["sample", "--noise", "0.5"], "noise", 0.5)])
def test_sampling_flags_come_from_sample_config_with_its_types(args, field, value):
    from textvae.cli import _sample_config, generate_parser
    sc = _sample_config(generate_parser().parse_args(args))
    assert getattr(sc, field) == value and type(getattr(sc, field)) is type(value)
