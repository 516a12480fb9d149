"""Evaluation as the text-VAE literature does it, plus what a poetry user cares about.

Likelihood (He et al. 2019; Burda et al. 2016):
  ELBO = E_q[log p(x|z)] - KL, estimated with one z per line;
  IW-NLL = -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), an upper bound on
  -log p(x) that tightens as k grows; computed in chunks of z so k = 500 fits in memory.
Latent use:
  MI = E_x E_q(z|x)[log q(z|x)] - E[log q(z)], q(z) the aggregate posterior over a batch;
  AU = number of dimensions with Var_x(E_q[z_d]) > 0.01.
Reconstruction: character and exact-line accuracy, writing from mu and from a sampled z
through the full decoding path (heads, then refiner at noise 0).
Samples from the prior: well-formed, novel, unique, distinct-1/2 (beside as many real
lines), adjacent repeated characters, and fluency under a Kneser-Ney character trigram
fitted on the training split, in bits per character beside real test lines (judge.py);
reverse fluency: the same judge fitted on the samples, scoring real test lines.
Interpolation between random pairs of test lines: ends reconstructed, well-formed and
distinct lines, characters changed per step (beside the fewest any path with exact ends
could change: how far apart the pairs are), and the judge's fluency of the middle.
"""
import math
import random
import time

import torch
import torch.nn.functional as F

from .anneal import schedule_of
from .device import resolve_device
from .decoding import SampleConfig, fit_z, write_ids, write_lines
from .sampling import sample
from .judge import (CharBigram, CharKN, adjacent_repeat_share, chars_changed, distinct_n,
                    fewest_changed, known_word_share)
from .model import gaussian_kl, log_normal
from .run import (load_run, read_metrics, read_saved_config, weights_step, write_curves,
                  write_summary)
from .tokenizer import PAD, UNK

JUDGE_LINES = 1_000_000  # training lines the judges are fitted on, at most



def _batches(idx, size):
    for i in range(0, len(idx), size):
        yield idx[i:i + size]


def log_px_given_z(model, z, idx):
    """log p(x|z) for z (K, D) and one line idx (L,), or z (B, D) and lines (B, L)."""
    logits = model.decode(z).float()                     # (K, L, V)
    target = idx.expand(logits.shape[0], -1) if idx.dim() == 1 else idx
    # Flattened rather than (K, V, L): the transposed layout made cross_entropy as slow
    # as the decoder itself (0.11 against 0.02 ms per z on this CPU).
    return -F.cross_entropy(logits.flatten(0, 1), target.flatten(),
                            reduction="none").view(target.shape).sum(-1)


@torch.no_grad()
def iw_nll(model, idx, k=500, gen=None, budget=2 ** 22):
    """Importance-weighted NLL bound (nats) of each line; idx (B, L) -> (B,).

    Every line at once, its k samples in chunks whose logits, (B * n, L, V), stay near
    ``budget`` floats (16 MB): k = 500 fits in memory, and larger chunks ran slower on
    this CPU (the logits leave its caches)."""
    mu, logvar = model.encode(idx)                                     # (B, D)
    B, L = idx.shape
    n_max = max(1, budget // (B * L * model.cfg.vocab_size))
    mu_, sigma = mu.unsqueeze(1), (0.5 * logvar).exp().unsqueeze(1)    # (B, 1, D)
    logw = []
    for start in range(0, k, n_max):
        n = min(n_max, k - start)
        eps = torch.randn(B, n, mu.shape[1], generator=gen).to(mu.device)
        z = mu_ + sigma * eps                                          # (B, n, D)
        px = log_px_given_z(model, z.flatten(0, 1), idx.repeat_interleave(n, 0))
        logw.append(px.view(B, n) + log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                    - log_normal(z, mu_, logvar.unsqueeze(1)))
    return -(torch.logsumexp(torch.cat(logw, 1), 1) - math.log(k))


@torch.no_grad()
def mutual_info(mu, logvar, gen=None, budget=2 ** 24):
    """He et al. 2019's I(x; z) = E[log q(z|x)] - E[log q(z)] over all N posteriors (N, D).

    One z_i ~ q(z|x_i) per line; log q(z_i) is the aggregate posterior (1/N) sum_j
    q(z_i|x_j), computed over every line in chunks of z (a batch-wise aggregate caps
    the estimate at ln(batch size)); the estimate can never exceed ln N. Both terms use
    the same z_i (He et al. take the first analytically): the same quantity with less
    variance, and exactly 0 when every x has the same posterior.
    """
    N = mu.shape[0]
    # Each chunk builds a (chunk, N, D) tensor: keep it near ``budget`` floats (64 MB),
    # so evaluating the whole training split needs no more memory than the test split.
    chunk = max(1, budget // (N * mu.shape[1]))
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

@torch.no_grad()
def evaluate(run, lines, train_lines, iw_samples=500, n_samples=1000, n_pairs=100,
             batch_size=512, seed=0, progress=None, sc=None, seen=None):
    """Every figure for ``lines`` (a split) of a loaded run; returns a flat dict.

    ``train_lines``: the training lines the judges are fitted on; ``seen``: what a
    sample is novel against (default: a set of train_lines).

    Likelihood figures are those of the VAE p(x|z) p(z) (the fan-out heads); every
    line the evaluation reads (reconstructions, samples, interpolations) is written by
    the full decoding path, refiner included, with SampleConfig ``sc``.
    """
    run.model.eval()
    sc = sc or SampleConfig(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(run.model.parameters()).device
    idx = torch.from_numpy(run.tokenizer.encode_batch(lines, run.max_len)).to(device)
    out = likelihood_and_reconstruction(run, idx, lines, batch_size, gen)
    out.update(fitted_reconstruction(run, idx, sc, seed))
    if iw_samples > 0:
        out.update(iw_figures(run, idx, iw_samples, gen, progress, out["chars"]))
    judge = CharKN(train_lines, run.tokenizer.alphabet_size) if n_samples or n_pairs else None
    if n_samples > 0:
        out.update(sample_figures(run, lines, train_lines, n_samples, seed, sc, judge, seen))
    if n_pairs > 0 and len(lines) >= 2:
        out.update(interpolation_figures(run, lines, n_pairs, seed, sc, judge))
    return out


def likelihood_and_reconstruction(run, idx, lines, batch_size, gen):
    """-ELBO terms, MI, AU, and reconstruction accuracy from mu and from a sampled z, for
    the token ids ``idx`` (N, L) of the evaluated ``lines``. Per-character figures are
    per character of the lines, whatever a position holds."""
    model = run.model
    device = idx.device
    n_chars = sum(map(len, lines))
    mus, logvars, rec, kl = [], [], 0.0, torch.zeros(model.cfg.latent)
    hits, exact = {"mu": 0, "z": 0}, {"mu": 0, "z": 0}
    for first, batch in zip(range(0, len(idx), batch_size), _batches(idx, batch_size)):
        mu, logvar = model.encode(batch)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen).to(device)
        rec -= float(log_px_given_z(model, z, batch).sum())
        kl += gaussian_kl(mu.float(), logvar.float()).sum(0).cpu()   # per dimension
        for kind, src in (("mu", mu), ("z", z)):
            chars, whole = written_back(model, run.tokenizer, run.lengths, src, batch,
                                        lines[first:first + len(batch)])
            hits[kind] += chars
            exact[kind] += whole
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    N = len(idx)
    mu_all = torch.cat(mus)
    return {"lines": N, "chars": n_chars,
            "rec": rec / N, "kl": float(kl.sum()) / N, "kl_per_dim": (kl / N).tolist(),
            "elbo_nll": (rec + float(kl.sum())) / N,
            "elbo_nll_per_char": (rec + float(kl.sum())) / n_chars,
            "mi": mutual_info(mu_all, torch.cat(logvars), gen) if N > 1 else 0.0,
            "mi_max": math.log(N),
            "au": active_units(mu_all), "latent": model.cfg.latent,
            "acc_mu": hits["mu"] / n_chars, "exact_mu": exact["mu"] / N,
            "acc_z": hits["z"] / n_chars, "exact_z": exact["z"] / N}


def written_back(model, tokenizer, lengths, z, ids, lines):
    """(characters, whole lines) of ``lines`` (token ids ``ids``) that the full decoding
    path writes back from ``z`` read at noise 0: the one measure of "accuracy from mu"
    for validation and evaluation. A whole line matches at every position, padding
    included (so its length is right)."""
    guess, ids = write_ids(model, lengths, z, 0.0, SampleConfig()), ids.cpu()
    return chars_back(tokenizer, guess, ids, lines), int((guess == ids).all(1).sum())


def chars_back(tokenizer, guess, ids, lines):
    """How many characters of ``lines`` (token ids ``ids``) the ids ``guess`` write back in
    place: ids compared for a character run, the decoded text for a piece run (a wrong
    piece early shifts the rest, as a wrong character would not)."""
    if tokenizer.units == "chars":
        return int(((guess == ids) & (ids != PAD)).sum())
    written = [tokenizer.decode(row) for row in guess.tolist()]
    return sum(a == b for w, line in zip(written, lines) for a, b in zip(w, line))


def fitted_reconstruction(run, idx, sc, seed, n=1000):
    """Exact lines when z is fitted to the line (decoding.fit_z, as reconstruct and
    interpolate do), over up to ``n`` lines whose characters are all in the vocabulary
    (a line with <unk> cannot come back exactly)."""
    known = idx[(idx != UNK).all(1)]
    pick = torch.randperm(len(known), generator=torch.Generator().manual_seed(seed))[:n]
    if len(pick) == 0 or sc.fit_steps == 0:
        return {}
    guess = write_lines(run, fit_z(run, known[pick], sc.fit_steps), 0.0, sc)
    return {"exact_fit": float((guess.to(idx.device) == known[pick]).all(1).float().mean()),
            "in_vocab": len(known) / len(idx)}


def iw_figures(run, idx, k, gen, progress, n_chars):
    total, N = 0.0, len(idx)
    for i, batch in enumerate(_batches(idx, 64)):
        total += float(iw_nll(run.model, batch, k, gen=gen).sum())
        if progress:
            progress(min((i + 1) * 64, N), N)
    return {"iw_samples": k, "iw_nll": total / N, "iw_nll_per_char": total / n_chars}


def sample_figures(run, lines, train_lines, n, seed, sc, judge, seen=None):
    """Samples from the prior against as many real lines, under judges fitted elsewhere."""
    return judge_samples(sample(run, n, sc), lines, train_lines, run.form,
                         run.tokenizer.alphabet_size, seed, judge, seen)


def judge_samples(samples, lines, train_lines, form, vocab_size, seed=0, judge=None,
                  seen=None):
    """Every sample figure for lines written by any system (the LM anchor too)."""
    n, train_set = len(samples), set(train_lines) if seen is None else seen
    judge = judge or CharKN(train_lines, vocab_size)
    rng = random.Random(seed)
    real = rng.sample(lines, min(n, len(lines)))
    same_size = rng.sample(train_lines, min(n, len(train_lines)))
    bigram = CharBigram(train_lines, vocab_size)
    return {
        "samples": n,
        "well_formed": sum(form.matches(s) and "□" not in s for s in samples) / n,
        "novel": sum(s not in train_set for s in samples) / n,
        "unique": len(set(samples)) / n,
        # distinct-n falls as lines are added: samples and real lines, as many of each
        # (a small test split, like the sonnets' 27 lines, sets the count)
        "distinct_1": distinct_n(samples[:len(real)], 1), "distinct_1_real": distinct_n(real, 1),
        "distinct_2": distinct_n(samples[:len(real)], 2), "distinct_2_real": distinct_n(real, 2),
        "adjacent_repeat": adjacent_repeat_share(samples),
        "adjacent_repeat_real": adjacent_repeat_share(lines),
        "kn_bits": judge.bits_per_char(samples), "kn_bits_real": judge.bits_per_char(lines),
        "reverse_kn_bits": CharKN(samples, vocab_size).bits_per_char(lines),
        "reverse_kn_bits_real": CharKN(same_size, vocab_size).bits_per_char(lines),
        "fluency": bigram.logprob_per_char(samples),
        "fluency_real": bigram.logprob_per_char(lines),
        **_known_words(samples, lines, train_lines),
        "sample_lines": samples[:16],
    }


def _known_words(samples, lines, train_lines):
    """For a spaced script: how many sample words (and real test words) are words of
    the training split; nothing for Chinese."""
    shares = known_word_share([samples, lines], train_lines)
    if shares is None:
        return {}
    return {"known_words": shares[0], "known_words_real": shares[1]}


def interpolation_figures(run, lines, n_pairs, seed, sc, judge, steps=8):
    """Paths between random pairs of real lines: ends, fluency in between, smoothness."""
    from .sampling import interpolate_pairs
    rng = random.Random(seed)
    formed = distinct = middles = ends = changed = known = known_ends = 0
    inner = []
    pairs = [rng.sample(lines, 2) for _ in range(n_pairs)]
    paths = interpolate_pairs(run, pairs, steps=steps, allow_unk=True, sc=sc)
    for (a, b), path in zip(pairs, paths):
        inner += path[1:-1]
        formed += sum(run.form.matches(s) and "□" not in s for s in path[1:-1])
        middles += len(path) - 2
        distinct += len(set(path))
        ends += (path[0] == a) + (path[-1] == b)
        for line, end in ((a, path[0]), (b, path[-1])):
            if not run.tokenizer.unknown_chars(line):
                known += 1
                known_ends += line == end
        changed += sum(chars_changed(x, y) for x, y in zip(path, path[1:]))
    return {"interp_well_formed": formed / middles, "interp_distinct": distinct / n_pairs,
            "interp_ends": ends / (2 * n_pairs),
            "interp_ends_in_vocab": known_ends / max(known, 1),
            "interp_kn_bits": judge.bits_per_char(inner),
            "interp_changed": changed / (n_pairs * (steps - 1)),
            "interp_changed_floor": fewest_changed(pairs, steps)}


def evaluate_split(run, split="test", max_lines=0, seed=0, **kw):
    """``evaluate`` on a split of the corpus the run was trained on (read with the run's
    own settings). An empty split is an error; ``max_lines`` evaluates a random sample of
    that many lines (splits are stored sorted, so the first N would be a biased few)."""
    from .data import LineKeys, corpus_of_run, evenly_spaced
    from .errors import UserError
    corpus = corpus_of_run(run)
    lines = list(corpus.splits[split])
    if not lines:
        raise UserError(f"the {split} split of {corpus.name} is empty")
    if 0 < max_lines < len(lines):
        lines = random.Random(seed).sample(lines, max_lines)
    # The judges are fitted on at most JUDGE_LINES training lines (a trigram table of 10M
    # lines would not fit); novelty is checked against every training line, by key.
    train, seen = evenly_spaced(corpus.train, JUDGE_LINES), LineKeys(corpus.train)
    return {**evaluate(run, lines, train, seed=seed, seen=seen, **kw), "split": split,
            "corpus": corpus.name}


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
    ("exact_fit", "exact lines from fitted z (in-vocabulary lines)", "{:.3f}"),
    ("in_vocab", "  share of lines in the vocabulary", "{:.3f}"),
    ("acc_z", "char accuracy from sampled z", "{:.3f}"),
    ("exact_z", "exact lines from sampled z", "{:.3f}"),
    ("well_formed", "samples well-formed", "{:.3f}"),
    ("novel", "samples novel (not in train)", "{:.3f}"),
    ("unique", "samples unique", "{:.3f}"),
    ("distinct_1", "distinct-1 (samples)", "{:.3f}"),
    ("distinct_1_real", "distinct-1 (as many real lines)", "{:.3f}"),
    ("distinct_2", "distinct-2 (samples)", "{:.3f}"),
    ("distinct_2_real", "distinct-2 (as many real lines)", "{:.3f}"),
    ("adjacent_repeat", "adjacent repeat (samples)", "{:.3f}"),
    ("adjacent_repeat_real", "adjacent repeat (real test)", "{:.3f}"),
    ("kn_bits", "fluency: KN-3 bits/char (samples)", "{:.2f}"),
    ("kn_bits_real", "fluency: KN-3 bits/char (real test)", "{:.2f}"),
    ("reverse_kn_bits", "reverse KN-3 bits/char (on samples)", "{:.2f}"),
    ("reverse_kn_bits_real", "reverse KN-3 bits/char (on train)", "{:.2f}"),
    ("known_words", "sample words found in train", "{:.3f}"),
    ("known_words_real", "  test words found in train", "{:.3f}"),
    ("fluency", "fluency: bigram nats/char (samples)", "{:.3f}"),
    ("fluency_real", "fluency: bigram nats/char (real)", "{:.3f}"),
    ("interp_ends", "interpolation ends reconstructed", "{:.3f}"),
    ("interp_ends_in_vocab", "  of ends in the vocabulary", "{:.3f}"),
    ("interp_well_formed", "interpolation well-formed", "{:.3f}"),
    ("interp_distinct", "interpolation distinct lines/8", "{:.2f}"),
    ("interp_changed", "interpolation chars changed/step", "{:.2f}"),
    ("interp_changed_floor", "  fewest possible with exact ends", "{:.2f}"),
    ("interp_kn_bits", "interpolation KN-3 bits/char", "{:.2f}"),
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


@torch.no_grad()
def validate(model, tokenizer, lengths, idx, lines, beta, batch_size=1024):
    """Validation -ELBO terms, active units and accuracy from mu through the full
    decoding path (``written_back``, as ``evaluate``'s acc_mu), for the token ids ``idx``
    of ``lines``; ``lengths``: the run's line lengths in positions."""
    model.eval()
    rec = kl = ref = hits = 0.0
    mus = []
    for i in range(0, len(idx), batch_size):
        batch = idx[i:i + batch_size]
        terms = model.loss(batch, beta)
        rec += terms["rec"].item() * len(batch)
        kl += terms["kl"].item() * len(batch)
        ref += terms["ref"].item() * len(batch) if "ref" in terms else 0.0
        hits += written_back(model, tokenizer, lengths, terms["mu"], batch,
                             lines[i:i + batch_size])[0]
        mus.append(terms["mu"].float())
    model.train()
    n = len(idx)
    return {"rec": rec / n, "kl": kl / n, "nelbo": (rec + kl) / n, "ref": ref / n,
            "acc_mu": hits / sum(map(len, lines)), "au": active_units(torch.cat(mus))}


def finish(out, log=print):
    """Evaluate a finished run on its test split and write summary.json.

    Runs on the device the run trained on. A corpus too small to have test lines is
    evaluated on its validation split, or else on 1,000 random training lines.
    """
    config = read_saved_config(out)
    run = load_run(out, resolve_device(config["train"].get("device", "auto")))
    counts = config["data"]["counts"]
    split = next((s for s in ("test", "valid") if counts.get(s)), "train")
    t0 = time.time()
    res = evaluate_split(run, split, max_lines=0 if split != "train" else 1000,
                         iw_samples=config["train"]["iw_samples"])
    res["eval_s"] = round(time.time() - t0, 1)
    hist = read_metrics(out)
    summary = {**res, "steps": hist[-1]["step"] if hist else None,
               "train_s": hist[-1]["elapsed_s"] if hist else None,
               "weights_step": weights_step(hist)}
    write_summary(out, summary)
    write_curves(out, schedule_of(config), log)  # now with the test IW-NLL
    log(format_table(res))
    return summary
