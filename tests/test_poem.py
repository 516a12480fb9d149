"""The poem chain (poem.py): p(z_t | z_<t) over the lines' latents, fitted on stanzas
with the line VAE frozen, saved in the run folder, and used to write and continue poems."""
import json

import pytest
import torch

from textvae.errors import UserError
from textvae.model import log_normal
from textvae.poem import (ChainConfig, LatentChain, association, association_bits, fit_chain,
                          read_stanzas)
from textvae.run import CHAIN, CONTEXT, load_run, save_chain

from .conftest import POEM_LINES, copy_run_files, run_cli, write_corpus
from .test_cli import TINY, assert_one_line_error

QUATRAINS = [POEM_LINES[:4], POEM_LINES[4:]]


@pytest.fixture(scope="module")
def chained_run(overfit_run, tmp_path_factory):
    folder = copy_run_files(overfit_run.dir, tmp_path_factory.mktemp("chain") / "run")
    chain, figures = fit_chain(load_run(folder), QUATRAINS * 100, QUATRAINS, seconds=60,
                               log=lambda *a: None, steps=400)  # steps: not the clock
    save_chain(folder, chain, figures)
    return load_run(folder)


def test_the_chain_writes_on_the_poems_it_was_fitted_on(chained_run):
    # One candidate a line: the chain's own draws, not the line choice, write the poem.
    # A draw now and then lands on another line of the eight (5 of 6 poems at some seeds,
    # whichever optimiser fitted the lines); a chain that learnt nothing gets few right.
    right = sum(poem == [first, *rest] for seed in range(3)
                for first, rest in ((POEM_LINES[0], POEM_LINES[1:4]),
                                    (POEM_LINES[4], POEM_LINES[5:]))
                for poem in chained_run.continue_poem(first, n=3, seed=seed, line_candidates=1))
    assert right >= 15, right  # of 18
    fit = chained_run.config["chain_fit"]
    assert fit["valid_nll"] < fit["valid_nll_independent"] - 1, fit


def test_association_prefers_characters_of_the_same_stanza():
    stanzas = torch.tensor([[[4, 5], [6, 7]], [[8, 9], [10, 11]]]).repeat(30, 1, 1)
    assoc, log_unigram = association(stanzas, 12, min_lines=1)
    line = torch.tensor([[4, 5]])
    own, other = association_bits(assoc, line, torch.tensor([[6, 7]])), \
        association_bits(assoc, line, torch.tensor([[10, 11]]))
    assert own.item() > 0 > other.item()
    same = torch.tensor([[4, 4]])
    assert association_bits(assoc, same, same).item() == 0  # a repeat is no association
    assert torch.allclose(log_unigram[4:].exp().sum(), torch.tensor(1.0))


def test_independent_lines_do_not_follow_each_other(chained_run):
    poems = chained_run.poems(12, seed=2, independent=True)
    assert any(p not in QUATRAINS for p in poems)


def test_the_chain_density_is_a_diagonal_gaussian():
    z, m, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    want = torch.distributions.Normal(m, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(log_normal(z, m, logvar), want, atol=1e-5)


def test_a_line_is_drawn_only_from_the_lines_before_it():
    chain = LatentChain(ChainConfig(latent=4, hidden=8)).eval()
    z = torch.randn(1, 4, 4)
    later = z.clone()
    later[0, 2:] += 5.0
    with torch.no_grad():
        a, b = chain(z)[0], chain(later)[0]
    assert torch.equal(a[0, :3], b[0, :3]) and not torch.allclose(a[0, 3], b[0, 3])


def test_the_chain_loads_back_and_a_missing_file_is_one_clear_error(chained_run, tmp_path):
    again = load_run(chained_run.dir)
    for k, v in chained_run.chain.state_dict().items():
        assert torch.equal(v, again.chain.state_dict()[k])
    broken = copy_run_files(chained_run.dir, tmp_path / "broken")
    (broken / CHAIN).unlink()
    with pytest.raises(UserError, match="missing weights file"):
        load_run(broken)


def test_stanzas_of_another_shape_are_left_out(tmp_path):
    f = write_corpus(tmp_path / "poems.txt", ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
                                              "床前明月光，疑是地上霜。", "春眠不觉晓，处处闻啼鸟。夜来，花落。"])
    assert read_stanzas(f, 4, {5}) == [POEM_LINES[:4]]


@pytest.mark.slow
def test_train_with_poems_saves_a_chain_that_generate_continues(tmp_path):
    corpus = write_corpus(tmp_path / "lines.txt", POEM_LINES * 2)
    stanzas = write_corpus(tmp_path / "stanzas.txt",
                           ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
                            "床前明月光，疑是地上霜。春眠不觉晓，处处闻啼鸟。"] * 60)
    r = run_cli("train.py", "--corpus", corpus, "--out", tmp_path / "run", *TINY,
                "--poems", stanzas, "--poem-minutes", "0.05", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / CHAIN).exists() and (tmp_path / "run" / CONTEXT).exists()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "chain" in config and "context" in config
    assert config["train"]["poems"] == "../stanzas.txt"  # the folders can move together
    r = run_cli("generate.py", "--run", tmp_path / "run", "continue", "白日依山尽", "--num", "2")
    assert r.returncode == 0, r.stderr
    poems = r.stdout.strip().split("\n\n")
    assert len(poems) == 2 and all(p.splitlines()[0] == "白日依山尽" and len(p.splitlines()) == 4
                                   for p in poems)
    r = run_cli("generate.py", "--run", tmp_path / "run", "continue", "白日依山尽", "黄河入海流",
                "欲穷千里目", "更上一层楼")
    assert_one_line_error(r, "nothing left to write")
    # With no --form, a poem model of five-character lines writes 五绝 with their tones,
    # as couplets; --form free, --independent or --acrostic write free lines.
    r = run_cli("generate.py", "--run", tmp_path / "run", "--num", "2")
    assert r.returncode == 0, r.stderr
    for poem in r.stdout.strip().split("\n\n"):
        assert [len(c) for c in poem.splitlines()] == [12, 12] and poem.count("。") == 2
    for flags in (["--form", "free"], ["--independent"], ["--acrostic", "白黄欲更"]):
        r = run_cli("generate.py", "--run", tmp_path / "run", "--num", "2", *flags)
        assert r.returncode == 0, r.stderr
        assert [len(p.splitlines()) for p in r.stdout.strip().split("\n\n")] == [4, 4], flags
    # The poem chain draws each line's z, so the walk's --coherence would be dropped.
    r = run_cli("generate.py", "--run", tmp_path / "run", "--coherence", "0.3")
    assert_one_line_error(r, "--coherence sets the walk")


def test_a_poem_model_without_a_refiner_is_refused_before_training(tmp_path):
    from textvae.config import configs
    assert configs("su2018")[0].poems == "none"  # the baseline has none
    corpus = write_corpus(tmp_path / "lines.txt", POEM_LINES * 2)
    stanzas = write_corpus(tmp_path / "stanzas.txt", ["，".join(POEM_LINES[:4])] * 120)
    r = run_cli("train.py", "--corpus", corpus, "--out", tmp_path / "run", *TINY,
                "--poems", stanzas, "--refiner-layers", "0", cwd=tmp_path)
    assert_one_line_error(r, "--refiner-layers 0 needs --poems none")
    assert not (tmp_path / "run").exists()


def toy_vocab(chars):
    """A stand-in run with a vocabulary of the special ids and ``chars``, and ids(*lines)
    -> (n, L) ids of space-separated lines, for poem.faults."""
    from types import SimpleNamespace
    chars = "<pad> <unk> <s> </s>".split() + chars.split()
    run = SimpleNamespace(tokenizer=SimpleNamespace(index={c: i for i, c in enumerate(chars)}))

    def ids(*lines):
        return torch.tensor([[chars.index(c) for c in t.split()] for t in lines], dtype=torch.long)
    return run, ids


def test_a_candidate_pays_for_echoes_and_numerals_past_the_poems_second_or_its_own_first():
    from textvae.poem import WEIGHTS, faults
    run, ids = toy_vocab("山 水 月 一 三 十 风")
    before = ids("山 水 月 <pad> <pad>")
    assert faults(run, ids("风 风 风 <pad> <pad>"), before).item() == 0       # <pad> is no echo
    assert faults(run, ids("风 山 风 风 风"), before).item() == WEIGHTS["echo"]
    assert faults(run, ids("风 山 水 风 风"), before).item() == 2 * WEIGHTS["echo"]
    assert faults(run, ids("风 山 风 风 风"), ids("山 山 山 月 月")).item() == WEIGHTS["echo"]
    two = ids("一 十 月 <pad> <pad>")
    assert faults(run, ids("风 三 风 风 风"), ids("山 一 <pad> <pad> <pad>")).item() == 0
    assert faults(run, ids("风 三 风 风 风"), two).item() == WEIGHTS["numerals"]
    # A numeral beyond a line's first costs as one beyond the poem's second (三千 / 三十
    # opened a quarter of the 五绝 when only the poem's were counted).
    assert faults(run, ids("三 十 风 风 风"), ids("山 水 <pad> <pad> <pad>")).item() == \
        WEIGHTS["numerals"]
    three = ids("三 十 一 风 风")
    assert faults(run, three, ids("山 水 <pad> <pad> <pad>")).item() == 3 * WEIGHTS["numerals"]


def test_a_candidate_pays_for_function_characters_it_adds_past_the_poems_third_or_its_first():
    from textvae.poem import WEIGHTS, faults
    run, ids = toy_vocab("山 水 月 不 何 之 风")
    w, echo = WEIGHTS["particles"], WEIGHTS["echo"]
    assert w > 0
    lines = ids("风 不 山 水 月", "风 不 山 水 月", "不 何 山 水 月", "不 何 之 水 月",
                "不 何 之 水 月", "风 不 山 水 月")
    before = ids("何 之 <pad> <pad> <pad>", "何 之 何 <pad> <pad>", "风 风 <pad> <pad> <pad>",
                 "风 风 <pad> <pad> <pad>", "风 之 <pad> <pad> <pad>", "何 之 何 之 <pad>")
    # Two in one line cost one weight even early in the poem (非吾非所忘 未必以为之); an
    # excess the lines before already had is not charged again (the last row).
    assert faults(run, lines, before).tolist() == [0, w, w, 2 * w, 3 * w + echo, w]
    first = faults(run, ids("不 何 之 水 月", "风 山 水 月 不"), torch.zeros(2, 0, dtype=torch.long))
    assert first.tolist() == [2 * w, 0]


def test_the_poem_models_lines_are_read_at_0_8_and_lines_alone_at_0_5(chained_run,
                                                                      monkeypatch):
    from textvae import decoding, sampling
    real, used = decoding.write_lines, []

    def noting(run, z, noise, sc, **kw):
        used.append(round(float(torch.as_tensor(noise).max()), 6))
        return real(run, z, noise, sc, **kw)
    monkeypatch.setattr(decoding, "write_lines", noting)   # chain_poems imports it late
    monkeypatch.setattr(sampling, "write_lines", noting)
    for noise, poem, alone in ((None, 0.8, 0.5), (0.3, 0.3, 0.3), (0.0, 0.0, 0.0)):
        used.clear()
        chained_run.poems(1, seed=1, line_candidates=2, noise=noise)
        assert used == [poem] * 4, noise
        used.clear()
        chained_run.poems(1, seed=1, independent=True, noise=noise)
        chained_run.sample(2, seed=1, noise=noise)
        assert used and set(used) == {alone}, noise


def test_more_poems_only_add_to_the_poems_a_seed_wrote(chained_run):
    from textvae.sampling import batch_sizes
    assert [w for w, _ in batch_sizes(200, 64)] == [1, 1, 2, 4, 8, 16, 32, 64, 64, 64]
    for kw in ({"line_candidates": 2}, {"independent": True}, {"form": "wujue", "tones": True}):
        nine = chained_run.poems(9, seed=6, **kw)
        assert len(nine) == 9 and len({tuple(p) for p in nine}) > 1, kw
        for n in (1, 3, 5):
            assert chained_run.poems(n, seed=6, **kw) == nine[:n], (kw, n)


def test_a_form_on_the_poem_model_writes_every_candidate_and_keeps_batches_small(
        chained_run, monkeypatch):
    from textvae import poetry, sampling
    from textvae.decoding import SampleConfig
    from textvae.prosody import form_named
    real, sizes = poetry.write_lines, []

    def noting(run, z, *a, **kw):
        sizes.append(len(z))
        return real(run, z, *a, **kw)
    monkeypatch.setattr(poetry, "write_lines", noting)
    monkeypatch.setattr(sampling, "LINES_A_BATCH", 64)  # so 2 poems of 32 candidates a batch
    pc = poetry.PoemConfig(form_named("wujue"), tones=True, candidates=32)
    assert len(list(poetry.write_poems(chained_run, pc, 5, SampleConfig(seed=1)))) == 5
    # Batches of 1, 1, 2 and 2 poems (sampling.batch_sizes), 4 lines each: every candidate.
    assert sizes == [32] * 8 + [64] * 8


def test_a_form_on_the_poem_model_keeps_rhyme_tones_and_acrostic(chained_run):
    from .test_poetry import assert_forms_kept
    assert_forms_kept(chained_run)   # the chain's draws, every one written and ranked


def test_the_poem_models_lines_are_drawn_at_0_5_unless_told(chained_run, monkeypatch):
    from textvae import decoding
    real, used = decoding.write_ids, []

    def noting(model, lengths, z, noise, sc, *a, **kw):
        used.append(sc.temperature)
        return real(model, lengths, z, noise, sc, *a, **kw)
    monkeypatch.setattr(decoding, "write_ids", noting)
    for kw, poem, alone in (({}, 0.5, 0.7), ({"temperature": 0.9}, 0.9, 0.9)):
        used.clear()
        chained_run.poems(1, seed=1, line_candidates=2, **kw)
        chained_run.continue_poem(POEM_LINES[0], seed=1, line_candidates=2, **kw)
        chained_run.poems(1, form="wujue", tones=True, seed=1, **kw)
        assert used == [poem] * 11, kw
        used.clear()
        chained_run.poems(1, seed=1, independent=True, **kw)
        chained_run.sample(2, seed=1, **kw)
        assert used and set(used) == {alone}, kw
