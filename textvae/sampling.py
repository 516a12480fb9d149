"""What a user does with a run: sample lines and poems, reconstruct, encode, interpolate,
complete. Every line is written by decoding.write_lines.
"""
import math
from dataclasses import replace

import torch

from .decoding import (SampleConfig, encode_lines, gumbel_noise, given_z, heads_logp, noise_of,
                       pick_z, texts, write_lines)
from .errors import UserError
from .poem import chain_poems
from .tokenizer import PAD


def prior_z(run, n, gen, sc: SampleConfig = None):
    """n z ~ N(0, I); or, with a theme in ``sc``, drawn around the theme line's z."""
    if sc is not None and sc.theme:
        return theme_z(run, n, sc, gen)
    return torch.randn(n, run.model.cfg.latent, generator=gen)


def theme_z(run, n, sc: SampleConfig, gen):
    """n z around the line ``sc.theme``: sqrt(w) z_theme + sqrt(1 - w) eps, w =
    ``sc.theme_weight``. For a z_theme of typical length this is still close to N(0, I)
    in distribution, so the decoder reads it as it reads the prior; w = 0 ignores the
    theme, 1 writes the theme line itself."""
    centre = given_z(run, [sc.theme], allow_unk=True, sc=sc).cpu()[0]
    eps = torch.randn(n, run.model.cfg.latent, generator=gen)
    return math.sqrt(sc.theme_weight) * centre + math.sqrt(1 - sc.theme_weight) * eps


def clause_starts(run):
    """Where the clauses of a line begin: [0] for a line corpus; after every fixed
    punctuation mark for a whole-poem corpus ('甲，乙。丙，丁。' -> 0, 6, 12, 18)."""
    marks = sorted(int(i) for i, c in run.form.fixed.items() if not c.isalnum())
    return [0] + [i + 1 for i in marks if i + 1 < max(run.form.lengths)]


def acrostic_patterns(run, heads):
    """Completion patterns putting the characters of ``heads`` at the start of each
    clause: one pattern per character on a line corpus, one per poem on a whole-poem
    corpus (which then needs one character per clause)."""
    starts, L = clause_starts(run), max(run.form.lengths)
    if len(starts) == 1:
        return [c + "_" * (L - 1) for c in heads]
    if len(heads) != len(starts):
        raise UserError(f"--acrostic needs {len(starts)} characters here, one per clause "
                        f"of a poem; got {len(heads)}")
    row = ["_"] * L
    for i, c in run.form.fixed.items():
        row[int(i)] = c
    for i, c in zip(starts, heads):
        row[i] = c
    return ["".join(row)]


def _new_lines(run, n, sc, gen, heads=None):
    """``n`` lines from z ~ N(0, I) (or around a theme); with an acrostic or keywords,
    completions of the acrostic's patterns (or blank ones), repeated to fill ``n``."""
    if heads is None and not sc.keywords:
        return texts(run, write_lines(run, prior_z(run, n, gen, sc), noise_of(sc), sc, gen=gen))
    pats = acrostic_patterns(run, heads) if heads else ["_" * run.max_len]
    return complete(run, [pats[i % len(pats)] for i in range(n)], sc, gen=gen)


@torch.no_grad()
def sample(run, n, sc: SampleConfig = SampleConfig(), batch=4096):
    """``n`` lines written from z ~ N(0, I)."""
    gen = torch.Generator().manual_seed(sc.seed)
    return [line for start in range(0, n, batch)
            for line in _new_lines(run, min(batch, n - start), sc, gen)]


def poems(run, n_poems, lines_per_poem, sc: SampleConfig = SampleConfig(), heads=None,
          batch=256):
    """Yield ``n_poems`` poems (lists of lines), written ``batch`` poems at a time, so any
    number streams in constant memory. No line repeats within a poem where another
    can be had (50 redraws; on the chain, another candidate). The batches grow
    from one poem (``batch_sizes``), so the first poem prints at once, not after 256,
    and a seed's i-th poem is the same whatever the number asked for.

    ``heads`` (an acrostic): the first character of each line (of each clause on a
    whole-poem corpus), in order.
    """
    if heads is not None:
        run.need_characters("--acrostic")
        lines_per_poem = len(acrostic_patterns(run, heads))
    gen = torch.Generator().manual_seed(sc.seed)
    if chained(run, sc, heads):
        yield from _chain_stream(run, n_poems, sc, gen, lines_per_poem, batch=batch)
        return
    for todo, kept in batch_sizes(n_poems, batch):
        lines = _new_lines(run, todo * lines_per_poem, sc, gen, heads)
        for p in range(kept):
            poem = lines[p * lines_per_poem:(p + 1) * lines_per_poem]
            yield _no_repeats(run, poem, sc, gen, heads, first=p * lines_per_poem)


def chained(run, sc, heads=None):
    """Whether poems come from the run's poem chain: where it has one and no acrostic,
    keywords or theme asks for lines of its own (those write each line from its own z)."""
    return (run.chain is not None and not sc.independent and heads is None
            and not sc.keywords and not sc.theme)


def continued(run, first, n_poems, sc: SampleConfig = SampleConfig()):
    """``n_poems`` poems that open with the lines ``first``, written on by the run's
    poem chain."""
    if run.chain is None:
        raise UserError(f"{run.dir} has no poem chain to continue a poem with (train one "
                        "with --poems, e.g. train.py --corpus tang5)")
    run.need_characters("continue")
    yield from _chain_stream(run, n_poems, sc, torch.Generator().manual_seed(sc.seed),
                             first=first)


# Candidate lines the poem writers keep in memory at once (a poem's K candidates each).
LINES_A_BATCH = 4096


def poems_a_batch(candidates, most):
    """How many poems a batch writes when each line has ``candidates`` candidates: at
    most ``most``, and at most LINES_A_BATCH candidate lines in all."""
    return min(most, max(1, LINES_A_BATCH // candidates))


def _chain_stream(run, n_poems, sc, gen, n_lines=None, first=(), batch=256):
    """The chain's poems, at most ``batch`` at a time and LINES_A_BATCH candidate lines."""
    for todo, kept in batch_sizes(n_poems, poems_a_batch(sc.line_candidates, batch)):
        yield from chain_poems(run, todo, sc, gen, sc.line_candidates, n_lines, first)[:kept]


def batch_sizes(n, batch):
    """(written, kept) for each batch that writes ``n`` items: 1, 1, 2, 4, ... up to
    ``batch`` written, each kept whole but the last. The first poem prints at once, and
    a batch's size never depends on ``n``, so item i is the same for every ``--num``
    above i: more poems only add to the ones a smaller ``--num`` wrote."""
    done, size = 0, 1
    while done < n:
        yield size, min(size, n - done)
        done += size
        size = min(batch, size * 2) if done > 1 else 1


def _no_repeats(run, poem, sc, gen, heads, tries=50, first=0):
    """Replace a line that repeats an earlier one of its poem (a repeat reads as a fault;
    after ``tries`` redraws keep it rather than loop on a model that knows few lines).
    ``first``: the poem's first line's place in its batch, whose lines took the keywords
    in turn."""
    for i in range(1, len(poem)):
        for _ in range(tries):
            if poem[i] not in poem[:i]:
                break
            poem[i] = _new_lines(run, 1, _for_line(sc, first + i), gen,
                                 None if heads is None else heads[i])[0]
    return poem


def _for_line(sc, i):
    """``sc`` for writing line i of a batch alone: its keywords turned so that line i's
    comes first (a line written on its own takes the first)."""
    kws = sc.keyword_list()
    if not kws:
        return sc
    k = i % len(kws)
    return replace(sc, keywords=",".join(kws[k:] + kws[:k]))


@torch.no_grad()
def encode(run, lines, allow_unk=False):
    """mu and logvar of q(z|x) for each line."""
    mu, logvar = run.model.encode(encode_lines(run, lines, allow_unk))
    return mu.cpu(), logvar.cpu()


def reconstruct(run, lines, allow_unk=False, sc: SampleConfig = SampleConfig()):
    """Each line written back from its (fitted) posterior mean, through the full decoding
    path read at noise 0: how much of the line the latent keeps."""
    return texts(run, write_lines(run, given_z(run, lines, allow_unk, sc), 0.0, sc))


def slerp(a, b, t):
    """Spherical interpolation (Shoemake 1985); falls back to linear for parallel vectors."""
    na, nb = a / a.norm(), b / b.norm()
    omega = torch.arccos((na * nb).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    if omega.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def stay_for(length):
    """The default ``stay`` for lines of ``length`` characters. Each position of a longer
    line changes about as often, so a path through longer lines changes more characters
    a step and needs a firmer lean; a sharper model (more time trained) changes fewer, so
    five-character lines lean lightly. Measured on the test split's 100 paths of 8
    (characters changed a step / distinct lines a path), tang5 at stay 2 / 1 / 0.5: the
    15-minute default 1.52 / 5.99, 1.80 / 6.24, 1.97 / 6.49; the 3-hour run 1.27 / 4.74,
    1.44 / 5.02, 1.56 / 5.23; tang7 at 2: 2.44 / 6.65, at 3: 2.14 / 6.21, at 4: 1.93 / 5.90."""
    return 1.0 if length <= 5 else 4.0


def path_z(mu_a, mu_b, steps, how):
    ts = torch.linspace(0, 1, steps)
    if how == "linear":
        return torch.stack([(1 - t) * mu_a + t * mu_b for t in ts])
    return torch.stack([slerp(mu_a, mu_b, t) for t in ts])


def interpolate(run, line_a, line_b, steps=8, how="linear", allow_unk=False,
                sc: SampleConfig = SampleConfig()):
    """Lines written along the path from z(a) to z(b) (``given_z``), both ends included.

    The ends are posterior means, read at noise 0 like a reconstruction; points between
    two posteriors are read more loosely, up to ``noise_of(sc)`` half-way (sin(pi t)). The
    points are written in order, each leaning ``sc.stay`` nats towards the characters of
    the one before, so a character changes where z has moved enough to outweigh that.
    """
    return interpolate_pairs(run, [(line_a, line_b)], steps, how, allow_unk, sc)[0]


def interpolate_poems(run, poem_a, poem_b, steps=8, how="linear", allow_unk=False,
                      sc: SampleConfig = SampleConfig()):
    """Poems along the path between two poems (lists of as many lines): line i of each
    point lies on the path between the two poems' lines i."""
    if len(poem_a) != len(poem_b):
        raise UserError(f"poems to interpolate need as many lines; got {len(poem_a)} and "
                        f"{len(poem_b)}")
    paths = interpolate_pairs(run, list(zip(poem_a, poem_b)), steps, how, allow_unk, sc)
    return [[path[k] for path in paths] for k in range(steps)]


def interpolate_pairs(run, pairs, steps=8, how="linear", allow_unk=False,
                      sc: SampleConfig = SampleConfig()):
    """``interpolate`` for many (a, b) pairs at once: one fit of every end's z, then one
    batch per point of the paths (the evaluation's 100 pairs: 8 batches, not 800 lines
    one by one)."""
    if steps < 2:
        raise UserError(f"--steps must be at least 2 (the two ends), got {steps}")
    if how not in ("linear", "spherical"):
        raise UserError(f"interpolation must be linear or spherical, got {how!r}")
    if sc.stay is None:
        sc = replace(sc, stay=stay_for(run.max_len))
    ends = given_z(run, [line for pair in pairs for line in pair], allow_unk, sc).cpu()
    z = torch.stack([path_z(ends[2 * i], ends[2 * i + 1], steps, how)
                     for i in range(len(pairs))])                          # (P, steps, D)
    noise = noise_of(sc) * torch.sin(torch.pi * torch.linspace(0, 1, steps)).clamp(min=0)
    # One draw's noise for every point of a path: neighbouring points write the same
    # character wherever their logits are close, so the path blends instead of jumping.
    gen = torch.Generator().manual_seed(sc.seed)
    shared = gumbel_noise((len(pairs), run.max_len, run.model.cfg.vocab_size), gen)
    points, before = [], None
    for k in range(steps):  # in order, each point leaning to the one before (sc.stay)
        before = write_lines(run, z[:, k], noise[k].expand(len(pairs)), sc, gumbel=shared,
                             prefer=before)
        points.append(texts(run, before))
    return [list(path) for path in zip(*points)]


def _pattern_ids(run, pattern, blank):
    if not pattern or len(pattern) > run.max_len:
        raise UserError(f"pattern {pattern!r} must have 1 to {run.max_len} characters")
    row = [-1] * run.max_len
    for i, c in enumerate(pattern):
        if c != blank:
            row[i] = run.tokenizer.encode(c, allow_unk=False)[0]
    if len(pattern) < run.max_len and run.form.lengths != [run.max_len]:
        row[len(pattern):] = [PAD] * (run.max_len - len(pattern))  # the line ends there
    return row


@torch.no_grad()
def complete(run, patterns, sc: SampleConfig = SampleConfig(), candidates=256, blank="_",
             gen=None):
    """Fill the ``blank`` positions of each pattern (e.g. '白日__尽'); given characters stay.

    For each pattern, draws ``candidates`` z from the prior, keeps the one under which the
    heads find the given characters most likely (``pick_z``), and writes the blanks from
    it with the refiner, which sees the given characters. Acrostics are completions of '春____'.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    run.need_characters("--keywords" if sc.keywords else "completing a pattern")
    if candidates < 1:
        raise UserError(f"candidates must be >= 1, got {candidates}")
    given = torch.tensor([_pattern_ids(run, p, blank) for p in patterns])      # (P, L)
    gen = gen or torch.Generator().manual_seed(sc.seed)
    z = prior_z(run, len(patterns) * candidates, gen, sc).view(len(patterns), candidates, -1)
    if sc.keywords:
        given = place_keywords(run, z, given, keyword_ids(run, sc, len(patterns)))
    ids = write_lines(run, pick_z(run, z, given), noise_of(sc), sc, given=given, gen=gen)
    return texts(run, ids)


def keyword_ids(run, sc, n, cycle=True):
    """Ids (n,) of the keyword each of n lines holds: the keywords in turn (``cycle``),
    or the first n of them, -1 where they have run out."""
    run.need_characters("--keywords")
    kws = [run.tokenizer.encode(k, allow_unk=False)[0] for k in sc.keyword_list()]
    return torch.tensor([kws[i % len(kws)] if cycle or i < len(kws) else -1
                         for i in range(n)])


@torch.no_grad()
def place_keywords(run, z, given, kw, allowed=None, budget=2 ** 24):
    """``given`` (P, L) with each row's keyword (ids ``kw`` (P,), -1: none) put at a
    free position: the one where some candidate z (P, C, D) gives it most probability,
    among positions ``allowed`` (P, L, V) permits, and before the corpus's shortest
    length (so every line, however long, keeps it). A line that keywords cannot fit
    into (no free position) is left as it is."""
    C, L = z.shape[1], run.max_len
    given = given.clone()
    for r, logp in heads_logp(run, z, budget):
        k = kw[r].clamp(min=0)
        hit = logp.gather(
            -1, k[:, None, None, None].expand(-1, C, L, 1)).squeeze(-1).amax(1)  # (n, L)
        ok = (given[r] < 0) & (kw[r] >= 0).unsqueeze(1)
        ok[:, min(run.form.lengths):] = False
        if allowed is not None:
            ok &= allowed[r].gather(-1, k[:, None, None].expand(-1, L, 1)).squeeze(-1)
        pos = hit.masked_fill(~ok, float("-inf")).argmax(1)
        rows = torch.nonzero(ok.any(1)).squeeze(1)
        given[r.start + rows, pos[rows]] = k[rows]
    return given
