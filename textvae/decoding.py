"""Writing lines from z: the decoding path every line goes through, and fitting z to
a given line.

``write_lines(run, z, noise, ...)``:
  1. the fan-out heads decode z into a draft, one character per position;
  2. draft characters the heads are sure of (probability >= ``keep``) stay, and so do
     characters the user gave;
  3. the refiner writes the rest left to right, each character from z, the draft and
     the characters before it (a given or kept character later in the line is held
     where it is).
``noise`` is the level at which the refiner reads z (model.py): 0 for a line's own
posterior mean (reconstruction keeps what z says), ``noise_of(sc)`` for z drawn
from the prior or lying between two lines. Characters are drawn at ``temperature``
(0: greedily), among the ``top_k`` most likely if that is > 0. <unk>, <s> and </s> are
never written; <pad> (the end of a shorter line) only on corpora with lines of several
lengths, and never before a given character.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .errors import UserError
from .tokenizer import BOS, EOS, PAD, UNK


@dataclass
class SampleConfig:
    temperature: float | None = None  # characters are drawn from softmax(logits / T);
                              # 0: the most likely (greedy); default: 0.7 for a run of
                              # characters, 0.8 for one of word pieces, 0.5 for the
                              # lines of a poem the poem model ranks
    top_k: int = 0            # k > 0: draw among the k most likely only; 0: among all
    seed: int = 0             # same seed, same output; another seed, independent output
    noise: float | None = None  # how loosely the refiner reads a drawn z, 0 (exactly) to
                              # 1 (not at all): higher is more fluent but less varied;
                              # default: 0.8 for the lines of a poem the poem model
                              # ranks, 0.5 for others (a line alone, a path, a completion)
    keep: float = 0.9         # draft characters at least this likely are kept as they are
    stay: float | None = None # interpolation: nats added to the character the path's
                              # previous point has at the same position (fewer changes a
                              # step); default: 1 for lines of up to 5 characters, else 4
    repeat_penalty: float = 1.0  # nats taken from a character the line already holds
                                 # (Keskar et al. 2019): repeats read as faults
    fit_steps: int = 30       # gradient steps fitting a given line's z, so it comes back
                              # exactly; 0: the encoder's mu as it is
    theme: str = ""           # a line: every z is drawn around its z, so the poems lean
                              # its way (e.g. 白日依山尽)
    theme_weight: float = 0.5 # share of the theme in each z, 0 (none) to 1 (the line itself)
    keywords: str = ""        # characters separated by commas (月,秋): each line holds
                              # one, in turn (with --form: the first lines, one each)
    line_candidates: int = 64 # a poem from a run with a poem chain: lines drawn for each
                              # of its lines, the one the model scores best kept
    independent: bool = False # each line of a poem from its own z ~ N(0, I), as a run
                              # without a poem chain writes them

    def __post_init__(self):
        if self.temperature is not None and not self.temperature >= 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if self.noise is not None and not 0 <= self.noise <= 1:
            raise UserError(f"--noise must be in [0, 1], got {self.noise}")
        if not 0 < self.keep <= 1.000001:
            raise UserError(f"--keep must be in (0, 1], got {self.keep}")
        if self.repeat_penalty < 0:
            raise UserError(f"--repeat-penalty must be >= 0, got {self.repeat_penalty}")
        if self.line_candidates < 1:
            raise UserError(f"--line-candidates must be at least 1, got {self.line_candidates}")
        if self.fit_steps < 0:
            raise UserError(f"--fit-steps must be >= 0, got {self.fit_steps}")
        if not 0 <= self.theme_weight <= 1:
            raise UserError(f"--theme-weight must be in [0, 1], got {self.theme_weight}")
        if any(len(k) != 1 for k in self.keyword_list()):
            raise UserError(f"--keywords takes single characters separated by commas, "
                            f"e.g. 月,秋; got {self.keywords!r}")

    def keyword_list(self):
        return [k.strip() for k in self.keywords.split(",")] if self.keywords.strip() else []


# The default temperature of a run whose positions hold characters, or word pieces: a
# piece holds more of a line, so a cold draw copies whole training lines more often
# (docs/model.md). A line of a poem the poem model writes and ranks (free poems, forms,
# continue) is the best of many candidates, so a colder draw costs little variety, and
# blind readers found those poems more fluent and coherent at 0.5 (docs/poems.md).
TEMPERATURE = {"chars": 0.7, "pieces": 0.8, "poem": 0.5}


def with_temperature(sc: SampleConfig, units):
    """``sc`` with the default temperature of a run of ``units`` (or of a "poem" the
    poem model ranks) where it names none."""
    return sc if sc.temperature is not None else replace(sc, temperature=TEMPERATURE[units])


# The default noise of a line written alone (or on a path, or completed) and of a line of
# a poem the poem model writes: those are each the best of many candidates, which keeps
# them varied, and blind readers found its poems more fluent at 0.8 (docs/poems.md).
NOISE = {"line": 0.5, "poem": 0.8}


def noise_of(sc: SampleConfig, poem=False):
    """The level at which a drawn z is read: ``sc.noise``, or the default for the lines
    of a poem the poem model ranks (``poem``) or for other lines."""
    return sc.noise if sc.noise is not None else NOISE["poem" if poem else "line"]


def for_run(run, sc: SampleConfig):
    return with_temperature(sc, run.tokenizer.units)


def banned_for(lengths, max_len):
    """Ids never emitted: <unk>, <s>, </s>; <pad> too for a corpus of one fixed length."""
    return [UNK, BOS, EOS] + ([PAD] if list(lengths) == [max_len] else [])


def _prob_of(logits, ids):
    """Probability (n,) of the chosen ids (n,) under logits (n, V)."""
    return logits.softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def choose(logits, sc: SampleConfig, gen=None, gumbel=None):
    """Characters (n,) from logits (n, V) whose banned entries are -inf: greedy at
    temperature 0, else drawn at ``temperature`` (among the ``top_k`` best if > 0).
    ``gumbel`` (n, V), optional: the draw's noise, given (Gumbel-max: argmax of
    logits / T + Gumbel noise is a draw from softmax(logits / T)), so that lines
    written with the same noise from nearby z differ only where their logits do."""
    if sc.temperature == 0:
        return logits.argmax(-1)
    if sc.top_k:
        kth = logits.topk(min(sc.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gumbel is None:
        return draw_one(logits / sc.temperature, gen)
    return (logits / sc.temperature).add_(gumbel).argmax(-1)


# The characters of a row a draw gives noise of their own (draw_one).
NEAR = 16


def draw_one(logits, gen=None):
    """One index a row (n,) drawn from softmax(logits) (n, V), exactly: a Gumbel-max
    with noise for the row's NEAR most likely entries only, the rest taken as one entry.
    The largest of Gumbel-perturbed logits is itself Gumbel, around their log-sum-exp,
    and independent of which one it is; so the rest's best is one draw, and only where
    it wins (as often as the rest's probability) does a Gumbel-max over V decide among
    them. V numbers a row were a fifth of writing a line: the CPU generator makes them
    one at a time. Unlike one uniform number placed in the running sum of
    probabilities, a tiny change in the logits (the cached and the full-pass refiner's
    float rounding) almost never changes the draw; where it flips whether the rest wins,
    the numbers drawn after it shift, so later lines of the batch change too."""
    k = min(NEAR, logits.shape[1])
    top, idx = logits.topk(k, sorted=False)
    # Each entry's noise by its id, not its rank; banned (-inf) entries, which topk
    # takes in a device's own order where fewer than k are allowed, sort last.
    slot = torch.arange(k, device=idx.device) + logits.shape[1]
    order = torch.where(top > float("-inf"), idx, slot).argsort(1)
    top, idx = top.gather(1, order), idx.gather(1, order)
    g = gumbel_noise((len(top), k + 1), gen).to(top.device)
    best, arg = (top + g[:, :k]).max(1)
    drawn = idx.gather(1, arg.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, idx, float("-inf"))
    # The rest's log mass summed directly: as the whole's less the top's, rounding left
    # a little mass where none was, and <pad> (id 0, banned) could win.
    wins = (others.logsumexp(-1) + g[:, k] > best).nonzero().squeeze(1)
    if len(wins):
        drawn[wins] = gumbel_max(others[wins], gen)
    return drawn


def gumbel_max(logits, gen=None):
    """One index a row drawn from softmax(logits) (n, V) with noise for every entry."""
    return (logits + gumbel_noise(logits.shape, gen).to(logits.device)).argmax(-1)


def gumbel_noise(shape, gen=None):
    """-log(-log U), U ~ U(0, 1): the noise of a Gumbel-max draw."""
    u = torch.rand(shape, generator=gen).clamp_(1e-10, 1 - 1e-7)
    return u.log_().neg_().log_().neg_()  # in place: a line batch's (n, V) is ~64 MB


def _ban(logits, at, banned, min_len, given=None, allowed=None):
    """Float logits (n, V) of the positions ``at`` = (lines, positions), with banned ids
    at -inf; changed in place (callers pass logits just computed). Where <pad> may end a
    line, it is banned before the corpus' shortest length (no line is shorter, none
    empty) and, with ``given`` (B, L; -1 = free), up to the last given character (no
    completion ends early). ``allowed`` (B, L, V) bool, optional, on the logits'
    device: only those characters at each position (the tones and rhymes of a form)."""
    logits = logits.float()
    logits[:, banned] = float("-inf")
    lines, pos = at
    if allowed is not None:
        logits.masked_fill_(~allowed[lines, pos], float("-inf"))
    if PAD not in banned:
        first = torch.full_like(pos, min_len)   # the first position <pad> may take
        if given is not None:
            where = torch.where(given >= 0, torch.arange(given.shape[1], device=pos.device), -1)
            first = torch.maximum(first, where.amax(1)[lines] + 1)
        logits[:, PAD].masked_fill_(pos < first, float("-inf"))
    return logits


def every_position(B, L, device):
    """``at`` for all positions of B lines: (lines, positions), row-major like (B, L)."""
    return torch.ones(B, L, dtype=torch.bool, device=device).nonzero(as_tuple=True)


def write_lines(run, z, noise, sc: SampleConfig = SampleConfig(), given=None, gen=None,
                allowed=None, gumbel=None, prefer=None, refiner=None):
    """Token ids (B, L) written from z (B, D) by the full decoding path (module docstring).

    given: optional (B, L) ids, -1 where free; those characters are kept as they are.
    allowed: optional (B, L, V) bool, the only characters each position may take.
    gumbel: optional (B, L, V), the noise of each position's draw (``choose``).
    prefer: optional (B, L) ids whose logits get ``sc.stay`` nats more (a path's
    previous point).
    refiner: optional, what writes in the line refiner's place (context.InPoem: the
    next line of poems, the lines before in view; its ``rows(s)`` the writer of lines s
    only, for batches written in chunks).
    """
    return write_ids(run.model, run.lengths, z, noise, for_run(run, sc), given, gen, allowed,
                     gumbel, prefer, refiner=refiner)


# Lines written at once on a CPU. A larger batch is no faster there: its (n, V) logits are
# fresh memory at every pass, and the page faults cost more than the larger matmuls gain
# (measured on a 2-core CPU: 4096 lines at once 1,433 lines/s, 512 at a time 1,853).
CHUNK = 512


@torch.no_grad()
def write_ids(model, lengths, z, noise, sc: SampleConfig = SampleConfig(), given=None,
              gen=None, allowed=None, gumbel=None, prefer=None, cached=True, refiner=None,
              chunk=None):
    """``write_lines`` for a bare model and its corpus' line lengths (the trainer has no
    run yet: a temperature of None is a character run's), ``chunk`` lines at a time
    (default: CHUNK on a CPU, all at once on a GPU). A seed's lines are the same on
    every run of one device, not across devices: chunks draw their noise in turn.
    ``cached=False``: the refiner recomputes the whole line at every pass, as it first
    did (same characters, slower)."""
    if not chunk:  # the page faults that make chunks pay are a CPU's: a GPU writes at once
        chunk = CHUNK if next(model.parameters()).device.type == "cpu" else len(z)
    args = dict(sc=sc, gen=gen, cached=cached)
    if len(z) <= chunk:
        return _write_chunk(model, lengths, z, noise, given=given, allowed=allowed,
                            gumbel=gumbel, prefer=prefer, refiner=refiner, **args)
    noise = torch.as_tensor(noise).expand(len(z))

    def rows(x, s):  # an argument's rows s, where it has one a line
        return None if x is None else x[s]
    parts = []
    for start in range(0, len(z), chunk):
        s = slice(start, start + chunk)
        parts.append(_write_chunk(model, lengths, z[s], noise[s], given=rows(given, s),
                                  allowed=rows(allowed, s), gumbel=rows(gumbel, s),
                                  prefer=rows(prefer, s), refiner=refiner and refiner.rows(s),
                                  **args))
    return torch.cat(parts)


def _write_chunk(model, lengths, z, noise, sc, given, gen, allowed, gumbel, prefer, cached,
                 refiner):
    """write_ids on lines few enough to write at once (its arguments cut to them)."""
    sc = with_temperature(sc, "chars")
    banned, min_len = banned_for(lengths, model.cfg.max_len), min(lengths)
    z = z.to(next(model.parameters()).device)
    if given is not None:
        given = given.to(z.device)
    if allowed is not None:
        allowed = allowed.to(z.device)  # once, not at every pass
    draft = model.decoder.features(z)                                       # (B, L, H)
    B, L = draft.shape[:2]
    at = every_position(B, L, z.device)
    logits = _ban(model.decoder.out(draft).flatten(0, 1), at, banned, min_len, given, allowed)
    # The draft is what the heads say, so it is their most likely character (drawn at a
    # temperature, a reconstruction would no longer return its line).
    ids = logits.argmax(-1).view(B, L)
    conf = _prob_of(logits, ids.flatten()).view(B, L)
    levels = torch.as_tensor(noise, dtype=z.dtype, device=z.device).expand(len(z))
    # A z read at noise 0 is trusted entirely: the heads' draft is the line (the
    # refiner, measured, rewrote 9% of the characters the heads got right).
    fixed = (conf >= sc.keep) | (levels == 0).unsqueeze(1)
    if given is not None:
        ids = torch.where(given >= 0, given, ids)
        fixed |= given >= 0
    if model.refiner is None:
        return ids.cpu()
    if gumbel is not None:
        gumbel = gumbel.to(z.device)  # once, not at every pass
    if prefer is not None:
        prefer = prefer.to(z.device)
    if not cached:
        return _write_passes(model, ids, fixed, z, levels, draft, sc,
                             (banned, min_len, given, allowed), gen, gumbel, prefer).cpu()
    return _write_cached(refiner or model.refiner, ids, fixed, z, levels, draft, sc,
                         (banned, min_len, given, allowed), gen, gumbel, prefer).cpu()


def _write_cached(ref, ids, fixed, z, levels, draft, sc, rules, gen, gumbel, prefer):
    """The refiner ``ref`` writes the free positions left to right, one position a pass,
    its keys and values kept (Refiner.start / step)."""
    free = (~fixed).any(0).nonzero()
    cache = ref.start(z, levels)
    before = torch.full_like(ids[:, 0], ref.start_id)
    # Up to the last column with a free position: one look at the device, not one a pass.
    for t in range(int(free.max()) + 1 if len(free) else 0):
        h, cache = ref.step(cache, before, t, draft[:, t])                  # (B, d)
        rows = (~fixed[:, t]).nonzero().squeeze(1)
        if len(rows):
            at = (rows, torch.full_like(rows, t))
            ids = _draw(ref.out(h[rows]), at, ids, fixed, t, sc, rules, gen, gumbel, prefer)
        before = ids[:, t]
    return ids


def _write_passes(model, ids, fixed, z, levels, draft, sc, rules, gen, gumbel, prefer):
    """``_write_cached`` as first written: every pass runs the refiner over the whole
    line (kept to check the cached path against, and to time it: bench/speed.py)."""
    L = ids.shape[1]
    for t in range(L):  # left to right; each pass reads only the characters before t
        col = torch.zeros_like(fixed)
        col[:, t] = True
        write = col & ~fixed
        if not write.any():
            continue
        logits = model.refiner(ids, z, levels, draft, at=write)             # (n, V)
        ids = _draw(logits, write.nonzero(as_tuple=True), ids, fixed, t, sc, rules, gen,
                    gumbel, prefer)
    return ids


def _draw(logits, at, ids, fixed, t, sc, rules, gen, gumbel, prefer):
    """ids with the positions ``at`` (all in column t) drawn from the refiner's logits
    (n, V): the banned and disallowed characters out, repeats lowered, the path's
    previous point preferred."""
    logits = _ban(logits, at, *rules)
    # Repeats are counted against the characters already written and those fixed.
    settled = (torch.arange(ids.shape[1], device=ids.device) < t) | fixed
    logits = _penalise_repeats(logits, at[0], ids.masked_fill(~settled, -1), sc.repeat_penalty)
    logits = _no_third_in_a_row(logits, at[0], ids, t)
    if prefer is not None and sc.stay:
        logits[torch.arange(len(logits)), prefer[at]] += sc.stay
    drawn = None if gumbel is None else gumbel[at]
    return ids.index_put(at, choose(logits, sc, gen, drawn))


def _no_third_in_a_row(logits, lines, ids, t):
    """Ban, at column t of ``lines`` (n,), the character the two before it both hold: a
    character three times running is in 0.005% of tang5's lines, and a refiner leaning
    on the characters before writes 萧萧萧 (<pad> is exempt, as in repeats)."""
    if t < 2:
        return logits
    a, b = ids[lines, t - 1], ids[lines, t - 2]
    rows = ((a == b) & (a != PAD)).nonzero().squeeze(1)
    logits[rows, a[rows]] = float("-inf")
    return logits


def _penalise_repeats(logits, lines, ids, penalty):
    """Lower the logits (n, V) of positions being written in ``lines`` (n,) by ``penalty``
    at the characters their line already holds (ids (B, L), -1 at unsettled
    positions). <pad> is exempt: a short line's end is <pad> repeated."""
    if penalty == 0:
        return logits
    held = ids[lines].sort(1).values                                        # (n, L)
    # A character held twice is lowered once; -1 and <pad> add 0 (at <pad>'s column).
    first = torch.ones_like(held, dtype=torch.bool)
    first[:, 1:] = held[:, 1:] != held[:, :-1]
    lower = ((held >= 0) & (held != PAD) & first).to(logits.dtype) * -penalty
    return logits.scatter_add_(1, held.clamp(min=0), lower)   # in place: O(n L), not O(n V)


def texts(run, ids):
    # A <pad> mid-line ends the line early; form checks then catch it as malformed.
    return [run.tokenizer.decode(row) for row in ids.tolist()]


def encode_lines(run, lines, allow_unk=False):
    """Token ids (B, L) of the given lines, with a clear error for anything unusable."""
    if not lines:
        raise UserError("no lines given")
    rows = []
    for line in lines:
        if not line.strip():
            raise UserError("an empty line cannot be encoded")
        rows.append(run.tokenizer.encode(line, run.max_len, allow_unk=allow_unk))
    return torch.tensor(rows, dtype=torch.long, device=device_of(run))


def fit_z(run, idx, steps=30, lr=0.1, prior=0.1):
    """z for given lines (token ids ``idx``): the encoder's mu, then a few Adam steps on
    z alone that raise log p(x|z) - prior * |z|^2 / 2, each line stopping as soon as
    the heads write it back exactly.

    Semi-amortized inference (Kim et al. 2018; Hjelm et al. 2016): an encoder trained
    for 15 CPU-minutes puts mu where the heads write a third of test lines wrong in some
    character (the amortization gap); measured on 1,000 tang5 test lines, 30 steps take
    the exact share from 0.68 to 0.93 (the rest are mostly lines with characters outside
    the vocabulary) while z moves a quarter of a posterior standard deviation.
    """
    model = run.model
    banned, min_len = banned_for(run.lengths, model.cfg.max_len), min(run.lengths)
    with torch.no_grad():
        mu, _ = model.encode(idx)
    z = mu.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        with torch.no_grad():
            logits = model.decode(z)
            at = every_position(*logits.shape[:2], logits.device)
            written = _ban(logits.flatten(0, 1), at, banned, min_len).argmax(-1)
            todo = (written.view_as(idx) != idx).any(1)
        if not todo.any():
            break
        with torch.enable_grad():
            logits = model.decode(z).float()
            rec = F.cross_entropy(logits.transpose(1, 2), idx, reduction="none").sum(1)
            loss = ((rec + prior * 0.5 * z.pow(2).sum(1)) * todo).sum()
            grad, = torch.autograd.grad(loss, z)
        z.grad, before = grad, z.detach().clone()
        opt.step()
        with torch.no_grad():  # Adam's momentum would carry finished lines on
            z[~todo] = before[~todo]
    return z.detach()


def given_z(run, lines, allow_unk=False, sc: SampleConfig = SampleConfig()):
    """The z a given line is written from: its posterior mean, fitted (``fit_z``)."""
    idx = encode_lines(run, lines, allow_unk)
    if sc.fit_steps == 0:
        with torch.no_grad():
            return run.model.encode(idx)[0]
    return fit_z(run, idx, sc.fit_steps)


@torch.no_grad()
def pick_z(run, z, given, allowed=None, budget=2 ** 24):
    """For each row of candidates z (P, C, D), the one (P, D) under which the heads give
    the most log-probability to the given characters (given (P, L), -1 = free) and, with
    ``allowed`` (P, L, V), to the allowed set of every free position. Rows are scored a
    few at a time, so the (rows, C, L, V) log-probabilities stay within ``budget`` floats."""
    best = []
    for rows, logp in heads_logp(run, z, budget):
        score = _scores(logp, given[rows], None if allowed is None else allowed[rows])
        best.append(z[rows][torch.arange(len(score)), score.argmax(1)])
    return torch.cat(best)


@torch.no_grad()
def heads_logp(run, z, budget=2 ** 24):
    """(rows, logp) for the rows of candidates z (P, C, D) a few at a time: a slice of
    rows and the heads' log-probabilities (n, C, L, V) of their z, on the CPU, each chunk
    within ``budget`` floats."""
    P, C = z.shape[:2]
    step = max(1, budget // (C * run.max_len * len(run.tokenizer.chars)))
    for s in range(0, P, step):
        rows = slice(s, s + step)
        logits = run.model.decode(z[rows].flatten(0, 1).to(device_of(run)))
        yield rows, torch.log_softmax(logits.float(), -1).cpu().view(-1, C, *logits.shape[1:])


def _scores(logp, given, allowed):
    """(P, C) log-probabilities of ``pick_z`` for one chunk of rows, from the heads'
    logp (P, C, L, V)."""
    P, C = logp.shape[:2]
    hit = logp.gather(-1, given.clamp(min=0)[:, None, :, None].expand(P, C, -1, 1)).squeeze(-1)
    free = torch.zeros_like(hit) if allowed is None else \
        logp.masked_fill(~allowed.unsqueeze(1), float("-inf")).logsumexp(-1)   # (P, C, L)
    return torch.where((given >= 0).unsqueeze(1), hit, free).sum(-1)


def device_of(run):
    return next(run.model.parameters()).device
