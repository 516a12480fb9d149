"""Using a trained model: sample, write poems, interpolate, reconstruct, encode, complete.

Every line is written by one decoding path, ``write_lines(run, z, noise, ...)``:
  1. the fan-out heads decode z into a draft, one character per position;
  2. draft characters the heads are sure of (probability >= ``keep``) stay, and so do
     characters the user gave;
  3. the refiner writes the rest left to right, each character from z, the draft and
     the characters before it (a given or kept character later in the line is held
     where it is).
``noise`` is the level at which the refiner reads z (see model.py): 0 for a line's own
posterior mean (reconstruction keeps what z says), ``SampleConfig.noise`` for z drawn
from the prior or lying between two lines.

Characters are drawn at ``temperature`` (0: the most likely, greedily), among the
``top_k`` most likely if that is > 0. <unk>, <s> and </s> are never emitted; <pad> (the end of a shorter line)
only on corpora with lines of several lengths, and never before a given character.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .errors import UserError
from .tokenizer import BOS, EOS, PAD, UNK


@dataclass
class SampleConfig:
    temperature: float | None = None  # characters are drawn from softmax(logits / T);
                              # 0: the most likely one (greedy); None: the run's,
                              # TEMPERATURE (tang5, 1,000 samples: 0.7 is 0.15 bits/char
                              # below real lines, 0.8 0.48 below)
    top_k: int = 0            # k > 0: draw among the k most likely only; 0: among all
    seed: int = 0             # same seed, same poems; different seeds, independent poems
    noise: float = 0.5        # level at which the refiner reads a prior z: 0 trusts z
                              # fully, 1 ignores it; higher is more fluent but less varied
    keep: float = 0.9         # draft characters at least this likely are never rewritten
    stay: float | None = None # interpolation: nats added to the character the path's
                              # previous point has at the same position, so a path
                              # changes a few characters a step; None: stay_for(length)
    repeat_penalty: float = 1.0  # nats taken from a character's logit where the line
                                 # already holds it (Keskar et al. 2019): without, 2.8%
                                 # of samples repeat a character next to itself, real
                                 # lines 2.7%; with, 1.5%
    fit_steps: int = 30       # gradient steps fitting a given line's z (fit_z); 0: the
                              # encoder's mu as it is
    theme: str = ""           # a line: z is drawn around its z (theme_z) instead of N(0, I)
    theme_weight: float = 0.5 # share of the theme in each z, 0 (none) to 1 (the line itself)
    keywords: str = ""        # characters, comma-separated: each line holds one, in turn

    def __post_init__(self):
        if self.temperature is not None and not self.temperature >= 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 <= self.noise <= 1:
            raise UserError(f"--noise must be in [0, 1], got {self.noise}")
        if not 0 < self.keep <= 1.000001:
            raise UserError(f"--keep must be in (0, 1], got {self.keep}")
        if self.repeat_penalty < 0:
            raise UserError(f"--repeat-penalty must be >= 0, got {self.repeat_penalty}")
        if self.fit_steps < 0:
            raise UserError(f"--fit-steps must be >= 0, got {self.fit_steps}")
        if not 0 <= self.theme_weight <= 1:
            raise UserError(f"--theme-weight must be in [0, 1], got {self.theme_weight}")
        if any(len(k) != 1 for k in self.keyword_list()):
            raise UserError(f"--keywords takes single characters separated by commas, "
                            f"e.g. 月,秋; got {self.keywords!r}")

    def keyword_list(self):
        return [k.strip() for k in self.keywords.split(",")] if self.keywords.strip() else []


# The default temperature of a run whose positions hold characters, or word pieces.
# Sonnets, 1,000 samples of the default run (runs/sonnets_pieces), novel / unique / sample
# words found in train / KN-3 bits per char (real lines -2.71): at 0.7 0.943 / 0.986 /
# 0.916 / -2.69, at 0.8 0.969 / 0.997 / 0.895 / -2.70, at 0.9 0.986 / 0.999 / 0.869 /
# -2.74. A piece holds more of a line than a character, so a cold draw lands on whole
# training lines more often: 0.8 writes fewer copies at the same fluency.
TEMPERATURE = {"character": 0.7, "piece": 0.8}


def with_temperature(sc: SampleConfig, unit):
    """``sc`` with the default temperature of a run of ``unit``s where it names none."""
    return sc if sc.temperature is not None else replace(sc, temperature=TEMPERATURE[unit])


def for_run(run, sc: SampleConfig):
    return with_temperature(sc, run.tokenizer.unit)


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
        gumbel = gumbel_noise(logits.shape, gen).to(logits.device)
    return (logits / sc.temperature + gumbel).argmax(-1)


def gumbel_noise(shape, gen=None):
    """-log(-log U), U ~ U(0, 1): the noise of a Gumbel-max draw."""
    u = torch.rand(shape, generator=gen).clamp_(1e-10, 1 - 1e-7)
    return -(-u.log()).log()


def _ban(logits, at, banned, min_len, given=None, allowed=None):
    """Float logits (n, V) of the positions ``at`` = (lines, positions), with banned ids
    at -inf; changed in place (callers pass logits just computed). Where <pad> may end a
    line, it is banned before the corpus' shortest length and, with ``given`` (B, L; -1
    = free), before the last given character, so no line is empty and no completion
    ends early. ``allowed`` (B, L, V) bool, optional: only those characters at each
    position (the tones and rhymes of a form)."""
    logits = logits.float()
    logits[:, banned] = float("-inf")
    lines, pos = at
    if allowed is not None:
        logits.masked_fill_(~allowed.to(logits.device)[lines, pos], float("-inf"))
    if PAD not in banned:
        last = torch.full_like(pos, min_len - 1)   # no <pad> before this position
        if given is not None:
            where = torch.where(given >= 0, torch.arange(given.shape[1], device=pos.device), -1)
            last = torch.maximum(last, where.amax(1)[lines])
        logits[:, PAD].masked_fill_(pos < last, float("-inf"))
    return logits


def every_position(B, L, device):
    """``at`` for all positions of B lines: (lines, positions), row-major like (B, L)."""
    return torch.ones(B, L, dtype=torch.bool, device=device).nonzero(as_tuple=True)


def write_lines(run, z, noise, sc: SampleConfig = SampleConfig(), given=None, gen=None,
                allowed=None, gumbel=None, prefer=None):
    """Token ids (B, L) written from z (B, D) by the full decoding path (module docstring).

    given: optional (B, L) ids, -1 where free; those characters are kept as they are.
    allowed: optional (B, L, V) bool, the only characters each position may take.
    gumbel: optional (B, L, V), the noise of each position's draw (``choose``).
    prefer: optional (B, L) ids whose logits get ``sc.stay`` nats more (a path's
    previous point).
    """
    return write_ids(run.model, run.lengths, z, noise, for_run(run, sc), given, gen, allowed, gumbel,
                     prefer)


@torch.no_grad()
def write_ids(model, lengths, z, noise, sc: SampleConfig = SampleConfig(), given=None,
              gen=None, allowed=None, gumbel=None, prefer=None):
    """``write_lines`` for a bare model and its corpus' line lengths (the trainer has no
    run yet: a temperature of None is a character run's)."""
    sc = with_temperature(sc, "character")
    banned, min_len = banned_for(lengths, model.cfg.max_len), min(lengths)
    z = z.to(next(model.parameters()).device)
    if given is not None:
        given = given.to(z.device)
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
    for t in range(L):  # left to right; each pass reads only the characters before t
        col = torch.zeros_like(fixed)
        col[:, t] = True
        write = col & ~fixed
        if not write.any():
            continue
        at = write.nonzero(as_tuple=True)
        logits = model.refiner(ids, z, levels, draft, at=write)             # (n, V)
        logits = _ban(logits, at, banned, min_len, given, allowed)
        # Repeats are counted against the characters already written and those fixed.
        settled = (torch.arange(L, device=ids.device) < t) | fixed
        logits = _penalise_repeats(logits, at[0], ids.masked_fill(~settled, -1),
                                   sc.repeat_penalty)
        if prefer is not None and sc.stay:
            logits[torch.arange(len(logits)), prefer[at]] += sc.stay
        drawn = None if gumbel is None else gumbel[at]
        ids = ids.index_put(at, choose(logits, sc, gen, drawn))
    return ids.cpu()


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
        return texts(run, write_lines(run, prior_z(run, n, gen, sc), sc.noise, sc, gen=gen))
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
    number streams in constant memory. No line repeats within a poem. The first batch
    is of ``FIRST_BATCH`` poems, so the first poem prints at once, not after 256.

    ``heads`` (an acrostic): the first character of each line (of each clause on a
    whole-poem corpus), in order.
    """
    if heads is not None:
        run.need_characters("--acrostic")
        lines_per_poem = len(acrostic_patterns(run, heads))
    gen = torch.Generator().manual_seed(sc.seed)
    for todo in batch_sizes(n_poems, batch):
        lines = _new_lines(run, todo * lines_per_poem, sc, gen, heads)
        for p in range(todo):
            poem = lines[p * lines_per_poem:(p + 1) * lines_per_poem]
            yield _no_repeats(run, poem, sc, gen, heads)


FIRST_BATCH = 8  # poems; also keeps every --num up to 8 exactly as one batch wrote it


def batch_sizes(n, batch, first=FIRST_BATCH):
    """Sizes of the batches that write ``n`` items: a small first one, then ``batch``."""
    done = 0
    while done < n:
        size = min(first if done == 0 else batch, n - done)
        yield size
        done += size


def _no_repeats(run, poem, sc, gen, heads, tries=50):
    """Replace a line that repeats an earlier one of its poem (a repeat reads as a fault;
    after ``tries`` redraws keep it rather than loop on a model that knows few lines)."""
    for i in range(1, len(poem)):
        for _ in range(tries):
            if poem[i] not in poem[:i]:
                break
            poem[i] = _new_lines(run, 1, sc, gen, None if heads is None else heads[i])[0]
    return poem


def encode_lines(run, lines, allow_unk=False):
    """Token ids (B, L) of the given lines, with a clear error for anything unusable."""
    if not lines:
        raise UserError("no lines given")
    rows = []
    for line in lines:
        if not line.strip():
            raise UserError("an empty line cannot be encoded")
        rows.append(run.tokenizer.encode(line, run.max_len, allow_unk=allow_unk))
    return torch.tensor(rows, dtype=torch.long, device=_device(run))


@torch.no_grad()
def encode(run, lines, allow_unk=False):
    """mu and logvar of q(z|x) for each line."""
    mu, logvar = run.model.encode(encode_lines(run, lines, allow_unk))
    return mu.cpu(), logvar.cpu()


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
    a step and needs a firmer lean. Measured on 100 paths of 8 at temperature 0.7
    (characters changed a step / distinct lines a path): tang5 at 2: 1.57 / 5.88, at 4:
    1.24 / 5.07; tang7 at 2: 2.44 / 6.65, at 3: 2.14 / 6.21, at 4: 1.93 / 5.90."""
    return 2.0 if length <= 5 else 4.0


def path_z(mu_a, mu_b, steps, how):
    ts = torch.linspace(0, 1, steps)
    if how == "linear":
        return torch.stack([(1 - t) * mu_a + t * mu_b for t in ts])
    return torch.stack([slerp(mu_a, mu_b, t) for t in ts])


def interpolate(run, line_a, line_b, steps=8, how="linear", allow_unk=False,
                sc: SampleConfig = SampleConfig()):
    """Lines written along the path from z(a) to z(b) (``given_z``), both ends included.

    The ends are posterior means, read at noise 0 like a reconstruction; points between
    two posteriors are read more loosely, up to ``sc.noise`` half-way (sin(pi t)). The
    points are written in order, each leaning ``sc.stay`` nats towards the characters of
    the one before, so a character changes where z has moved enough to outweigh that.
    """
    return interpolate_pairs(run, [(line_a, line_b)], steps, how, allow_unk, sc)[0]


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
    noise = sc.noise * torch.sin(torch.pi * torch.linspace(0, 1, steps)).clamp(min=0)
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
    ids = write_lines(run, pick_z(run, z, given), sc.noise, sc, given=given, gen=gen)
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
    P, C, L = *z.shape[:2], run.max_len
    given, step = given.clone(), max(1, budget // (C * L * len(run.tokenizer.chars)))
    for s in range(0, P, step):
        r = slice(s, s + step)
        k = kw[r].clamp(min=0)
        logp = torch.log_softmax(run.model.decode(z[r].flatten(0, 1).to(_device(run))).float(), -1)
        hit = logp.cpu().view(len(k), C, L, -1).gather(
            -1, k[:, None, None, None].expand(-1, C, L, 1)).squeeze(-1).amax(1)  # (n, L)
        ok = (given[r] < 0) & (kw[r] >= 0).unsqueeze(1)
        ok[:, min(run.form.lengths):] = False
        if allowed is not None:
            ok &= allowed[r].gather(-1, k[:, None, None].expand(-1, L, 1)).squeeze(-1)
        pos = hit.masked_fill(~ok, float("-inf")).argmax(1)
        rows = torch.nonzero(ok.any(1)).squeeze(1)
        given[s + rows, pos[rows]] = k[rows]
    return given


@torch.no_grad()
def pick_z(run, z, given, allowed=None, budget=2 ** 24):
    """For each row of candidates z (P, C, D), the one under which the heads give the
    most log-probability to the given characters (given (P, L), -1 = free) and, with
    ``allowed`` (P, L, V), to the allowed set of every free position. Rows are scored a
    few at a time, so the (rows, C, L, V) log-probabilities stay within ``budget`` floats."""
    P, C = z.shape[:2]
    step = max(1, budget // (C * run.max_len * len(run.tokenizer.chars)))
    best = []
    for s in range(0, P, step):
        rows = slice(s, s + step)
        score = _scores(run, z[rows], given[rows], None if allowed is None else allowed[rows])
        best.append(z[rows][torch.arange(len(score)), score.argmax(1)])
    return torch.cat(best)


def _scores(run, z, given, allowed):
    """(P, C) log-probabilities of ``pick_z`` for one chunk of rows."""
    P, C = z.shape[:2]
    logp = torch.log_softmax(run.model.decode(z.flatten(0, 1).to(_device(run))).float(), -1)
    logp = logp.cpu().view(P, C, *logp.shape[1:])                               # (P, C, L, V)
    hit = logp.gather(-1, given.clamp(min=0)[:, None, :, None].expand(P, C, -1, 1)).squeeze(-1)
    free = torch.zeros_like(hit) if allowed is None else \
        logp.masked_fill(~allowed.unsqueeze(1), float("-inf")).logsumexp(-1)   # (P, C, L)
    return torch.where((given >= 0).unsqueeze(1), hit, free).sum(-1)


def _device(run):
    return next(run.model.parameters()).device
