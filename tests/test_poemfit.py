"""A run's poem model fitted after its line model (poemfit.py): the time it gets, the
checkpoint a cut fit goes on from, and the line weights it is tied to."""
import os
import shutil
import signal

import pytest
import torch

import textvae.context
import textvae.poemfit as poemfit
from textvae.poemfit import (CONTEXT_CKPT, fit_run_chain, poem_seconds, read_context_checkpoint,
                             weights_digest)
from textvae.run import CONTEXT, load_run, read_saved_config, save_weights, update_config

from .conftest import POEM_LINES, copy_run_files, write_corpus


def _poem_run(src, tmp_path, **train):
    """A copy of the run ``src`` set to fit a poem model on two quatrains in 6 seconds."""
    folder = copy_run_files(src, tmp_path / "run")
    stanzas = write_corpus(tmp_path / "stanzas.txt",
                           ["，".join(POEM_LINES[:4]), "，".join(POEM_LINES[4:])] * 60)
    settings = {"poems": str(stanzas), "poem_minutes": 0.1, "poem_context": True, **train}
    update_config(folder, lambda c: c["train"].update(settings))
    return folder


def test_a_context_fit_cut_short_goes_on_from_its_checkpoint(overfit_run, tmp_path,
                                                             monkeypatch):
    folder = _poem_run(overfit_run.dir, tmp_path)
    real_fit = poemfit.fit_context

    def cut_at_3(*args, keep, **kwargs):
        def save_then_stop(state):
            keep.save(state)
            if state["steps"] == 3:
                raise KeyboardInterrupt
        return real_fit(*args, keep=poemfit.Keep(save_then_stop, every=0), **kwargs)
    monkeypatch.setattr(poemfit, "fit_context", cut_at_3)
    with pytest.raises(KeyboardInterrupt):
        fit_run_chain(folder, log=lambda *a: None)
    config = read_saved_config(folder)
    assert "chain_fit" in config and not (folder / CONTEXT).exists()
    saved = read_context_checkpoint(folder, config, weights_digest(folder))
    assert saved["steps"] == 3
    monkeypatch.setattr(poemfit, "fit_context", real_fit)
    said = []
    fit_run_chain(folder, log=said.append)
    assert said[0].startswith("poem context: going on from step 3 "), said
    fit = read_saved_config(folder)["context_fit"]
    assert fit["steps"] > 3 and fit["seconds"] >= saved["elapsed_s"]
    assert (folder / CONTEXT).exists() and not (folder / CONTEXT_CKPT).exists()
    said.clear()
    fit_run_chain(folder, log=said.append)
    assert said == ["the poem model is fitted already"]


def test_a_cut_fit_goes_on_with_the_settings_it_began_with(overfit_run, tmp_path, monkeypatch):
    # 30 s, not 6: the fits are cut at their third and sixth steps, which a loaded
    # machine did not reach in 6 s; the last fit, whole, gets 6.
    folder = _poem_run(overfit_run.dir, tmp_path, context_layers=1, poem_minutes=0.5)
    real_fit, used = poemfit.fit_context, []

    def note(kwargs):
        used.append({k: kwargs[k] for k in ("lr", "dropout", "extra_layers")})

    def cut_every_3(*args, keep, **kwargs):
        note(kwargs)

        def save_then_stop(state):
            keep.save(state)
            if state["steps"] % 3 == 0:
                raise KeyboardInterrupt
        return real_fit(*args, keep=poemfit.Keep(save_then_stop, every=0), **kwargs)
    monkeypatch.setattr(poemfit, "fit_context", cut_every_3)
    for _ in range(2):  # begun, then gone on with: the settings are kept with the fit
        with pytest.raises(KeyboardInterrupt):
            fit_run_chain(folder, log=lambda *a: None)
    assert used == [{"lr": textvae.context.LR, "dropout": 0.0, "extra_layers": 1}] * 2
    state = torch.load(folder / CONTEXT_CKPT, weights_only=False)
    del state["fit"]  # a checkpoint kept before its settings were: 2e-3, the run's dropout
    torch.save(state, folder / CONTEXT_CKPT)

    def note_only(*args, **kwargs):
        note(kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(poemfit, "fit_context", note_only)
    with pytest.raises(KeyboardInterrupt):
        fit_run_chain(folder, log=lambda *a: None)
    assert used[2] == {"lr": 2e-3, "dropout": load_run(folder).model.cfg.dropout,
                       "extra_layers": 0}
    monkeypatch.setattr(poemfit, "fit_context", real_fit)
    (folder / CONTEXT_CKPT).unlink()
    update_config(folder, lambda c: c["train"].update(poem_minutes=0.1))
    fit_run_chain(folder, log=lambda *a: None)
    run = load_run(folder)
    assert len(run.context.ref.blocks.layers) == len(run.model.refiner.blocks.layers) + 1


def test_a_poem_model_fitted_to_other_line_weights_is_set_aside_then_fitted_again(
        overfit_run, tmp_path, capsys):
    folder = _poem_run(overfit_run.dir, tmp_path, poem_context=False)
    fit_run_chain(folder, log=lambda *a: None)
    said = []
    fit_run_chain(folder, log=said.append)
    assert said == ["the poem model is fitted already"]
    assert load_run(folder).chain is not None
    model = load_run(folder).model  # the line model trains on (--resume), and stops there
    with torch.no_grad():
        model.embed.weight.add_(0.01)
    save_weights(folder, model)
    capsys.readouterr()
    assert load_run(folder).chain is None
    assert "poem model was fitted to other line weights" in capsys.readouterr().err
    said.clear()
    fit_run_chain(folder, log=said.append)
    assert "the poem model is fitted already" not in said
    assert load_run(folder).chain is not None


def _signal_at(monkeypatch, module, name, calls):
    """Send this process SIGINT on the ``calls``-th call of module.name, as a Ctrl-C."""
    real, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)


def test_ctrl_c_in_the_context_fit_saves_it_at_the_next_step(overfit_run, tmp_path,
                                                            monkeypatch):
    folder = _poem_run(overfit_run.dir, tmp_path)
    _signal_at(monkeypatch, textvae.context, "stanza_loss", 3)
    with pytest.raises(KeyboardInterrupt):
        fit_run_chain(folder, log=lambda *a: None)
    saved = read_context_checkpoint(folder, read_saved_config(folder), weights_digest(folder))
    assert saved["steps"] == 3 and not (folder / CONTEXT).exists()


def test_ctrl_c_after_the_last_step_keeps_the_fitted_refiner(overfit_run, tmp_path,
                                                            monkeypatch):
    folder = _poem_run(overfit_run.dir, tmp_path)
    _signal_at(monkeypatch, textvae.context, "lm_nats", 1)  # the held-out figures
    with pytest.raises(KeyboardInterrupt):
        fit_run_chain(folder, log=lambda *a: None)
    assert (folder / CONTEXT).exists() and not (folder / CONTEXT_CKPT).exists()
    said = []
    fit_run_chain(folder, log=said.append)
    assert said == ["the poem model is fitted already"]


def test_a_cut_fit_on_stanzas_changed_since_starts_anew(overfit_run, tmp_path, monkeypatch):
    folder = _poem_run(overfit_run.dir, tmp_path)
    _signal_at(monkeypatch, textvae.context, "stanza_loss", 3)
    with pytest.raises(KeyboardInterrupt):
        fit_run_chain(folder, log=lambda *a: None)
    monkeypatch.undo()
    backwards = [l[::-1] for l in POEM_LINES]  # the same count of stanzas, other ones
    write_corpus(tmp_path / "stanzas.txt", ["，".join(backwards[:4]), "，".join(backwards[4:])] * 60)
    said = []
    fit_run_chain(folder, log=said.append)
    assert "the --poems stanzas changed since the poem model's fit began; fitting it anew" in said
    assert not any(s.startswith("poem context: going on") for s in said)


def test_the_poem_model_gets_what_the_budget_leaves_after_the_line_model():
    hour = {"minutes": 60.0, "poem_minutes": 40.0}
    assert poem_seconds(hour, [{"elapsed_s": 1000.0}, {"elapsed_s": 1268.8}]) == 3600 - 1268.8
    assert poem_seconds(hour, [{"elapsed_s": 900.0}]) == 2400                # its own at most
    assert poem_seconds({**hour, "minutes": 0.0}, [{"elapsed_s": 9e9}]) == 2400  # no budget
    assert poem_seconds(hour, []) == 2400
    # A line model past its share (--max-steps, a resume) leaves the poem model its own
    # share of the budget still: half of it here.
    assert poem_seconds(hour, [{"elapsed_s": 4000.0}]) == 1800
    default = {"minutes": 15.0, "poem_minutes": 4.5}
    assert poem_seconds(default, [{"elapsed_s": 2000.0}]) == 270


def test_a_setting_newer_than_the_run_counts_as_its_default_when_resuming(overfit_run, tmp_path):
    from textvae.errors import UserError
    from textvae.run import reopen_run
    folder = copy_run_files(overfit_run.dir, tmp_path / "run")
    shutil.copy(overfit_run.dir.parent / "lines.txt", tmp_path)  # its corpus, where it was
    update_config(folder, lambda c: c["train"].pop("context_layers", None))
    reopen_run(folder, {"context_layers": 0}, log=lambda *a: None)
    with pytest.raises(UserError, match="--context-layers cannot change when resuming"):
        reopen_run(folder, {"context_layers": 2}, log=lambda *a: None)
