import pytest
"""The latent space as a user works with it: neighbours, attribute vectors, themes,
keywords, and the pictures (training curves, latent map, evaluation plot)."""
import json

import torch

from textvae.latent import INDEX, attribute, shift, similar, train_index

from .conftest import POEM_LINES, run_cli

def assert_a_drawn_png(path, min_side=300):
    """A PNG that decodes to a picture of some size with something drawn on it (not one
    colour): more than its first bytes."""
    from matplotlib.image import imread
    img = imread(path)
    assert min(img.shape[:2]) >= min_side, img.shape
    assert img[..., :3].std() > 0.05, "the picture is blank"


def test_training_draws_curves_with_train_and_valid_terms(overfit_run):
    assert_a_drawn_png(overfit_run.dir / "curves.png")
    last = [json.loads(s) for s in (overfit_run.dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"train_rec", "train_kl", "train_nelbo", "valid_rec", "valid_kl"} <= set(last)
    assert last["train_nelbo"] == last["train_rec"] + last["train_kl"]


def test_similar_finds_each_training_line_nearest_to_itself(overfit_run):
    near = similar(overfit_run, POEM_LINES, k=3)
    assert [n[0][0] for n in near] == POEM_LINES
    assert all(n[0][1] < 0.05 and n[0][1] <= n[1][1] <= n[2][1] for n in near)


def test_a_stale_index_is_recomputed(overfit_run):
    lines, mu = train_index(overfit_run)
    path = overfit_run.dir / INDEX
    from safetensors.torch import save
    # Same shape, wrong numbers, another stamp: an index of other weights.
    path.write_bytes(save({"mu": torch.randn_like(mu).half()}, metadata={"stamp": "0-0-0"}))
    again = train_index(overfit_run)[1]
    assert torch.allclose(again, mu, atol=1e-2)


def test_shift_starts_from_the_line_and_the_vector_points_toward_the_attribute(overfit_run):
    v = attribute(overfit_run, "月")  # 床前明月光 against the other seven
    _, mu = train_index(overfit_run)
    with_moon = mu[[i for i, s in enumerate(train_index(overfit_run)[0]) if "月" in s]]
    start = overfit_run.encode(["白日依山尽"])[0][0]
    assert (with_moon.mean(0) - start) @ v > 0
    path = shift(overfit_run, "白日依山尽", v, steps=4, scale=1.0)
    assert len(path) == 4 and path[0] == "白日依山尽"


def test_keywords_each_line_holds_its_keyword(overfit_run):
    lines = overfit_run.sample(6, keywords="月,河")
    assert all(("月", "河")[i % 2] in line for i, line in enumerate(lines)), lines


def test_theme_weight_decides_how_far_lines_lean_to_the_theme(overfit_run):
    assert overfit_run.sample(4, theme="黄河入海流", theme_weight=1.0) == ["黄河入海流"] * 4
    assert overfit_run.sample(4, theme="黄河入海流", theme_weight=0.0) == overfit_run.sample(4)


@pytest.mark.slow
def test_map_and_evaluate_plot_write_pngs(overfit_run, tmp_path):
    r = run_cli("generate.py", "map", "--run", overfit_run.dir, "--out", tmp_path / "m.png",
                "--colour", "tone")
    assert r.returncode == 0, r.stderr
    assert_a_drawn_png(tmp_path / "m.png")
    r = run_cli("generate.py", "evaluate", "--plot", "--split", "train", "--iw-samples", "2",
                "--num-samples", "20", "--run", overfit_run.dir)
    assert r.returncode == 0, r.stderr
    assert_a_drawn_png(overfit_run.dir / "eval.png")


@pytest.mark.slow
def test_similar_and_shift_from_the_command_line(overfit_run):
    r = run_cli("generate.py", "similar", "白日依山尽", "--k", "2", "--run", overfit_run.dir)
    assert r.returncode == 0 and r.stdout.startswith("白日依山尽\t白日依山尽 0.0"), r.stdout
    r = run_cli("generate.py", "shift", "白日依山尽", "--toward", "月", "--steps", "3",
                "--run", overfit_run.dir)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0.00  白日依山尽", r.stdout
