"""Evaluation as the text-VAE literature does it, plus what a poetry user cares about.

Likelihood (He et al. 2019; Burda et al. 2016):
  ELBO = E_q[log p(x|z)] - KL, estimated with one z per line;
  IW-NLL = -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), an upper bound on
  -log p(x) that tightens as k grows; computed in chunks of z so k = 500 fits in memory.
Latent use:
  MI = E_x E_q(z|x)[log q(z|x)] - E[log q(z)], q(z) the aggregate posterior over a batch;
  AU = number of dimensions with Var_x(E_q[z_d]) > 0.01.
Reconstruction: character and exact-line accuracy, decoding from mu and from a sampled z.
Samples from the prior: well-formed, novel, distinct-1/2, adjacent repeated characters,
and fluency under a smoothed character bigram model fitted on the training split (and
reverse fluency: a bigram model fitted on the samples, scoring real test lines).
Interpolation: well-formed share of intermediate decodes and distinct lines per path.
"""
import math
import random
from collections import Counter

import torch
import torch.nn.functional as F

from .generate import SampleConfig, banned_ids, pick, sample
from .model import gaussian_kl
from .tokenizer import PAD

LOG_2PI = math.log(2 * math.pi)


def _batches(idx, size):
    for i in range(0, len(idx), size):
        yield idx[i:i + size]


def log_normal(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def log_px_given_z(model, z, idx):
    """log p(x|z) for z (K, D) and one line idx (L,), or z (B, D) and lines (B, L)."""
    logits = model.decode(z).float()                     # (K, L, V)
    target = idx.expand(logits.shape[0], -1) if idx.dim() == 1 else idx
    return -F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(-1)


@torch.no_grad()
def iw_nll(model, idx, k=500, chunk=100, gen=None):
    """Importance-weighted NLL bound (nats) of each line; idx (B, L) -> (B,)."""
    mu, logvar = model.encode(idx)
    out = []
    for b in range(idx.shape[0]):
        logw = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = torch.randn(n, mu.shape[1], generator=gen).to(mu.device)
            z = mu[b] + (0.5 * logvar[b]).exp() * eps
            logw.append(log_px_given_z(model, z, idx[b])
                        + log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                        - log_normal(z, mu[b], logvar[b]))
        logw = torch.cat(logw)
        out.append(-(torch.logsumexp(logw, 0) - math.log(k)))
    return torch.stack(out)


@torch.no_grad()
def mutual_info(mu, logvar, gen=None, chunk=256):
    """He et al. 2019's I(x; z) = E[log q(z|x)] - E[log q(z)] over all N posteriors (N, D).

    One z_i ~ q(z|x_i) per line; log q(z_i) is the aggregate posterior (1/N) sum_j
    q(z_i|x_j), computed over every line in chunks of z (a batch-wise aggregate caps
    the estimate at ln(batch size)); the estimate can never exceed ln N. Both terms use
    the same z_i (He et al. take the first analytically): the same quantity with less
    variance, and exactly 0 when every x has the same posterior.
    """
    N = mu.shape[0]
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen).to(mu.device)
    total = 0.0
    for i in range(0, N, chunk):
        zi = z[i:i + chunk].unsqueeze(1)                                # (c, 1, D)
        log_q = log_normal(zi, mu.unsqueeze(0), logvar.unsqueeze(0))   # (c, N)
        own = log_q.diagonal(offset=i)                                 # log q(z_i|x_i)
        total += float((own - (torch.logsumexp(log_q, dim=1) - math.log(N))).sum())
    return total / N


def active_units(mu, threshold=0.01):
    return int((mu.var(0, unbiased=False) > threshold).sum()) if len(mu) > 1 else 0


# ---------------------------------------------------------------------------------------
# A reference character bigram model, add-k smoothed, with line start/end markers

class CharBigram:
    def __init__(self, lines, vocab, k=0.1):
        self.k, self.V = k, len(vocab) + 1  # +1 for the end marker
        self.pair, self.ctx = Counter(), Counter()
        for line in lines:
            chars = ["<s>", *line, "</s>"]
            self.pair.update(zip(chars, chars[1:]))
            self.ctx.update(chars[:-1])

    def logprob_per_char(self, lines):
        """Mean log-probability per predicted symbol (characters and the line end)."""
        total, n = 0.0, 0
        for line in lines:
            chars = ["<s>", *line, "</s>"]
            for a, b in zip(chars, chars[1:]):
                total += math.log((self.pair[(a, b)] + self.k) / (self.ctx[a] + self.k * self.V))
                n += 1
        return total / max(n, 1)


def distinct_n(lines, n):
    grams = [tuple(s[i:i + n]) for s in lines for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def adjacent_repeat_share(lines):
    return sum(any(a == b for a, b in zip(s, s[1:])) for s in lines) / max(len(lines), 1)


# ---------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(run, lines, train_lines, iw_samples=500, n_samples=1000, n_pairs=100,
             batch_size=512, seed=0, progress=None):
    """Every figure for ``lines`` (a split) of a loaded run; returns a flat dict."""
    model, tok = run.model, run.tokenizer
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    idx = torch.from_numpy(tok.encode_batch(lines, run.max_len)).to(device)
    real = idx != PAD
    n_chars = int(real.sum())
    banned = banned_ids(run)
    greedy = SampleConfig()

    mus, logvars, rec, kl = [], [], 0.0, 0.0
    hits, exact = {"mu": 0, "z": 0}, {"mu": 0, "z": 0}
    for batch in _batches(idx, batch_size):
        mu, logvar = model.encode(batch)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen).to(device)
        rec -= float(log_px_given_z(model, z, batch).sum())
        kl += float(gaussian_kl(mu, logvar).sum())
        mask = batch != PAD
        for kind, src in (("mu", mu), ("z", z)):
            guess = pick(model.decode(src).cpu(), banned, greedy).to(device)
            # Character accuracy over real characters; a line is exact when every
            # position matches, padding included (so its length is right too).
            hits[kind] += int(((guess == batch) & mask).sum())
            exact[kind] += int((guess == batch).all(1).sum())
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    N = len(lines)
    mu_all = torch.cat(mus)
    out = {"lines": N, "chars": n_chars,
           "rec": rec / N, "kl": kl / N, "elbo_nll": (rec + kl) / N,
           "mi": mutual_info(mu_all, torch.cat(logvars), gen) if N > 1 else 0.0,
           "mi_max": math.log(N),
           "au": active_units(mu_all), "latent": model.cfg.latent,
           "acc_mu": hits["mu"] / n_chars, "exact_mu": exact["mu"] / N,
           "acc_z": hits["z"] / n_chars, "exact_z": exact["z"] / N}
    out["elbo_nll_per_char"] = out["elbo_nll"] * N / n_chars

    if iw_samples > 0:
        total = 0.0
        for i, batch in enumerate(_batches(idx, 64)):
            total += float(iw_nll(model, batch, iw_samples, gen=gen).sum())
            if progress:
                progress(min((i + 1) * 64, N), N)
        out["iw_samples"] = iw_samples
        out["iw_nll"] = total / N
        out["iw_nll_per_char"] = total / n_chars

    if n_samples > 0:
        samples = sample(run, n_samples, SampleConfig(seed=seed))
        train_set = set(train_lines)
        form = run.form
        out["samples"] = n_samples
        out["well_formed"] = sum(form.matches(s) and "□" not in s for s in samples) / n_samples
        out["novel"] = sum(s not in train_set for s in samples) / n_samples
        out["distinct_1"] = distinct_n(samples, 1)
        out["distinct_2"] = distinct_n(samples, 2)
        out["adjacent_repeat"] = adjacent_repeat_share(samples)
        out["adjacent_repeat_real"] = adjacent_repeat_share(lines)
        vocab = tok.chars
        ref = CharBigram(train_lines, vocab)
        out["fluency"] = ref.logprob_per_char(samples)
        out["fluency_real"] = ref.logprob_per_char(lines)
        rng = random.Random(seed)
        same_size = rng.sample(train_lines, min(len(samples), len(train_lines)))
        out["reverse_fluency"] = CharBigram(samples, vocab).logprob_per_char(lines)
        out["reverse_fluency_real"] = CharBigram(same_size, vocab).logprob_per_char(lines)

    if n_pairs > 0 and N >= 2:
        from .generate import interpolate
        rng = random.Random(seed)
        formed = distinct = middles = 0
        for _ in range(n_pairs):
            a, b = rng.sample(lines, 2)
            path = interpolate(run, a, b, steps=8, allow_unk=True)
            formed += sum(run.form.matches(s) and "□" not in s for s in path[1:-1])
            middles += len(path) - 2
            distinct += len(set(path))
        out["interp_well_formed"] = formed / middles
        out["interp_distinct"] = distinct / n_pairs
    return out


def evaluate_split(run, split="test", max_lines=0, **kw):
    """``evaluate`` on a split of the corpus the run was trained on (read with the run's
    own settings). An empty split is an error; ``max_lines`` keeps the first N lines."""
    from .data import corpus_of_run
    from .errors import UserError
    corpus = corpus_of_run(run)
    lines = corpus.splits[split][:max_lines or None]
    if not lines:
        raise UserError(f"the {split} split of {corpus.name} is empty")
    return {**evaluate(run, lines, corpus.train, **kw), "split": split, "corpus": corpus.name}


ROWS = [  # (key, label, format)
    ("iw_nll", "IW-NLL (nats/line)", "{:.2f}"),
    ("iw_nll_per_char", "IW-NLL (nats/char)", "{:.3f}"),
    ("elbo_nll", "-ELBO (nats/line)", "{:.2f}"),
    ("rec", "reconstruction NLL (nats/line)", "{:.2f}"),
    ("kl", "KL (nats/line)", "{:.2f}"),
    ("mi", "mutual information (nats)", "{:.2f}"),
    ("mi_max", "  its ceiling, ln(lines)", "{:.2f}"),
    ("au", "active units", "{}"),
    ("acc_mu", "char accuracy from mu", "{:.3f}"),
    ("exact_mu", "exact lines from mu", "{:.3f}"),
    ("acc_z", "char accuracy from sampled z", "{:.3f}"),
    ("exact_z", "exact lines from sampled z", "{:.3f}"),
    ("well_formed", "samples well-formed", "{:.3f}"),
    ("novel", "samples novel (not in train)", "{:.3f}"),
    ("distinct_1", "distinct-1", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("adjacent_repeat", "adjacent repeat (samples)", "{:.3f}"),
    ("adjacent_repeat_real", "adjacent repeat (real test)", "{:.3f}"),
    ("fluency", "fluency: bigram logp/char (samples)", "{:.3f}"),
    ("fluency_real", "fluency: bigram logp/char (real test)", "{:.3f}"),
    ("reverse_fluency", "reverse fluency (LM on samples)", "{:.3f}"),
    ("reverse_fluency_real", "reverse fluency (LM on train)", "{:.3f}"),
    ("interp_well_formed", "interpolation well-formed", "{:.3f}"),
    ("interp_distinct", "interpolation distinct lines/8", "{:.2f}"),
]


def format_table(results, names=None):
    """A text table: one column per result dict (several runs side by side)."""
    if isinstance(results, dict):
        results, names = [results], names or ["value"]
    width = max(len(label) for _, label, _ in ROWS)
    head = f"{'metric':<{width}}  " + "  ".join(f"{n:>12}" for n in names)
    if len(results) == 2:
        head += f"  {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for key, label, fmt in ROWS:
        if not any(key in r for r in results):
            continue
        cells = [fmt.format(r[key]) if key in r else "-" for r in results]
        row = f"{label:<{width}}  " + "  ".join(f"{c:>12}" for c in cells)
        if len(results) == 2 and key in results[0] and key in results[1] and results[1][key]:
            row += f"  {results[0][key] / results[1][key]:>8.3f}"
        lines.append(row)
    return "\n".join(lines)
