import json

import torch

from textvae.generate import SampleConfig, complete, interpolate, reconstruct, sample
from textvae.run import load_run

from .conftest import POEM_LINES


def test_overfitting_eight_lines_reconstructs_them_exactly(overfit_run):
    assert reconstruct(overfit_run, POEM_LINES) == POEM_LINES


def test_interpolation_endpoints_decode_to_the_inputs(overfit_run):
    for how in ("linear", "spherical"):
        path = interpolate(overfit_run, "白日依山尽", "床前明月光", steps=6, how=how)
        assert len(path) == 6
        assert path[0] == "白日依山尽" and path[-1] == "床前明月光"


def test_save_then_load_gives_identical_outputs(overfit_run):
    again = load_run(overfit_run.dir)
    idx = torch.tensor([overfit_run.tokenizer.encode(s, 5) for s in POEM_LINES])
    with torch.no_grad():
        a = overfit_run.model.decode(overfit_run.model.encode(idx)[0])
        b = again.model.decode(again.model.encode(idx)[0])
    assert torch.equal(a, b)
    assert sample(again, 5, SampleConfig(seed=3)) == sample(overfit_run, 5, SampleConfig(seed=3))


def test_samples_are_reproducible_and_well_formed(overfit_run):
    a = sample(overfit_run, 20, SampleConfig(seed=1, top_k=5))
    assert a == sample(overfit_run, 20, SampleConfig(seed=1, top_k=5))
    assert all(len(s) == 5 and "□" not in s for s in a)


def test_complete_keeps_the_given_characters(overfit_run):
    line = complete(overfit_run, "白日__尽")[0]
    assert len(line) == 5 and line[:2] == "白日" and line[4] == "尽"


def test_run_folder_is_self_contained(overfit_run):
    names = {p.name for p in overfit_run.dir.iterdir()}
    assert {"config.json", "tokenizer.model", "model.safetensors", "metrics.jsonl",
            "checkpoints"} <= names
    config = json.loads((overfit_run.dir / "config.json").read_text())
    assert config["model"]["max_len"] == 5 and config["data"]["form"]["lengths"] == [5]
