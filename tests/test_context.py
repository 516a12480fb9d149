"""The poem-context refiner (context.py): one causal Transformer over a stanza's lines,
written line by line with its cache, fitted on stanzas with the line VAE frozen."""
import pytest
import torch

from textvae.context import (ContextConfig, ContextRefiner, InPoem, Keep, Written,
                             lm_inputs, fit_context, line_nats)
from textvae.errors import UserError
from textvae.model import TextVAE, VAEConfig
from textvae.poem import encode_splits, fit_chain, stanza_ids
from textvae.run import CONTEXT, load_run, save_chain, save_context

from .conftest import POEM_LINES, copy_run_files

QUATRAINS = [POEM_LINES[:4], POEM_LINES[4:]]
TINY_CFG = VAEConfig(vocab_size=50, max_len=5, latent=8, dec_hidden=16, dec_trunk=32,
                     refiner_dim=32, refiner_heads=4)


def _random_refiner():
    torch.manual_seed(0)
    cref = ContextRefiner(TINY_CFG, ContextConfig()).eval()
    torch.nn.init.normal_(cref.rows)  # zero at the start of fitting; here every row differs
    return cref


def test_writing_line_by_line_sees_what_the_whole_stanza_sees():
    cref = _random_refiner()
    ids = torch.randint(4, 50, (3, 4, 5))
    z, noise, draft = torch.randn(3, 4, 8), torch.rand(3, 4), torch.randn(3, 4, 5, 16)
    with torch.no_grad():
        whole = cref(ids, z, noise, draft)                                  # (3, 4, 5, V)
        for row in range(4):
            writer = InPoem(cref, cref.read(ids[:, :row], z[:, :row], noise[:, :row],
                                            draft[:, :row]), row,
                            ids[:, row - 1, -1] if row else torch.full((3,), cref.ref.start_id))
            cache, before = writer.start(z[:, row], noise[:, row]), \
                torch.full((3,), cref.ref.start_id)
            for t in range(5):
                h, cache = writer.step(cache, before, t, draft[:, row, t])
                assert torch.allclose(writer.out(h), whole[:, row, t], atol=1e-5), (row, t)
                before = ids[:, row, t]


def test_extra_layers_start_as_the_identity_and_then_learn():
    torch.manual_seed(0)
    line_ref = TextVAE(TINY_CFG).refiner
    plain, deeper = (ContextRefiner(TINY_CFG, ContextConfig(extra_layers=k)) for k in (0, 2))
    for cref in (plain, deeper):
        cref.copy_line_refiner(line_ref)
        torch.nn.init.normal_(cref.rows)
    deeper.rows.data.copy_(plain.rows.data)
    ids = torch.randint(4, 50, (3, 4, 5))
    z, noise, draft = torch.randn(3, 4, 8), torch.rand(3, 4), torch.randn(3, 4, 5, 16)
    plain.eval(), deeper.eval()
    assert len(deeper.ref.blocks.layers) == len(plain.ref.blocks.layers) + 2
    assert torch.allclose(plain(ids, z, noise, draft), deeper(ids, z, noise, draft), atol=1e-5)
    deeper.train()
    deeper(ids, z, noise, draft).logsumexp(-1).sum().backward()
    assert deeper.ref.blocks.layers[-1].linear2.weight.grad.abs().sum() > 0


def test_a_line_is_read_only_after_the_lines_before_it():
    cref = _random_refiner()
    ids = torch.randint(4, 50, (2, 4, 5))
    later = ids.clone()
    later[:, 2:] = torch.randint(4, 50, (2, 2, 5))
    z, noise, draft = torch.randn(2, 4, 8), torch.rand(2, 4), torch.randn(2, 4, 5, 16)
    with torch.no_grad():
        a, b = cref(ids, z, noise, draft), cref(later, z, noise, draft)
    # Line 3's first character is read after all of lines 1 and 2 and none of line 3.
    assert torch.allclose(a[:, :2], b[:, :2]) and torch.allclose(a[:, 2, 0], b[:, 2, 0])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_the_context_score_is_the_stanza_models_log_probability_of_the_line():
    cref, model = _random_refiner(), TextVAE(TINY_CFG).eval()
    context, K = torch.randint(4, 50, (3, 2, 5)), 4
    candidates = torch.randint(4, 50, (3 * K, 5))
    stanzas = torch.cat([context.repeat_interleave(K, 0), candidates.unsqueeze(1)], 1)
    with torch.no_grad():
        logp = torch.log_softmax(cref(stanzas, *lm_inputs(model, stanzas)), -1)[:, 2]
        want = logp.gather(-1, candidates.unsqueeze(-1)).squeeze(-1).sum(-1)
        assert torch.allclose(line_nats(cref, model, context, candidates), want, atol=1e-4)
        first = line_nats(cref, model, context[:, :0], candidates[:3])
        logp = torch.log_softmax(cref(candidates[:3, None], *lm_inputs(
            model, candidates[:3, None])), -1)[:, 0]
        assert torch.allclose(first, logp.gather(-1, candidates[:3, :, None]).squeeze(-1).sum(-1),
                              atol=1e-4)


def test_a_poem_longer_than_the_stanzas_is_read_through_a_window():
    so_far = Written.start(2, 5, 8)
    for i in range(5):
        so_far = so_far.add(torch.full((2, 1, 5), i), torch.randn(2, 1, 8), 0.5)
    assert so_far.ids.shape == (2, 5, 5) and so_far.last(3).ids[0, :, 0].tolist() == [2, 3, 4]
    assert so_far.last(0).ids.shape == (2, 0, 5)


@pytest.fixture(scope="module")
def context_run(overfit_run, tmp_path_factory):
    folder = copy_run_files(overfit_run.dir, tmp_path_factory.mktemp("context") / "run")
    run = load_run(folder)
    chain, figures = fit_chain(run, QUATRAINS * 100, QUATRAINS, seconds=60,
                               log=lambda *a: None, steps=200)
    save_chain(folder, chain, figures)
    data = encode_splits(run, QUATRAINS * 50, QUATRAINS, 60)
    cref, figures = fit_context(run.model, data, 60, log=lambda *a: None, steps=300,
                                batch=16, lr=3e-3)
    save_context(folder, cref, figures)
    return load_run(folder)


def test_fitted_on_stanzas_it_reads_a_line_better_after_the_lines_before(context_run):
    fit = context_run.config["context_fit"]
    assert fit["valid_lm_nats"] < fit["valid_lm_nats_alone"] - 1, fit


def test_a_run_with_a_context_refiner_writes_and_continues_poems(context_run):
    poems = context_run.poems(3, seed=1, line_candidates=4)
    assert len(poems) == 3 and all(len(p) == 4 for p in poems)
    for poem in context_run.continue_poem(POEM_LINES[0], n=2, seed=1, line_candidates=4):
        assert poem[0] == POEM_LINES[0] and len(poem) == 4
    assert len(context_run.poems(1, form="wujue", seed=1)[0]) == 4


def test_poem_lines_written_a_chunk_at_a_time_see_their_own_poems(context_run, monkeypatch):
    # Greedy, no draw shows the chunks: each chunk's lines must read their own poems'
    # lines before (InPoem.rows), or the poems change.
    from textvae import decoding
    kw = dict(seed=2, line_candidates=4, temperature=0)
    whole = context_run.poems(6, **kw)
    monkeypatch.setattr(decoding, "CHUNK", 3)
    assert context_run.poems(6, **kw) == whole


def test_a_candidate_is_scored_after_every_line_before_it_the_refiner_has_rows_for(context_run):
    from textvae.poem import WEIGHTS, association_bits, faults, line_scores
    run = context_run
    ids = stanza_ids(run, QUATRAINS)                                        # (2, 4, L)
    for T in (1, 2, 3):
        context, line = ids[:, :T], ids[:, T]
        want = (line_nats(run.context, run.model, context, line)
                - WEIGHTS["unigram"] * run.chain.log_unigram[line].sum(-1)
                + WEIGHTS["assoc"] * association_bits(run.chain.assoc, line, context.flatten(1))
                - faults(run, line, context.flatten(1)))
        assert torch.allclose(line_scores(run, line, context), want, atol=1e-4), T
    # Five lines before: the refiner has rows for four, so the last three are read.
    five = torch.cat([ids, ids[:, :1]], 1)
    got = line_scores(run, ids[:, 1], five) - WEIGHTS["assoc"] * association_bits(
        run.chain.assoc, ids[:, 1], five.flatten(1)) + faults(run, ids[:, 1], five.flatten(1))
    want = line_nats(run.context, run.model, five[:, 2:], ids[:, 1]) \
        - WEIGHTS["unigram"] * run.chain.log_unigram[ids[:, 1]].sum(-1)
    assert torch.allclose(got, want, atol=1e-4)


def test_the_context_refiner_loads_back_and_a_missing_file_is_one_clear_error(context_run,
                                                                             tmp_path):
    again = load_run(context_run.dir)
    for k, v in context_run.context.state_dict().items():
        assert torch.equal(v, again.context.state_dict()[k])
    broken = copy_run_files(context_run.dir, tmp_path / "broken")
    (broken / CONTEXT).unlink()
    with pytest.raises(UserError, match="missing weights file"):
        load_run(broken)


def test_a_fit_cut_and_continued_from_its_saved_state_ends_where_the_whole_fit_ends(
        overfit_run):
    import copy
    run = load_run(overfit_run.dir)
    data = encode_splits(run, QUATRAINS * 20, QUATRAINS, 60)
    quiet, states = (lambda *a: None), {}

    def save(state):
        states[state["steps"]] = copy.deepcopy(state)  # the fit goes on changing them
    whole, _ = fit_context(run.model, data, 60, quiet, steps=30, batch=8, dropout=0.2,
                           keep=Keep(save, every=0))  # dropout: a stream to restore
    assert sorted(states) == list(range(1, 31))
    went_on, figures = fit_context(run.model, data, 60, quiet, steps=30, batch=8, dropout=0.2,
                                   saved=states[12])
    assert figures["steps"] == 30
    for k, v in whole.state_dict().items():
        assert torch.equal(v, went_on.state_dict()[k]), k
    # On the clock, the seconds a cut fit had spent count: none are left here.
    _, figures = fit_context(run.model, data, 5, quiet, batch=8, dropout=0.2,
                             saved={**states[12], "elapsed_s": 5.0})
    assert figures["steps"] == 12 and figures["seconds"] >= 5.0


def test_a_stop_asked_for_saves_the_fit_and_ends_it(overfit_run):
    run = load_run(overfit_run.dir)
    data = encode_splits(run, QUATRAINS * 20, QUATRAINS, 60)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        fit_context(run.model, data, 60, lambda *a: None, steps=30, batch=8,
                    keep=Keep(saved.append, every=1e9, stop=lambda: True))
    assert [s["steps"] for s in saved] == [1]
