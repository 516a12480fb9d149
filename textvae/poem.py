"""Whole poems: each line written from its own z, the z's of a poem chained, each line
written seeing the lines before it.

    z_1 = m_1 + s_1 * eps_1
    z_t = m_t(z_<t) + s_t(z_<t) * eps_t,        eps_t ~ N(0, I)
    line_t = write_lines(z_t), its refiner the poem-context refiner (context.py), which
             attends to the characters and latents of lines 1 .. t-1

The line VAE is untouched, so reconstruction, interpolation and completion of a line
stay what they were. What is new is a transition p(z_t | z_<t): a GRU over the latents
of the lines before (VHRED, Serban et al. 2017, with the line VAE's encoder as the
utterance encoder), fitted by maximum likelihood to z ~ q(z|x) of the lines of real
stanzas while the line VAE stays frozen; and the poem-context refiner, fitted after it.
A poem is still written from N(0, I) noise, and a line from its own z.

Writing, each line is chosen among ``candidates`` drawn from p(z_t | z_<t): the one the
model finds most likely as the next line of this poem (the poem-context refiner read as
a language model, at noise 1), its characters not merely frequent, and most associated
with the characters of the lines before. Jiuge re-ranks candidate lines the same way
(Yi et al. 2019); Shu et al. 2020 found latent search with rescoring worth most of the
gap to an autoregressive model.
"""
import random
import re
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import Saved
from .errors import UserError
from .context import Written, line_nats, lm_inputs, log_prob, recent
from .model import log_normal
from .tokenizer import EOS


@dataclass
class ChainConfig(Saved):
    SECTION = "chain"
    latent: int = 64          # the line VAE's z; set from it
    hidden: int = 512         # GRU units: the poem's state after each line
    layers: int = 1
    lines: int = 4            # lines of the training stanzas (the poems it writes)
    vocab: int = 0            # the line VAE's ids: the association table is (vocab, vocab)



class LatentChain(nn.Module):
    """p(z_t | z_<t) = N(m_t, diag(s_t^2)), from a GRU that has read z_1 .. z_(t-1)."""

    def __init__(self, cfg: ChainConfig):
        super().__init__()
        self.cfg = cfg
        self.start = nn.Parameter(torch.zeros(cfg.latent))  # what the GRU reads before line 1
        self.gru = nn.GRU(cfg.latent, cfg.hidden, cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, 2 * cfg.latent)
        # assoc[c, d]: PMI in bits of character d in another line of a stanza given c in
        # this one (``association``); log_unigram[d]: log p(d) in nats.
        self.register_buffer("assoc", torch.zeros(cfg.vocab, cfg.vocab))
        self.register_buffer("log_unigram", torch.zeros(cfg.vocab))

    def params(self, out):
        """GRU outputs (..., H) -> mean, logvar (..., D) of the next z."""
        m, logvar = self.head(out).chunk(2, -1)
        return m, logvar.clamp(-8.0, 4.0)

    def forward(self, z):
        """z (B, T, D): a poem's latents -> mean, logvar (B, T, D) of p(z_t | z_<t)."""
        before = torch.cat([self.start.expand(len(z), 1, -1), z[:, :-1]], 1)
        out, _ = self.gru(before)
        return self.params(out)

    def first(self, n):
        """Mean, logvar (n, D) of p(z_1), and the GRU state to carry on from."""
        out, h = self.gru(self.start.expand(n, 1, -1))
        return (*self.params(out[:, 0]), h)

    def next(self, z, h):
        """After line latents z (n, D) and state h: mean, logvar of the next z, new state."""
        out, h = self.gru(z.unsqueeze(1), h)
        return (*self.params(out[:, 0]), h)


def nll_per_line(chain, mu, logvar, gen=None):
    """Nats a line of z ~ q(z|x) under the chain, and under N(0, I) (independent lines):
    their difference is what the chain knows of a line from the lines before it."""
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)
    m, lv = chain(z)
    return -log_normal(z, m, lv).mean(), -log_normal(z, torch.zeros_like(z),
                                                       torch.zeros_like(z)).mean()


# ---------------------------------------------------------------------------------------
# Which characters go together in a stanza

def association(ids, vocab, shrink=20.0, min_lines=20, chunk=20_000):
    """(assoc (V, V) in bits, log_unigram (V,) in nats) from stanza ids (N, T, L).

    assoc[c, d] = log2 p(d in another line | c in this one) / p(d), counted over every
    ordered pair of lines of a stanza, each conditional shrunk toward p(d) by ``shrink``
    pseudo-counts; 0 for characters seen fewer than ``min_lines`` times and for the
    special ids (below 4), so they neither help nor hurt a line."""
    N, T, L = ids.shape
    pairs = torch.zeros(vocab * vocab, dtype=torch.float64)
    for s in range(0, N, chunk):
        x = ids[s:s + chunk]
        for i in range(T):
            for j in range(T):
                if i != j:
                    key = x[:, i, :, None] * vocab + x[:, j, None, :]          # (n, L, L)
                    pairs += torch.bincount(key.flatten(), minlength=vocab * vocab)
    pairs = pairs.view(vocab, vocab)
    other = pairs.sum(0)
    p_d = other / other.sum()
    ctx = pairs.sum(1, keepdim=True)
    assoc = torch.log2((pairs + shrink * p_d) / (ctx + shrink) / p_d.clamp(min=1e-12))
    seen = torch.bincount(ids.flatten(), minlength=vocab).double()
    rare = seen < min_lines
    rare[:4] = True
    assoc[rare] = 0.0
    assoc[:, rare] = 0.0
    return assoc.float(), torch.log(p_d.clamp(min=1e-9)).float()


def association_bits(assoc, line, context):
    """Mean assoc (n,) of the characters of ``line`` (n, L) with those of ``context``
    (n, M) ids, over the pairs the table has a value for (rare characters, special ids
    and a character paired with itself count for nothing): how much this line belongs
    with the lines before it."""
    pairs = (line.unsqueeze(-1), context.unsqueeze(1))
    # A character does not go with itself: repeating one is not a theme (real quatrains
    # share 1.8% of their characters between neighbouring lines).
    table = assoc[pairs].masked_fill(pairs[0] == pairs[1], 0.0)               # (n, L, M)
    counted = (table != 0).sum((1, 2)).clamp(min=1)
    return table.sum((1, 2)) / counted


# ---------------------------------------------------------------------------------------
# Fitting, the line VAE frozen

def clauses(text):
    """A poem's lines: '甲，乙。丙，丁。' -> ['甲', '乙', '丙', '丁']; a line without
    punctuation -> [line]."""
    return [c for c in re.split("[，。？！；,.;?!]", text) if c.strip()]


def stanza_ids(run, stanzas):
    """Token ids (N, T, L) of the lines of ``stanzas`` (lists of T lines, each of at most
    the run's max_len characters), encoded in one call."""
    ids = run.tokenizer.encode_batch([x for st in stanzas for x in st], run.max_len)
    return torch.from_numpy(ids).view(len(stanzas), -1, run.max_len)


@torch.no_grad()
def encode_stanzas(model, ids, seconds, batch=2048):
    """mu, logvar (N', T, D) of the stanzas ids (N, T, L), as many as the line encoder
    gets through in ``seconds`` (at least one batch), on the CPU whatever the model's
    device."""
    mus, logvars, t0, done = [], [], time.time(), 0
    N, T, L = ids.shape
    per, dev = max(1, batch // T), next(model.parameters()).device
    while done < N and (done == 0 or time.time() - t0 < seconds):
        chunk = ids[done:done + per]
        mu, logvar = model.encode(chunk.flatten(0, 1).to(dev))
        mus.append(mu.view(len(chunk), T, -1).cpu())
        logvars.append(logvar.view(len(chunk), T, -1).cpu())
        done += len(chunk)
    return torch.cat(mus), torch.cat(logvars)


def read_stanzas(path, lines, lengths):
    """The stanzas of a file of poems ('甲，乙。丙，丁。' a line) with ``lines`` clauses,
    each of one of the run's line ``lengths`` (characters)."""
    out = []
    for text in path.read_text(encoding="utf-8").splitlines():
        s = clauses(text.strip())
        if len(s) == lines and all(len(x) in lengths for x in s):
            out.append(s)
    return out


@dataclass
class Encoded:
    """Stanzas for fitting: ids (N, T, L) of all the training stanzas, (mu, logvar)
    (N', T, D) of the first N' (as many as the encoder got through), and the held-out
    stanzas' ids and (mu, logvar)."""
    ids: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    valid_ids: torch.Tensor
    valid_mu: torch.Tensor
    valid_logvar: torch.Tensor


def encode_splits(run, train, valid, seconds, seed=0, count=None):
    """Encoded ``train`` stanzas (shuffled; as many as ``seconds`` allow, at most
    ``count``) and up to 2,000 ``valid`` ones (lists of lines)."""
    train = random.Random(seed).sample(train, len(train))[:count]
    ids, vids = stanza_ids(run, train), stanza_ids(run, valid[:2000])
    return Encoded(ids, *encode_stanzas(run.model, ids, seconds), vids,
                   *encode_stanzas(run.model, vids, float("inf")))


def fit_chain(run, train, valid, seconds, log=print, seed=0, **settings):
    """A LatentChain fitted to the stanzas ``train`` (lists of lines) in about ``seconds``:
    a third of them encoding, the rest training. Returns (chain, figures)."""
    t0 = time.time()
    data = encode_splits(run, train, valid, seconds / 3, seed)
    return train_chain(run, data, seconds - (time.time() - t0), log, seed, **settings)


def train_chain(run, data, seconds, log=print, seed=0, batch=256, lr=2e-3, steps=0):
    """A LatentChain fitted to the Encoded ``data`` for ``seconds`` (``steps`` > 0:
    exactly that many steps, whatever the clock). Returns (chain, figures)."""
    torch.manual_seed(seed)
    t0, mu, logvar = time.time(), data.mu, data.logvar
    cfg = ChainConfig(latent=mu.shape[-1], lines=mu.shape[1], vocab=run.model.cfg.vocab_size)
    chain = LatentChain(cfg)
    chain.assoc, chain.log_unigram = association(data.ids, cfg.vocab)
    opt = torch.optim.Adam(chain.parameters(), lr=lr)
    steps_done, gen = 0, torch.Generator().manual_seed(seed)
    while (steps_done < steps) if steps else (time.time() - t0 < seconds):
        pick = torch.randint(len(mu), (batch,), generator=gen)
        loss, _ = nll_per_line(chain, mu[pick], logvar[pick], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_done += 1
    chain.eval()
    with torch.no_grad():
        nll, prior = nll_per_line(chain, data.valid_mu, data.valid_logvar,
                                  torch.Generator().manual_seed(1))
    figures = {"stanzas": len(mu), "steps": steps_done, "seconds": round(time.time() - t0, 1),
               "valid_nll": round(nll.item(), 2), "valid_nll_independent": round(prior.item(), 2)}
    log(f"poem chain: {len(mu):,} stanzas encoded, {steps_done:,} steps in {figures['seconds']} s; "
        f"valid z of a line {figures['valid_nll']} nats under the chain, "
        f"{figures['valid_nll_independent']} as independent lines")
    return chain, figures


# ---------------------------------------------------------------------------------------
# Writing poems

@torch.no_grad()
def line_lm_nats(model, ids):
    """log p(line) (B,) under the refiner read as a plain language model: at noise 1 it
    was trained on a z that is pure noise, so there it writes from the characters alone;
    z = 0, the noise's mean, makes the score the same on every call."""
    z, noise, draft = lm_inputs(model, ids.unsqueeze(1))       # one line a "stanza"
    return log_prob(model.refiner(ids, z[:, 0], noise[:, 0], draft[:, 0]), ids)


# How a candidate line is scored: log p(line | the lines before) under the poem-context
# refiner read as a language model (where the run has none, log p(line) under the line
# refiner), less "unigram" times its characters' log p (frequent characters alone make a
# line likely, and a poem of them reads empty), plus "assoc" times its mean association
# (bits) with the lines before it, less "echo" nats for each of its characters the lines
# before already hold, "numerals" nats for each numeral of the poem beyond its second
# and each of the line beyond its first, and "particles" nats for each function
# character of the poem beyond its third and of the line beyond its first (``faults``).
# Chosen by blind panels and bench/poems.py (docs/poems.md); the chain's own density was
# tried and added nothing.
WEIGHTS = {"unigram": 0.5, "assoc": 30.0, "echo": 3.0, "numerals": 4.0, "particles": 4.0}

# Numerals: real quatrains have three or more in 3% of poems, and a line of two or more
# in 1.5% of lines; left to the language model, a poem that opens with one runs on in
# them (经行三十载 客来五百年 万里四十年), 13-30% of poems with three or more, and the
# best of 64 first lines is often a stock 三千里 or 三十里 (30% of poems with three or
# more where only the poem's numerals were counted, 3% with the line's too).
NUMERALS = "一二三四五六七八九十百千万两"

# Function characters (虚词: particles, negations, pronouns, question words): real
# quatrains have 1.6 a poem and four or more in 10% of poems; a line of two or more in 7%.
# Left to the language model, whose likeliest lines are made of them, a newcomer's
# 15-minute run wrote five or more in half its poems (非吾非所忘 未必以为之), and readers
# score such poems lowest.
PARTICLES = "之乎者也矣焉哉而以于为其所不无非何亦岂乃则且犹未莫谁安宁自可得吾尔汝兮此彼若如"


def faults(run, ids, before):
    """Nats (n,) taken from candidate lines ids (n, L) written after ``before`` (n, M)
    ids: each character the lines before already hold (real quatrains repeat 0.12 a
    line, ours 0.8 unchecked), each numeral it takes its poem beyond the poem's second
    and each of the line beyond its first (a numeral that is both pays twice: 三十一
    opening a poem costs three times the weight), and each function character it takes
    the poem beyond its third or the line beyond its first, counted the same way."""
    w = WEIGHTS
    # <pad> fills out short lines and the other special ids are never written: no echoes.
    echo = (ids > EOS) & (ids.unsqueeze(-1) == before.unsqueeze(1)).any(-1)
    return (w["echo"] * echo.sum(-1)
            + w["numerals"] * _beyond(run, NUMERALS, ids, before, poem=2, line=1)
            + w["particles"] * _beyond(run, PARTICLES, ids, before, poem=3, line=1))


def _beyond(run, chars, ids, before, poem, line):
    """(n,) how many of ``chars`` the lines ids (n, L) add beyond the ``poem`` first of
    their poem (the lines ``before`` (n, M) hold the rest), plus those beyond the line's
    first ``line``. An excess the lines before already had is not charged again."""
    known = [i for i in map(run.tokenizer.index.get, chars) if i is not None]
    these = torch.tensor(known, dtype=torch.long, device=ids.device)
    in_line, earlier = torch.isin(ids, these).sum(-1), torch.isin(before, these).sum(-1)
    added = (in_line + earlier - poem).clamp(min=0) - (earlier - poem).clamp(min=0)
    return added + (in_line - line).clamp(min=0)


def line_scores(run, ids, context):
    """Score (n K,) of candidate lines ids (n K, L), K for each of n poems whose lines so
    far are ``context`` (n, T, L) ids (T may be 0)."""
    chain, w, model = run.chain, WEIGHTS, run.model
    K = len(ids) // len(context)
    on = ids.to(next(model.parameters()).device)
    if run.context is not None:  # log p(line | the lines before), as many as it has rows for
        seen = recent(context, run.context.cfg.lines - 1).to(on.device)
        score = line_nats(run.context, model, seen, on).cpu()
    else:
        score = line_lm_nats(model, on).cpu()
    score -= w["unigram"] * chain.log_unigram[ids].sum(-1)
    before = context.flatten(1).repeat_interleave(K, 0)
    if context.shape[1] and w["assoc"]:
        score += w["assoc"] * association_bits(chain.assoc, ids, before)
    return score - faults(run, ids, before)


def best_lines(run, ids, context, taken=None):
    """Rows (n,) into ids (n K, L), K candidate lines for each of n poems whose lines so
    far are ``context`` (n, T, L): each poem's best by ``line_scores``, a line of
    ``taken[i]`` (the poem's lines so far) only where every candidate is one (the
    first, then: with one candidate a line, a poem can repeat a line)."""
    n = len(context)
    K = len(ids) // n
    scores = line_scores(run, ids, context).view(n, K)
    if taken is not None:
        from .decoding import texts
        written = texts(run, ids)
        for i, lines in enumerate(taken):
            for k in range(K):
                if written[i * K + k] in lines:
                    scores[i, k] = float("-inf")
    return torch.arange(n) * K + scores.argmax(1)


def drawn(m, logvar, eps):
    """z (n, K, D) = m + s eps: K draws for each of n poems from the chain's N(m, s^2)
    (n, D), given the noise eps (n, K, D)."""
    return m.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps


def read_on(run, ids, h):
    """The chain's (m, logvar, h) for the next line, once it has read the lines ``ids``
    (n, L) through their encoded mu (the chain lives on the CPU, the model may not)."""
    from .decoding import device_of
    return run.chain.next(run.model.encode(ids.to(device_of(run)))[0].cpu(), h)


@torch.no_grad()
def chain_poems(run, n, sc, gen, candidates=16, n_lines=None, first=()):
    """``n`` poems of ``n_lines`` lines, each line the best of ``candidates`` drawn from
    the run's chain (module docstring); with ``first``, poems that open with those
    lines, the chain reading them as it reads lines it wrote."""
    from .decoding import encode_lines, noise_of, texts, with_temperature, write_lines
    chain, model, K = run.chain, run.model, max(1, candidates)
    sc = with_temperature(sc, "poem")
    n_lines = n_lines or chain.cfg.lines
    if len(first) >= n_lines:
        raise UserError(f"a poem of {n_lines} lines has nothing left to write after "
                        f"{len(first)} given lines")
    m, logvar, h = chain.first(n)
    so_far = Written.start(n, run.max_len, m.shape[-1])
    if first:
        given = encode_lines(run, list(first))
        mus = model.encode(given)[0].cpu()
        for mu in mus:
            m, logvar, h = chain.next(mu.expand(n, -1), h)
        # Given lines are read as reconstructions are: their mu, trusted (noise 0).
        so_far = so_far.add(given.cpu().expand(n, -1, -1), mus.expand(n, -1, -1), 0.0)
    poems, noise = [list(first) for _ in range(n)], noise_of(sc, poem=True)
    for _ in range(n_lines - len(first)):
        eps = torch.randn(n, K, m.shape[-1], generator=gen)
        z = drawn(m, logvar, eps).flatten(0, 1)
        ids = write_lines(run, z, noise, sc, gen=gen,
                          refiner=so_far.writer(run, K))                    # (n K, L)
        rows = best_lines(run, ids, so_far.ids, taken=poems)
        for poem, text in zip(poems, texts(run, ids[rows])):
            poem.append(text)
        so_far = so_far.add(ids[rows].unsqueeze(1), z[rows].unsqueeze(1), noise)
        m, logvar, h = read_on(run, ids[rows], h)
    return poems
