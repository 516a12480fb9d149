"""Whole poems in a classical form: lines that belong together, rhyme, tones, acrostics.

A poem is written line by line, all poems of a batch at once:
  1. z for the next line is drawn from the run's poem chain p(z_i | z_<i) (poem.py),
     given the lines written so far; a run without one walks through the latent space,
     z_1 ~ N(0, I) and z_i = rho z_{i-1} + sqrt(1 - rho^2) eps, so every z is still a
     draw from N(0, I) (the prior the decoder was trained to read) while neighbouring
     lines share rho of their latent;
  2. each position of a line gets the characters its form allows (``allowed``): the tone
     of the template at the positions that decide it, the poem's rhyme group at the end
     of a rhyming line, the acrostic character first; and no character the poem has
     used already (real quatrains share 0.014 of their characters between neighbouring
     lines, independent lines of ours 0.036: repeats read as a fault);
  3. with a chain, each of ``candidates`` draws is written by the full decoding path,
     restricted to the allowed characters (decoding.write_lines), and the line the
     chain's scores rank first is kept (poem.line_scores); without one, of
     ``candidates`` steps of the walk, the one under which the fan-out heads put the
     most probability on those allowed sets is written (constraints the latent already
     leans towards cost the least fluency).
The rhyme group is the one the first rhyming line happens to end in.
"""
import math
from dataclasses import dataclass

import torch

from .errors import UserError
from .decoding import SampleConfig, noise_of, pick_z, texts, with_temperature, write_lines
from .context import Written
from .poem import best_lines, drawn, read_on
from .sampling import batch_sizes, chained, keyword_ids, place_keywords, poems_a_batch, prior_z
from .prosody import PING, RHYMES, ZE, VerseForm, faultless, key_positions, table, templates
from .tokenizer import EOS, PAD


@dataclass
class PoemConfig:
    form: VerseForm
    rhyme: str = "pingshui"   # pingshui | xinyun | off
    tones: bool = False       # hold the key positions to the form's tonal template
    acrostic: str = ""        # first character of each line ('' : none)
    rho: float = 0.1          # how much of its latent a line shares with the line before
                              # (measured: real quatrains' neighbouring lines, encoded,
                              # have mean cosine 0.05; rho 0.3 already gives 0.20)
    candidates: int = 64      # z tried per line: chain draws, each written (the best
                              # line kept), or walk steps (the best by the heads written)

    def __post_init__(self):
        if self.rhyme not in RHYMES:
            raise UserError(f"--rhyme must be one of {', '.join(RHYMES)}, got {self.rhyme!r}")
        if not 0 <= self.rho < 1:
            raise UserError(f"--coherence must be in [0, 1), got {self.rho}")
        if self.acrostic and len(self.acrostic) != self.form.lines:
            raise UserError(f"--acrostic needs {self.form.lines} characters for "
                            f"{self.form.name} ({self.form.chinese}), got {len(self.acrostic)}")
        if self.candidates < 1:
            raise UserError(f"--candidates must be >= 1, got {self.candidates}")


class VocabTones:
    """The run's vocabulary as boolean masks over ids: 平 and 仄 characters, and the
    characters of each 平 rhyme group."""

    def __init__(self, tokenizer, table_name):
        t = table(table_name)
        V = len(tokenizer.chars)
        self.tone = {PING: torch.zeros(V, dtype=torch.bool), ZE: torch.zeros(V, dtype=torch.bool)}
        self.group = {}
        self.groups_of = {}
        for i, ch in enumerate(tokenizer.chars):
            for tone in t.tones(ch):
                self.tone[tone][i] = True
            self.groups_of[i] = sorted(t.groups(ch, PING))
            for g in self.groups_of[i]:
                self.group.setdefault(g, torch.zeros(V, dtype=torch.bool))[i] = True
        self.rhymes = torch.tensor([bool(self.groups_of[i]) for i in range(V)])  # 平 rhymes


def _check_run(run, form):
    run.need_characters(f"--form {form.name}")
    if form.chars not in run.form.lengths:
        raise UserError(f"{form.name} ({form.chinese}) needs a run trained on "
                        f"{form.chars}-character lines (e.g. --corpus tang{form.chars}); "
                        f"this run writes lines of {run.form.lengths} characters")


def default_form(run, sc: SampleConfig, free=False):
    """The form generate.py writes when --form is not given: a 五绝 with its tones where
    the poem model writes five-character lines and nothing asks for free lines (``free``,
    independent lines, keywords, a theme); else None, free lines. In four blind panels
    readers rated its poems 0.27 above the same run's free quatrains in both fluency and
    coherence (docs/poems.md)."""
    fits = (not free and chained(run, sc) and run.tokenizer.units == "chars"
            and list(run.form.lengths) == [5])  # a run of several lengths writes them all
    return "wujue" if fits else None


def chosen_form(run, sc: SampleConfig, form=None, tones=None, free=False):
    """(form name or None for free lines, tones) as generate.py reads --form and --tones:
    a form named ('free': none) keeps its tones only when asked; no form, the run's
    default_form, with its tones unless ``tones`` is False."""
    if form:
        return (None, False) if form == "free" else (form, bool(tones))
    form = default_form(run, sc, free=free)
    return form, bool(form) and tones is not False


@torch.no_grad()
def write_poems(run, pc: PoemConfig, n, sc: SampleConfig = SampleConfig(), batch=256):
    """Yield ``n`` poems (lists of lines) of form ``pc.form``, in batches of 1, 1, 2, 4,
    ... up to ``batch``, fewer where the chain's candidates would make more than 4,096
    lines a batch (sampling.batch_sizes: the first prints at once)."""
    _check_run(run, pc.form)
    if len(sc.keyword_list()) > pc.form.lines:
        raise UserError(f"--keywords: at most one per line, {pc.form.lines} for "
                        f"{pc.form.name}; got {len(sc.keyword_list())}")
    vt = VocabTones(run.tokenizer, pc.rhyme if pc.rhyme != "off" else "pingshui") \
        if pc.tones or pc.rhyme != "off" else None
    on_chain = chained(run, sc)
    if on_chain:  # the poem model's lines, drawn as its free poems' are
        sc = with_temperature(sc, "poem")
        batch = poems_a_batch(pc.candidates, batch)
    gen = torch.Generator().manual_seed(sc.seed)
    for written, kept in batch_sizes(n, batch):
        yield from _batch(run, pc, vt, written, sc, gen, on_chain)[:kept]


def _batch(run, pc, vt, P, sc, gen, on_chain):
    """``P`` poems of ``pc.form``; ``on_chain``: written by the run's poem chain and
    poem-context refiner (else by a walk through the latent space)."""
    form, L, V = pc.form, run.max_len, len(run.tokenizer.chars)
    noise = noise_of(sc, poem=on_chain)  # ranked lines are read more loosely
    starts = ["ze" if b else "ping" for b in torch.rand(P, generator=gen).lt(0.5).tolist()]
    patterns = [templates(form, s) for s in starts]
    rhyme = [None] * P                 # each poem's rhyme group, once chosen
    used = torch.zeros(P, V, dtype=torch.bool)  # characters the poem already has
    z_prev, lines = None, [[] for _ in range(P)]
    chain_state = run.chain.first(P) if on_chain else None   # (mean, logvar, GRU state)
    so_far = Written.start(P, L, run.model.cfg.latent)  # the lines written so far
    # Keywords go to the first lines, one each: a keyword used twice would break the
    # poem's rule of no character used twice.
    keywords = keyword_ids(run, sc, form.lines, cycle=False) if sc.keywords else None
    heads = [run.tokenizer.encode(c, allow_unk=False)[0] for c in pc.acrostic]
    later = _later_heads(heads, keywords, form.lines, V)
    for i in range(form.lines):
        allowed = _line_length(run, form.chars).repeat(P, 1, 1)
        for p in range(P):
            _constrain(allowed[p], pc, vt, patterns[p][i], form.rhyming(i), rhyme[p],
                       used[p] | later[i])
        given = torch.full((P, L), -1, dtype=torch.long)
        if heads:
            given[:, 0] = heads[i]
        kw = keywords[i].expand(P) if keywords is not None else None
        # On a chain run every candidate is written and the best by poem.line_scores kept,
        # as in free poems: all 64 read better than the 16 the heads liked best (poems.md).
        z, given = _walk_step(run, z_prev, pc, allowed, given, gen, sc, kw, chain_state)
        R = z.shape[1]
        ids = write_lines(run, z.flatten(0, 1), noise, sc, gen=gen,
                          given=given.repeat_interleave(R, 0),
                          allowed=allowed.repeat_interleave(R, 0),
                          refiner=so_far.writer(run, R) if on_chain else None)
        z, ids = _best_written(run, z, ids, so_far.ids)
        if on_chain:  # the chain reads what was written, as in poem.chain_poems
            chain_state = read_on(run, ids, chain_state[2])
            so_far = so_far.add(ids.unsqueeze(1), z.unsqueeze(1), noise)
        for p, (row, text) in enumerate(zip(ids.tolist(), texts(run, ids))):
            lines[p].append(text)
            used[p, row[:form.chars]] = True
            if form.rhyming(i) and pc.rhyme != "off":
                if rhyme[p] is None:
                    rhyme[p] = next(iter(vt.groups_of[row[form.chars - 1]]), None)
        z_prev = z
    return lines


def _later_heads(heads, keywords, lines, V):
    """(lines, V) bool: for each line, the acrostic (ids ``heads``, one a line, or none)
    and keyword characters of the lines after it, which it leaves to them (else the
    poem would use one twice)."""
    mine = [[] for _ in range(lines)]
    for i in range(lines):
        if heads:
            mine[i].append(heads[i])
        if keywords is not None and keywords[i] >= 0:
            mine[i].append(int(keywords[i]))
    later = torch.zeros(lines, V, dtype=torch.bool)
    for i in range(lines):
        for ids in mine[i + 1:]:
            later[i, ids] = True
    return later


def _line_length(run, chars):
    """(1, L, V) allowed characters for a line of exactly ``chars`` characters: any but
    the special ids before, only <pad> after (a run of several line lengths can write a
    form)."""
    allowed = torch.ones(1, run.max_len, len(run.tokenizer.chars), dtype=torch.bool)
    allowed[0, :chars, :EOS + 1] = False  # <pad>, <unk>, <s>, </s>
    allowed[0, chars:] = False
    allowed[0, chars:, PAD] = True
    return allowed


def _constrain(allowed, pc, vt, pattern, rhyming, group, used):
    """Fill one line's allowed (L, V) in place. Where the vocabulary leaves a set empty,
    the no-repeat rule goes first, then every rule: never no character at all."""
    L = pc.form.chars
    if pc.tones:
        for j in key_positions(L):
            allowed[j] &= vt.tone[pattern[j]]
        for j, tone in faultless(pattern).items():  # no 孤平, no 三平尾
            allowed[j] &= vt.tone[tone]
    if rhyming and pc.rhyme != "off":
        allowed[L - 1] &= vt.group[group] if group in vt.group else vt.rhymes
    for j in range(L):
        fresh = allowed[j] & ~used
        if fresh.any():
            allowed[j] = fresh
        elif not allowed[j].any():  # no rule can be kept: any character, no special id
            allowed[j, EOS + 1:] = True


def _best_written(run, z, ids, context):
    """Of the R lines ids (P R, L) written from z (P, R, D), each poem's best by
    poem.best_lines after the lines ``context`` (P, T, L) (the first where R is 1):
    (z (P, D), ids (P, L))."""
    if z.shape[1] == 1:
        return z[:, 0], ids
    rows = best_lines(run, ids, context)
    return z.flatten(0, 1)[rows], ids[rows]


def _walk_step(run, z_prev, pc, allowed, given, gen, sc, kw=None, chain_state=None):
    """The z (P, K, D) of each poem's next line, and the given characters. On a chain
    run, all ``pc.candidates`` draws from the chain's (mean, logvar, state) ``chain_state``
    (K of them, each written); else, of as many steps of the walk, the one (K = 1) whose
    heads put the most log-probability on the allowed characters and the given ones,
    which include each poem's keyword ``kw`` (P,), if any, where the steps favour it."""
    P, C = allowed.shape[0], pc.candidates
    eps = prior_z(run, P * C, gen, sc).view(P, C, -1)  # around the theme, if any
    if chain_state is not None:
        m, logvar, _ = chain_state
        return drawn(m, logvar, eps), given
    z = eps if z_prev is None else pc.rho * z_prev.unsqueeze(1) + math.sqrt(1 - pc.rho ** 2) * eps
    if kw is not None:
        given = place_keywords(run, z, given, kw, allowed)
    if C == 1:
        return z, given
    return pick_z(run, z, given, allowed).unsqueeze(1), given


def couplets(poem):
    """A poem as its couplets, punctuated the classical way: '甲，乙。' per line pair."""
    return [f"{a}，{b}。" for a, b in zip(poem[0::2], poem[1::2])]
