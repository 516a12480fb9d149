"""The GPU path. These run where torch sees a CUDA GPU and are skipped elsewhere (CI has
none); docs/speed.md says how to run them on a GPU."""
import json
import math

import pytest
import torch

from .conftest import POEM_LINES, write_corpus

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def train_tiny(tmp_path, log=lambda *a: None, **settings):
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.trainer import train
    rotations = [s[i:] + s[:i] for s in POEM_LINES for i in range(5)]  # 40 lines
    corpus = write_corpus(tmp_path / "c.txt", rotations)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), batch_size=16,
                     iw_samples=0, device="cuda", min_steps=0, **settings)
    mc = VAEConfig(emb_dim=32, enc_hidden=32, latent=8, dec_hidden=32, refiner_dim=32,
                   refiner_heads=2)
    return train(tc, mc, log=log)


def test_a_training_step_on_the_gpu_never_waits_for_it(tmp_path, monkeypatch):
    """No host sync inside a plain step: the loop waits only at its looks (every 20)."""
    from textvae.trainer import Trainer
    real, checked = Trainer.train_step, []

    def strict(self, *args, **kwargs):
        if self.step >= 2:  # after the first steps' lazy initialisation
            torch.cuda.set_sync_debug_mode("error")
            checked.append(self.step)
        try:
            return real(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    monkeypatch.setattr(Trainer, "train_step", strict)
    train_tiny(tmp_path, max_steps=30, eval_every=10, ckpt_every=10, compile="off")
    assert len(checked) == 28


def test_a_compiled_run_trains_and_checkpoints(tmp_path):
    """--compile on: CUDA graphs for both batch shapes (full, and an epoch's last)."""
    said = []
    out = train_tiny(tmp_path, said.append, max_steps=200, eval_every=50, ckpt_every=100,
                     compile="on", lr=5e-3)
    assert not [s for s in said if "torch.compile failed" in s]  # it did not fall back
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    assert all(map(math.isfinite, (r["train_rec"] for r in records)))
    assert records[-1]["train_rec"] < records[0]["train_rec"]
    state = torch.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)
    assert state["step"] == 200
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bf16_autocast_is_chosen_where_the_gpu_has_it():
    from textvae.device import use_amp
    assert use_amp("auto", torch.device("cuda")) == torch.cuda.is_bf16_supported(False)


def test_the_poem_model_fits_on_the_gpu_and_writes_poems_there(tmp_path):
    from textvae.poemfit import fit_run_chain
    from textvae.run import load_run
    stanzas = write_corpus(tmp_path / "stanzas.txt",
                           ["，".join(POEM_LINES[:4]), "，".join(POEM_LINES[4:])] * 60)
    out = train_tiny(tmp_path, max_steps=50, poems=str(stanzas), poem_minutes=0.1,
                     compile="off")
    said = []
    fit_run_chain(out, log=said.append)
    assert any(s.startswith("poem context: ") for s in said), said
    run = load_run(out, device="cuda")
    poems = run.poems(2, seed=1, line_candidates=4)
    assert len(poems) == 2 and all(len(p) == 4 for p in poems)


def test_a_context_fit_on_the_gpu_cut_and_continued_ends_where_the_whole_fit_ends(tmp_path):
    """Its saved state holds the GPU's random stream (dropout), and restores it."""
    import copy
    from textvae.context import Keep, fit_context
    from textvae.poem import encode_splits
    from textvae.run import load_run
    out = train_tiny(tmp_path, max_steps=50, compile="off")
    run = load_run(out, device="cuda")
    quatrains = [POEM_LINES[:4], POEM_LINES[4:]]
    data = encode_splits(run, quatrains * 20, quatrains, 60)
    states, quiet = {}, (lambda *a: None)

    def save(state):
        states[state["steps"]] = copy.deepcopy(state)
    whole, _ = fit_context(run.model, data, 60, quiet, steps=20, batch=8, dropout=0.2,
                           keep=Keep(save, every=0))
    assert "cuda_rng" in states[8]
    went_on, _ = fit_context(run.model, data, 60, quiet, steps=20, batch=8, dropout=0.2,
                             saved=states[8])
    # Close, not equal to the bit: CUDA's atomic adds (the embeddings' gradients) sum in
    # any order; another dropout stream would move the weights far more.
    for k, v in whole.state_dict().items():
        assert v.is_cuda and torch.allclose(v, went_on.state_dict()[k], rtol=1e-3, atol=1e-4), k
