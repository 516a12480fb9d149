"""The decoding path (heads' draft, then refinement) and the sampling seeds."""
import copy
from dataclasses import replace

import torch

from textvae import decoding, sampling
from textvae.decoding import SampleConfig, write_lines
from textvae.sampling import complete, poems
from textvae.tokenizer import BOS, EOS, PAD
from textvae.batches import epoch_order

from .conftest import POEM_LINES


def favouring(run, token, by=50.0):
    """A copy of ``run`` whose heads and refiner both strongly prefer ``token``."""
    run = copy.copy(run)
    run.model = copy.deepcopy(run.model)
    with torch.no_grad():
        run.model.decoder.out.bias[token] += by
        run.model.refiner.out.bias[token] += by
    return run


def test_start_and_end_markers_are_never_written(overfit_run):
    for token in (BOS, EOS):
        run = favouring(overfit_run, token)
        ids = write_lines(run, torch.randn(16, 8), 0.5)
        assert not (ids == token).any()
        assert all(len(s) == 5 for s in decoding.texts(run, ids))


def test_a_completion_never_ends_before_a_given_character(overfit_run):
    # On a corpus of several lengths <pad> may end a line, but not before the last
    # character the user gave: that would drop it silently.
    run = favouring(overfit_run, PAD)
    run.config = copy.deepcopy(run.config)
    run.config["data"]["form"] = {"lengths": [1, 2, 3, 4, 5], "fixed": {}}
    line = complete(run, "_日依山尽")[0]
    assert len(line) == 5 and line[1:] == "日依山尽"
    assert complete(run, "白日_")[0][:2] == "白日"  # after the last given one it may end


def test_refinement_keeps_what_the_heads_are_sure_of(overfit_run):
    # The overfit heads reconstruct every line from its mu with near certainty, so a
    # refiner that predicts something else everywhere must change nothing at keep 0.9,
    # and everything at keep 1 (nothing is sure enough), unless z is read at noise 0
    # (trusted entirely, as for a reconstruction).
    run = favouring(overfit_run, overfit_run.tokenizer.index["山"])
    with torch.no_grad():
        run.model.decoder.out.bias[overfit_run.tokenizer.index["山"]] -= 50.0
    mu = run.model.encode(torch.tensor([run.tokenizer.encode(s, 5) for s in POEM_LINES]))[0]
    kept = decoding.texts(run, write_lines(run, mu, 0.5, SampleConfig(keep=0.9)))
    assert kept == POEM_LINES
    redone = decoding.texts(run, write_lines(run, mu, 0.5, SampleConfig(keep=1.0)))
    assert all(s != t for s, t in zip(redone, POEM_LINES))
    trusted = decoding.texts(run, write_lines(run, mu, 0.0, SampleConfig(keep=1.0)))
    assert trusted == POEM_LINES


def test_different_seeds_draw_independent_latents(overfit_run, monkeypatch):
    drawn = {}
    real = sampling.prior_z

    def recording(run, n, gen, sc=None):
        z = real(run, n, gen, sc)
        drawn.setdefault(seed, []).append(z)
        return z
    monkeypatch.setattr(sampling, "prior_z", recording)
    for seed in (0, 1):
        list(poems(overfit_run, 3, 4, SampleConfig(seed=seed)))
    a, b = torch.cat(drawn[0]), torch.cat(drawn[1])
    # No latent of seed 1 is one of seed 0's (seed + line index made them shifted copies).
    assert torch.cdist(a, b).min() > 1e-3


def test_epoch_orders_do_not_repeat_across_seeds():
    assert not torch.equal(epoch_order(1000, 0, 1), epoch_order(1000, 1, 0))
    assert torch.equal(epoch_order(1000, 3, 2), epoch_order(1000, 3, 2))


def test_poems_stream_in_batches(overfit_run):
    stream = poems(overfit_run, 10 ** 12, 4, batch=2)
    first = [next(stream) for _ in range(3)]
    assert all(len(p) == 4 and len(set(p)) == 4 for p in first)


def test_fitting_z_brings_back_lines_the_encoder_places_badly(overfit_run):
    # An encoder that maps every line to the same mu: only fitting z can tell them apart.
    run = copy.copy(overfit_run)
    run.model = copy.deepcopy(run.model)
    with torch.no_grad():
        run.model.to_mu.weight.zero_()
    blind = sampling.reconstruct(run, POEM_LINES, sc=SampleConfig(fit_steps=0))
    assert len(set(blind)) == 1
    fitted = sampling.reconstruct(run, POEM_LINES, sc=SampleConfig(fit_steps=100))
    assert sum(a == b for a, b in zip(fitted, POEM_LINES)) >= 6, fitted


def test_repeat_penalty_covers_the_whole_line_but_not_padding():
    from textvae.decoding import _penalise_repeats
    from textvae.tokenizer import PAD
    # Line 0: positions 1 and 3 re-predicted (-1); line 1: position 0, its line holding
    # the same character twice.
    ids = torch.tensor([[5, -1, 7, -1, PAD], [-1, 6, 6, PAD, PAD]])
    out = _penalise_repeats(torch.zeros(3, 10), torch.tensor([0, 0, 1]), ids, 1.0)
    assert out[0, 5] == -1 and out[0, 7] == -1 and out[1, 5] == -1   # the whole line
    assert out[0].sum() == -2 and out[1].sum() == -2
    assert out[2, 6] == -1 and out[2].sum() == -1      # held twice, lowered once
    assert (out[:, PAD] == 0).all()                    # a short line's end stays free


def test_a_draw_follows_the_softmax_at_its_temperature_and_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(40000, 3)
    gen = torch.Generator().manual_seed(0)
    for sc, expected in [(SampleConfig(temperature=0.8), torch.softmax(logits[0] / 0.8, 0)),
                         (SampleConfig(temperature=2.0, top_k=2),
                          torch.cat([torch.softmax(logits[0, :2] / 2.0, 0), torch.zeros(1)]))]:
        drawn = decoding.choose(logits, sc, gen)
        freq = torch.bincount(drawn, minlength=3).float() / len(drawn)
        assert torch.allclose(freq, expected, atol=0.01), (sc, freq, expected)
    assert (decoding.choose(logits, SampleConfig(temperature=0)) == 0).all()
    banned = torch.tensor([[float("-inf"), 3.0, float("-inf")]]).expand(40000, 3)
    assert (decoding.choose(banned, SampleConfig(temperature=0.5), gen) == 1).all()
    # More entries than get noise of their own (decoding.NEAR): a quarter of the mass
    # lies past the 16 likeliest, drawn as one entry and then among themselves.
    wide = torch.linspace(0.0, -3.0, 40).expand(100000, 40)
    drawn = decoding.choose(wide, SampleConfig(temperature=1.0), gen)
    freq = torch.bincount(drawn, minlength=40).float() / len(drawn)
    expected = torch.softmax(wide[0], 0)
    assert expected[decoding.NEAR:].sum() > 0.2
    assert torch.allclose(freq, expected, atol=0.004), (freq - expected).abs().max()
    # Fewer allowed than get noise, at large logits (a form's few characters, a low
    # temperature): no mass may be left to the banned rest, or <pad> (id 0) wins.
    row = torch.full((64,), float("-inf"))
    row[[1, 5, 7, 8, 9, 12, 21, 26, 54, 57]] = torch.tensor(
        [2004.9188, 1998.7437, 2000.7097, 2010.1497, 2001.1389, 2001.0519, 1993.3916,
         2002.0026, 1998.4917, 2001.6888])
    drawn = decoding.choose(row.expand(200000, 64), SampleConfig(temperature=1.0), gen)
    assert torch.isfinite(row[drawn]).all()


def test_an_interpolation_shares_its_draws_so_equal_points_write_equal_lines(overfit_run):
    # Every point of a path from a line to itself has the same z: with one draw's noise
    # for the whole path, all eight lines are one, however hot the sampling.
    sc = SampleConfig(temperature=5.0, keep=1.0, noise=1.0, stay=0.0)
    path = sampling.interpolate(overfit_run, POEM_LINES[0], POEM_LINES[0], sc=sc)
    assert len(set(path[1:-1])) == 1


def test_a_path_leans_on_its_previous_point(overfit_run):
    # Draws at temperature 1 and nothing kept: the points between two lines differ from
    # one another, unless each leans so far on the one before that it repeats it. (Not
    # hotter: with one Gumbel draw per path, near-flat logits write one line throughout.)
    a, b = POEM_LINES[0], POEM_LINES[1]
    sc = SampleConfig(temperature=1.0, keep=1.0, noise=1.0, stay=0.0)
    loose = sampling.interpolate(overfit_run, a, b, sc=sc)
    assert loose[0] == a and loose[-1] == b and len(set(loose[1:-1])) > 1
    held = sampling.interpolate(overfit_run, a, b, sc=replace(sc, stay=1e3))
    assert held == [a] * 7 + [b]


def test_a_path_without_a_stay_gets_the_one_for_its_line_length(overfit_run, monkeypatch):
    # Longer lines lean harder by default (tang7 changed 2.4 characters a step at 2).
    assert sampling.stay_for(5) == 1.0 and sampling.stay_for(7) == 4.0
    real, used = decoding.write_lines, []

    def noting(run, z, noise, sc, **kw):
        used.append(sc.stay)
        return real(run, z, noise, sc, **kw)
    monkeypatch.setattr(sampling, "write_lines", noting)
    sampling.interpolate(overfit_run, POEM_LINES[0], POEM_LINES[1], steps=3)
    sampling.interpolate(overfit_run, POEM_LINES[0], POEM_LINES[1], steps=3,
                         sc=SampleConfig(stay=0.5))
    assert used == [1.0] * 3 + [0.5] * 3  # the overfit run's lines are 5 long


def test_a_reconstruction_is_the_heads_most_likely_line_at_any_temperature(overfit_run):
    sc = SampleConfig(temperature=50.0)
    assert sampling.reconstruct(overfit_run, POEM_LINES, sc=sc) == POEM_LINES


def test_the_cached_refiner_writes_what_full_passes_write(overfit_run):
    # Keeping each position's keys and values must not change a character: every way
    # lines are written (drawn, greedy, top-k, completed, restricted, a path's shared
    # noise and preferred characters) gives the same ids by both paths.
    run, V, L = overfit_run, overfit_run.model.cfg.vocab_size, 5
    z = torch.randn(256, overfit_run.model.cfg.latent, generator=torch.Generator().manual_seed(0))
    given = torch.full((256, L), -1)
    given[::3, 2] = run.tokenizer.index["山"]
    allowed = torch.rand(256, L, V, generator=torch.Generator().manual_seed(1)) < 0.7
    # keep=1.0: the refiner writes every position (the overfit heads are sure of most).
    cases = [dict(sc=SampleConfig(keep=1.0)), dict(sc=SampleConfig(keep=1.0, temperature=0)),
             dict(sc=SampleConfig(keep=1.0, top_k=5, repeat_penalty=3.0)),
             dict(sc=SampleConfig(keep=1.0), given=given, allowed=allowed),
             dict(sc=SampleConfig(keep=1.0, stay=2.0), gumbel=torch.rand(256, L, V).log().neg().log().neg(),
                  prefer=torch.randint(0, V, (256, L)))]
    for case in cases:
        sc = case.pop("sc")
        ids = [decoding.write_ids(run.model, run.lengths, z, 0.7, sc, cached=cached,
                                  gen=torch.Generator().manual_seed(2), **case)
               for cached in (False, True)]
        assert torch.equal(ids[0], ids[1]), sc


def test_lines_written_a_chunk_at_a_time_are_the_lines_written_at_once(overfit_run):
    # Where no draw takes numbers from a generator (greedy, or a path's given noise) the
    # chunks cannot show: each argument with one row a line is cut to the chunk's lines.
    run, V, L = overfit_run, overfit_run.model.cfg.vocab_size, 5
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(100, run.model.cfg.latent, generator=gen)
    given = torch.full((100, L), -1)
    given[::3, 2] = run.tokenizer.index["山"]
    cases = [dict(sc=SampleConfig(keep=1.0, temperature=0), noise=torch.rand(100, generator=gen),
                  given=given, allowed=torch.rand(100, L, V, generator=gen) < 0.7),
             dict(sc=SampleConfig(keep=1.0, stay=2.0), noise=torch.tensor([0.7]),
                  gumbel=torch.rand(100, L, V, generator=gen).log().neg().log().neg(),
                  prefer=torch.randint(0, V, (100, L), generator=gen))]
    for case in cases:
        ids = [decoding.write_ids(run.model, run.lengths, z, chunk=chunk, **case)
               for chunk in (37, 100)]
        assert torch.equal(ids[0], ids[1]), case["sc"]


def test_refiner_steps_give_the_logits_of_a_whole_pass(overfit_run):
    ref, model = overfit_run.model.refiner, overfit_run.model
    idx = torch.randint(5, model.cfg.vocab_size, (8, 5))
    z, noise = torch.randn(8, model.cfg.latent), torch.rand(8)
    with torch.no_grad():
        draft = model.decoder.features(z)
        whole = ref(idx, z, noise, draft)                                   # (8, 5, V)
        cache, before = ref.start(z, noise), torch.full((8,), ref.start_id)
        for t in range(5):
            h, cache = ref.step(cache, before, t, draft[:, t])
            torch.testing.assert_close(ref.out(h), whole[:, t], rtol=1e-4, atol=1e-4)
            before = idx[:, t]


def test_no_character_is_written_three_times_running():
    from textvae.decoding import _no_third_in_a_row
    from textvae.tokenizer import PAD
    ids = torch.tensor([[5, 5, -1, -1, -1], [5, 6, -1, -1, -1], [PAD, PAD, -1, -1, -1]])
    out = _no_third_in_a_row(torch.zeros(3, 10), torch.tensor([0, 1, 2]), ids, 2)
    assert out[0, 5] == float("-inf") and torch.isfinite(out[0, :5]).all()
    assert torch.isfinite(out[1:]).all()   # two different before it; a short line's end


def test_a_written_line_never_holds_a_character_three_times_running(overfit_run):
    # With no repeat penalty, a refiner made to love one character would write it at
    # every position it writes.
    from textvae import decoding
    run, ref = overfit_run, overfit_run.model.refiner
    saved = ref.out.bias.detach().clone()
    try:
        with torch.no_grad():
            ref.out.bias[8] += 100.0
        z = torch.randn(16, run.model.cfg.latent, generator=torch.Generator().manual_seed(0))
        ids = decoding.write_lines(run, z, 1.0, SampleConfig(keep=1.0, repeat_penalty=0.0))
    finally:
        with torch.no_grad():
            ref.out.bias.copy_(saved)
    assert (ids == 8).any()
    assert not ((ids[:, 2:] == ids[:, 1:-1]) & (ids[:, 1:-1] == ids[:, :-2])).any(), ids


def test_pad_is_banned_before_the_shortest_length_and_through_the_last_given():
    """A run of lines 2-5 long writes no line shorter than 2; a completion whose last
    given character is at position 2 ends after it, not at it."""
    at = decoding.every_position(1, 5, "cpu")
    out = decoding._ban(torch.zeros(5, 10), at, [BOS, EOS], min_len=2)
    assert out[:2, PAD].isinf().all() and out[2:, PAD].isfinite().all()
    given = torch.tensor([[-1, -1, 7, -1, -1]])  # position 2 is given: this pins the rule
    out = decoding._ban(torch.zeros(5, 10), at, [BOS, EOS], min_len=1, given=given)
    assert out[:3, PAD].isinf().all() and out[3:, PAD].isfinite().all()


def test_a_redrawn_repeat_keeps_its_own_keyword(monkeypatch):
    """With --keywords 月,秋, line 2 of a poem that repeats line 1 is written again with 秋,
    its own keyword, not with 月."""
    seen = []

    def new_lines(run, n, sc, gen, heads=None):
        seen.append(sc.keyword_list())
        return [f"新{len(seen)}"]
    monkeypatch.setattr(sampling, "_new_lines", new_lines)
    poem = sampling._no_repeats(None, ["甲", "甲", "乙"], SampleConfig(keywords="月,秋"),
                                None, None)
    assert poem == ["甲", "新1", "乙"] and seen == [["秋", "月"]]
    # The second 3-line poem of a batch: its lines took 秋 月 秋 (the batch's 4th to 6th).
    sampling._no_repeats(None, ["甲", "甲", "乙"], SampleConfig(keywords="月,秋"), None,
                         None, first=3)
    assert seen[-1] == ["月", "秋"]
