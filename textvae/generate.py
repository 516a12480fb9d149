"""Using a trained model: sample, write poems, interpolate, reconstruct, encode, complete.

Decoding is per position (the decoder is non-autoregressive): greedy takes the most
likely character at each position, ``top_k`` samples among the k most likely after
dividing the logits by the temperature. The same temperature scales z ~ N(0, T^2 I) when
sampling from the prior. <unk> is never emitted, and <pad> only where the corpus has
lines shorter than the model's length.
"""
from dataclasses import dataclass

import torch

from .errors import UserError
from .tokenizer import PAD, UNK


@dataclass
class SampleConfig:
    temperature: float = 1.0  # scales z and the character softmax; 1 is the model itself
    top_k: int = 0            # 0: greedy per position; k > 0: sample among the k best
    seed: int = 0             # same seed, same poems

    def __post_init__(self):
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")


def banned_ids(run):
    """Ids never emitted: <unk> always; <pad> too for a corpus of one fixed length."""
    banned = [UNK]
    if run.form.lengths == [run.max_len]:
        banned.append(PAD)
    return banned


def pick(logits, banned, sc: SampleConfig, gen=None):
    """Characters from logits (B, L, V): greedy, or top-k sampling at temperature."""
    logits = logits.float().clone()
    logits[..., banned] = float("-inf")
    if sc.top_k == 0:
        return logits.argmax(-1)
    top, idx = logits.topk(min(sc.top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top / sc.temperature, dim=-1)
    choice = torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(probs.shape[:2])
    return idx.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


def _decode_texts(run, ids):
    # A <pad> mid-line ends the line early; form checks then catch it as malformed.
    return [run.tokenizer.decode(row) for row in ids.tolist()]


@torch.no_grad()
def sample(run, n, sc: SampleConfig = SampleConfig()):
    """``n`` lines decoded from z ~ N(0, T^2 I)."""
    gen = torch.Generator().manual_seed(sc.seed)
    z = torch.randn(n, run.model.cfg.latent, generator=gen) * sc.temperature
    ids = pick(run.model.decode(z.to(_device(run))).cpu(), banned_ids(run), sc, gen)
    return _decode_texts(run, ids)


@torch.no_grad()
def poems(run, n_poems, lines_per_poem, sc: SampleConfig = SampleConfig(), heads=None):
    """Poems of ``lines_per_poem`` lines with no line repeated within a poem.

    ``heads`` (an acrostic): the first character of each line, in order.
    """
    if heads is not None:
        lines_per_poem = len(heads)
    out = []
    gen_seed = sc.seed
    for p in range(n_poems):
        lines = []
        tries = 0
        while len(lines) < lines_per_poem:
            tries += 1
            cfg = SampleConfig(sc.temperature, sc.top_k, gen_seed)
            gen_seed += 1
            if heads is not None:
                pattern = heads[len(lines)] + "_" * (max(run.form.lengths) - 1)
                line = complete(run, pattern, sc=cfg, candidates=256)[0]
            else:
                line = sample(run, 1, cfg)[0]
            # The same line twice reads as a fault; after many tries accept it rather
            # than loop forever on a model that only knows a few lines.
            if line not in lines or tries > 50:
                lines.append(line)
        out.append(lines)
    return out


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


@torch.no_grad()
def reconstruct(run, lines, allow_unk=False, sc: SampleConfig = SampleConfig()):
    """Decode each line's posterior mean: how much of the line the latent keeps."""
    mu, _ = encode(run, lines, allow_unk)
    ids = pick(run.model.decode(mu.to(_device(run))).cpu(), banned_ids(run), sc)
    return _decode_texts(run, ids)


def slerp(a, b, t):
    """Spherical interpolation (Shoemake 1985); falls back to linear for parallel vectors."""
    na, nb = a / a.norm(), b / b.norm()
    omega = torch.arccos((na * nb).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    if omega.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(run, line_a, line_b, steps=8, how="linear", allow_unk=False):
    """Lines decoded along the path from mu(a) to mu(b), both ends included."""
    if steps < 2:
        raise UserError(f"--steps must be at least 2 (the two ends), got {steps}")
    if how not in ("linear", "spherical"):
        raise UserError(f"interpolation must be linear or spherical, got {how!r}")
    mu, _ = encode(run, [line_a, line_b], allow_unk)
    ts = torch.linspace(0, 1, steps)
    if how == "linear":
        z = torch.stack([(1 - t) * mu[0] + t * mu[1] for t in ts])
    else:
        z = torch.stack([slerp(mu[0], mu[1], t) for t in ts])
    ids = pick(run.model.decode(z.to(_device(run))).cpu(), banned_ids(run), SampleConfig())
    return _decode_texts(run, ids)


@torch.no_grad()
def complete(run, pattern, sc: SampleConfig = SampleConfig(), candidates=256, blank="_"):
    """Fill the ``blank`` positions of ``pattern`` (e.g. '白日__尽').

    Draws ``candidates`` z from the prior, keeps the one under which the given characters
    are most likely, and decodes the blanks from it; the given characters are kept. This
    is how acrostic poems get a first character that fits the rest of the line.
    """
    if candidates < 1:
        raise UserError(f"candidates must be >= 1, got {candidates}")
    if not pattern or len(pattern) > run.max_len:
        raise UserError(f"pattern {pattern!r} must have 1 to {run.max_len} characters")
    known = {i: c for i, c in enumerate(pattern) if c != blank}
    ids = {}
    for i, c in known.items():
        ids[i] = run.tokenizer.encode(c, allow_unk=False)[0]
    gen = torch.Generator().manual_seed(sc.seed)
    z = torch.randn(candidates, run.model.cfg.latent, generator=gen) * sc.temperature
    logp = torch.log_softmax(run.model.decode(z.to(_device(run))).float().cpu(), -1)
    score = torch.zeros(candidates)
    for i, t in ids.items():
        score += logp[:, i, t]
    # Positions past the pattern's end are blanks too when the corpus has one length.
    best = int(score.argmax())
    out = pick(logp[best:best + 1], banned_ids(run), sc, gen)[0]
    for i, t in ids.items():
        out[i] = t
    if len(pattern) < run.max_len and run.form.lengths != [run.max_len]:
        out[len(pattern):] = PAD
    return [run.tokenizer.decode(out.tolist())]


def _device(run):
    return next(run.model.parameters()).device
