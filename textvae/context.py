"""The poem-context refiner: line t of a poem is written seeing the lines before it.

    a stanza's lines, each from its own z_t, read as one causal sequence of tokens
        c_1, x_1,1 .. x_1,L,  c_2, x_2,1 .. x_2,L,  ...,  c_T, x_T,1 .. x_T,L
    c_t   = cond([z_t, a_t]) + embed(the last position of line t-1) + row_t
    x_t,j = embed(x_t,j-1) + pos_j + draft_t,j + row_t       (the line refiner's input)
    output at x_t,j:  p(x_t,j | every token before it)

The line refiner (model.Refiner) reads one line. This is the same Transformer, its
weights copied from the line refiner, read over a whole stanza under one causal mask, so
a line's characters attend to the characters, drafts and latents of the lines before it:
the poem's working memory, as WMPoetry (Yi et al. 2018) and Jiuge (Yi et al. 2019) keep
one. A line is still written from its own z: characters the heads are sure of stay
(decoding.write_ids), and where they are unsure the refiner writes, now with the poem so
far in view. Read at noise 1 with z = 0 it is a language model of stanzas, and
``line_nats`` is the context score the poem writer ranks candidate lines by.

It is fitted after the line VAE, the line VAE frozen, on real stanzas: each line's
z ~ q(z|x) noised to its own level a_t ~ U(0, 1), as the line refiner was trained, so the
lines before may be trusted to any degree.
"""
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import rng_state, set_rng_state
from .config import Saved
from .device import fused_adam
from .model import Refiner, VAEConfig, noised


@dataclass
class ContextConfig(Saved):
    SECTION = "context"
    lines: int = 4       # lines of the training stanzas: the rows it has a vector for
    extra_layers: int = 0  # Transformer layers above the line refiner's, each the identity
                           # at first: capacity for the poem that the line model lacks
    dropout: float = 0.0   # in its Transformer while it is fitted: none, as the fit is short
                           # (fitted 200 s: a held-out line 30.12-30.21 nats without,
                           # 30.55-30.88 with 0.1)


class ContextRefiner(nn.Module):
    def __init__(self, vae: VAEConfig, cfg: ContextConfig):
        super().__init__()
        self.cfg = cfg
        self.ref = Refiner(replace(vae, refiner_layers=vae.refiner_layers + cfg.extra_layers,
                                   dropout=cfg.dropout))
        # Zero: copied from the line refiner, it starts out reading each row as a line.
        self.rows = nn.Parameter(torch.zeros(cfg.lines, vae.refiner_dim))
        n = cfg.lines * (1 + vae.max_len)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(n),
                             persistent=False)

    def copy_line_refiner(self, line_ref):
        """Start as the line refiner: its weights, and extra layers that add nothing yet
        (their residual branches' last projections zero)."""
        self.ref.load_state_dict({**self.ref.state_dict(), **line_ref.state_dict()})
        for layer in self.ref.blocks.layers[len(line_ref.blocks.layers):]:
            for lin in (layer.self_attn.out_proj, layer.linear2):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def heads(self, z, noise, last, row):
        """Each line's first token c_t (B, d): z (B, D), noise (B,), last (B,) the
        character before the line (``start_id`` for the first), row its line number."""
        r = self.ref
        c = r.cond(torch.cat([z, noise.unsqueeze(-1).to(z.dtype)], -1))
        return c + r.char_norm(r.embed(last)) + self.rows[row]

    def tokens(self, idx, z, noise, draft, first_row=0, last=None):
        """The input (B, T (1 + L), d) of lines idx (B, T, L) with their z (B, T, D),
        noise (B, T) and drafts (B, T, L, H), the first of them row ``first_row``, after
        a line that ends in ``last`` (B,) (None: the first line of a poem)."""
        r, (B, T, L) = self.ref, idx.shape
        start = torch.full_like(idx[:, :1, 0], r.start_id)
        before = start if last is None else last.unsqueeze(1)
        last = torch.cat([before, idx[:, :-1, -1]], 1)                             # (B, T)
        rows = torch.arange(first_row, first_row + T, device=idx.device)
        c = self.heads(z, noise, last, rows)                                       # (B, T, d)
        before = torch.cat([start.unsqueeze(-1).expand(B, T, 1), idx[..., :-1]], -1)
        x = (r.char_norm(r.embed(before)) + r.pos + r.draft_norm(r.draft(draft))
             + self.rows[rows, None])                                              # (B, T, L, d)
        return torch.cat([c.unsqueeze(2), x], 2).flatten(1, 2)

    def forward(self, idx, z, noise, draft):
        """Logits (B, T, L, V) of every character of the stanzas idx (B, T, L)."""
        B, T, L = idx.shape
        n = T * (1 + L)
        h = self.ref.blocks(self.tokens(idx, z, noise, draft), mask=self.causal[:n, :n],
                            is_causal=True)
        return self.ref.out(self.ref.norm(h).view(B, T, 1 + L, -1)[:, :, 1:])

    def read(self, idx, z, noise, draft):
        """The cache (as Refiner.start makes) after the lines idx (B, T, L), T >= 0,
        for writing or scoring the line after them (eval mode)."""
        if idx.shape[1] == 0:
            return [None] * len(self.ref.blocks.layers)
        return self.ref._advance(self.tokens(idx, z, noise, draft),
                                 [None] * len(self.ref.blocks.layers))[1]


class InPoem:
    """The context refiner as decoding's cached writer uses a refiner (start, step,
    out, start_id), writing line ``row`` of poems whose earlier lines are in ``cache``
    (already one entry per line being written); ``last`` (B,) ends the line before."""

    def __init__(self, cref, cache, row, last):
        self.cref, self.cache, self.row, self.last = cref, cache, row, last
        self.start_id, self.out = cref.ref.start_id, cref.ref.out

    def rows(self, s):
        """The writer of the lines s (a slice) only."""
        return InPoem(self.cref, [None if kv is None else (kv[0][s], kv[1][s])
                                  for kv in self.cache], self.row, self.last[s])

    def start(self, z, noise):
        c = self.cref.heads(z, noise, self.last.to(z.device), self.row)
        return self.cref.ref._advance(c.unsqueeze(1), self.cache)[1]

    def step(self, cache, before, t, draft):
        return self.cref.ref.step(cache, before, t, draft, shift=self.cref.rows[self.row])


def repeat_cache(cache, k):
    """A cache of B poems -> of B k lines, each poem's repeated k times in a row."""
    return [None if kv is None else tuple(x.repeat_interleave(k, 0) for x in kv)
            for kv in cache]


# ---------------------------------------------------------------------------------------
# The stanza language model: noise 1, z = 0

def lm_inputs(model, idx):
    """z = 0, noise 1 and the draft of z = 0 for the lines idx (B, T, L): a refiner read
    as a plain language model (at noise 1 it was trained on a z that is pure noise; z = 0,
    the noise's mean, makes a score the same on every call)."""
    B, T, L = idx.shape
    z = torch.zeros(B, T, model.cfg.latent, device=idx.device)
    draft = model.decoder.features(z.new_zeros(1, z.shape[-1])).view(1, 1, L, -1)
    return z, torch.ones(B, T, device=idx.device), draft.expand(B, T, L, -1)


@torch.no_grad()
def line_nats(cref, model, context, ids):
    """log p(line | the lines before) (n K,) at noise 1, z = 0, of candidate lines ids
    (n K, L), K for each of the n poems whose lines so far are ``context`` (n, T, L)."""
    n, T, L = context.shape
    K = len(ids) // n
    cache = repeat_cache(cref.read(context, *lm_inputs(model, context)), K)
    z, noise, draft = lm_inputs(model, ids.unsqueeze(1))
    last = context[:, -1, -1].repeat_interleave(K, 0) if T else None
    x = cref.tokens(ids.unsqueeze(1), z, noise, draft, T, last)                  # (nK, 1+L, d)
    h = cref.ref.norm(cref.ref._advance(x, cache)[0][:, 1:])
    return log_prob(cref.ref.out(h), ids)


def log_prob(logits, ids):
    """log p (...,) of the lines ids (..., L) under their logits (..., L, V)."""
    logp = torch.log_softmax(logits.float(), -1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)


# ---------------------------------------------------------------------------------------
# Fitting, the line VAE frozen

def stanza_loss(cref, model, ids, mu, logvar, gen=None):
    """Cross-entropy (nats a line) of the stanzas ids (B, T, L), each line's z drawn from
    its posterior (mu, logvar) (B, T, D) and noised to its own level."""
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)
    noise = torch.rand(ids.shape[:2], generator=gen)
    z_a = noised(z, noise, torch.randn(z.shape, generator=gen))
    ids, z_a, noise = (to_device(t, next(cref.parameters()).device) for t in (ids, z_a, noise))
    with torch.no_grad():
        draft = model.decoder.features(z_a.flatten(0, 1)).view(*ids.shape, -1)
    logits = cref(ids, z_a, noise, draft)
    return F.cross_entropy(logits.float().flatten(0, 2), ids.flatten(),
                           reduction="sum") / (ids.shape[0] * ids.shape[1])


def to_device(t, dev):
    """A CPU tensor on ``dev``; to a GPU through pinned memory, so the copy does not
    make the host wait for the work queued there."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


@torch.no_grad()
def lm_nats(cref, model, ids, alone=False):
    """Nats a line of the stanzas ids (B, T, L) read as a language model (noise 1, z = 0):
    with the lines before in view, or ``alone`` (each line by itself, as the line
    refiner reads it): the difference is what the context tells of a line."""
    if alone:
        ids = ids.flatten(0, 1).unsqueeze(1)
    ids = ids.to(next(cref.parameters()).device)
    logits = cref(ids, *lm_inputs(model, ids))
    return F.cross_entropy(logits.float().flatten(0, 2), ids.flatten(),
                           reduction="sum").item() / (ids.shape[0] * ids.shape[1])


@dataclass
class Keep:
    """How a fit keeps its state: ``save(state)`` every ``every`` seconds, and at once
    where ``stop()`` says a stop was asked for (the fit then raises KeyboardInterrupt)."""
    save: Callable
    every: float
    stop: Callable = lambda: False


# The fit's AdamW step size. Refitted 200 s on the default run's line model, a held-out line
# cost 31.04 nats read after the lines before at 2e-3, 30.55 at 6e-3 (30.57-30.85 from 4e-3
# to 1.2e-2): short of convergence, a larger step buys more than more or larger batches.
LR = 6e-3


def fit_context(model, data, seconds, log=print, seed=0, batch=64, lr=LR, steps=0,
                bf16=False, saved=None, keep=None, extra_layers=ContextConfig.extra_layers,
                dropout=ContextConfig.dropout):
    """A ContextRefiner fitted in about ``seconds`` (or exactly ``steps``) to the encoded
    stanzas ``data`` (poem.Encoded), under bf16 autocast where ``bf16``; its state kept
    as ``keep`` says (Keep). Given back as ``saved``, a kept state goes on with that fit
    where it was cut (``seconds`` and ``steps`` count from its start).
    Returns (cref, figures)."""
    torch.manual_seed(seed)
    mu, logvar, valid = data.mu, data.logvar, data.valid_ids
    ids = data.ids[:len(mu)]
    dev = next(model.parameters()).device  # the line model's; data and draws stay on the CPU
    cref = ContextRefiner(model.cfg, ContextConfig(ids.shape[1], extra_layers, dropout))
    cref.copy_line_refiner(model.refiner)
    cref = cref.to(dev)
    opt = torch.optim.AdamW(cref.parameters(), lr=lr, weight_decay=0.01, fused=fused_adam(dev))
    gen = torch.Generator().manual_seed(seed)
    done, before = _restored(saved, cref, opt, gen) if saved else (0, 0.0)
    t0 = last_save = time.time()
    elapsed = lambda: before + time.time() - t0  # noqa: E731 - seconds of the whole fit
    cref.train()
    while (done < steps) if steps else (elapsed() < seconds):
        frac = done / steps if steps else elapsed() / seconds
        for g in opt.param_groups:  # warm up, then a cosine down to zero at the end
            g["lr"] = lr * min(1.0, (done + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(frac, 1)))
        pick = torch.randint(len(ids), (batch,), generator=gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = stanza_loss(cref, model, ids[pick], mu[pick], logvar[pick], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if keep and (keep.stop() or time.time() - last_save >= keep.every):
            keep.save(fit_state(cref, opt, gen, done, elapsed()))
            last_save = time.time()
            if keep.stop():
                raise KeyboardInterrupt
    cref.eval()
    figures = {"steps": done, "seconds": round(elapsed(), 1),
               "valid_lm_nats": round(lm_nats(cref, model, valid), 2),
               "valid_lm_nats_alone": round(lm_nats(cref, model, valid, alone=True), 2)}
    log(f"poem context: {done:,} steps in {figures['seconds']} s; a held-out line costs "
        f"{figures['valid_lm_nats']} nats read after the lines before it, "
        f"{figures['valid_lm_nats_alone']} read alone")
    return cref, figures


def fit_state(cref, opt, gen, done, elapsed):
    """Everything a fit cut here needs to go on as if it had not been: the weights, the
    optimiser, the random streams (batches and noise; dropout, on the CPU or the GPU),
    steps and seconds."""
    return {"cref": cref.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
            "steps": done, "elapsed_s": elapsed, **rng_state(next(cref.parameters()).device)}


def _restored(state, cref, opt, gen):
    """Load a ``fit_state`` into the fit's pieces; returns (steps, seconds) done."""
    cref.load_state_dict(state["cref"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    set_rng_state(state, next(cref.parameters()).device)
    return state["steps"], state["elapsed_s"]


# ---------------------------------------------------------------------------------------
# Writing the next line of poems

def recent(x, k):
    """The last k lines (all, where there are fewer) of x (n, T, ...)."""
    return x[:, max(0, x.shape[1] - k):]


@dataclass
class Written:
    """The lines of n poems written so far: ids (n, T, L), the z each was written from
    (n, T, D) and the noise level it was read at (n, T)."""
    ids: torch.Tensor
    z: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def start(cls, n, L, D):
        return cls(torch.zeros(n, 0, L, dtype=torch.long), torch.zeros(n, 0, D),
                   torch.zeros(n, 0))

    def add(self, ids, z, noise):
        """With lines ids (n, t, L) written from z (n, t, D) at the level ``noise``."""
        return Written(torch.cat([self.ids, ids], 1), torch.cat([self.z, z.float()], 1),
                       torch.cat([self.noise, torch.full(ids.shape[:2], float(noise))], 1))

    def last(self, k):
        """The last k lines: a poem longer than the training stanzas is read through a
        window of the lines it has rows for."""
        return Written(recent(self.ids, k), recent(self.z, k), recent(self.noise, k))

    def writer(self, run, K):
        """What writes K candidates for the next line of each poem (InPoem), or None
        where the run has no poem-context refiner (the line refiner writes)."""
        cref = run.context
        if cref is None:
            return None
        seen = self.last(cref.cfg.lines - 1)
        dev = next(cref.parameters()).device
        ids, z = seen.ids.to(dev), seen.z.to(dev)
        n, T, L = ids.shape
        draft = run.model.decoder.features(z.flatten(0, 1)).view(n, T, L, run.model.cfg.dec_hidden)
        cache = repeat_cache(cref.read(ids, z, seen.noise.to(dev), draft), K)
        last = ids[:, -1, -1] if T else torch.full((n,), cref.ref.start_id, device=dev)
        return InPoem(cref, cache, T, last.repeat_interleave(K, 0))
