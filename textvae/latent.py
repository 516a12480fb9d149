"""Working in the latent space: nearest training lines, attribute vectors, themes.

    similar(run, lines)            training lines whose posterior means lie nearest
    attribute(run, toward, away)   mean mu of one set of lines minus that of another
    shift(run, line, vector)       a line's z moved along an attribute vector, written

The training split's posterior means are computed once (~25 s for tang5's 307k lines on
2 cores) and kept in the run folder as index.safetensors, stamped with the weights they
came from, so a retrained or resumed run never reads a stale index.
"""
import torch
from safetensors import safe_open
from safetensors.torch import save

from .errors import UserError
from .files import atomic_write_bytes
from .run import INDEX, WEIGHTS
from .decoding import SampleConfig, encode_lines, given_z, noise_of, texts, write_lines

def _stamp(run):
    """Identifies the weights an index was computed from (size and modification time)."""
    st = (run.dir / WEIGHTS).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def train_index(run, batch=8192):
    """(training lines, their posterior means (N, D) float32), cached in the run folder."""
    from .data import corpus_of_run
    lines = list(corpus_of_run(run).train)
    path, stamp = run.dir / INDEX, f"{_stamp(run)}-{len(lines)}"
    if path.exists():
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("stamp") == stamp:
                return lines, f.get_tensor("mu").float()
    ids = torch.from_numpy(run.tokenizer.encode_batch(lines, run.max_len))
    with torch.no_grad():
        mu = torch.cat([run.model.encode(ids[i:i + batch].to(_device(run)))[0].float().cpu()
                        for i in range(0, len(ids), batch)])
    # float16 halves the file (39 MB for tang5); distances change in the 3rd digit.
    atomic_write_bytes(path, save({"mu": mu.half()}, metadata={"stamp": stamp}))
    return lines, mu


def similar(run, lines, k=5):
    """For each line, the ``k`` training lines whose posterior means are nearest to its
    own (Euclidean), as (line, distance) pairs, nearest first."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    train, mu = train_index(run)
    with torch.no_grad():
        query = run.model.encode(encode_lines(run, lines, allow_unk=True))[0].float().cpu()
    dist = torch.cdist(query, mu)                                     # (Q, N)
    near = dist.topk(min(k, len(train)), largest=False)
    return [[(train[j], round(float(d), 3)) for d, j in zip(ds, js)]
            for ds, js in zip(near.values.tolist(), near.indices.tolist())]


def _lines_of(spec):
    """A file's lines if ``spec`` names a file, else None (``spec`` is characters)."""
    from pathlib import Path
    if Path(spec).is_file():
        from .files import LineReader
        return LineReader(spec).read()
    return None


def _mean_mu(run, spec, train, mu, complement=False):
    """Mean posterior mean of the lines ``spec`` names: a file of lines, or the training
    lines holding any of its characters (``complement``: those holding none)."""
    given = _lines_of(spec)
    if given is not None:
        with torch.no_grad():
            mu = run.model.encode(encode_lines(run, given, allow_unk=True))[0]
            return mu.float().cpu().mean(0)
    chars = set(spec.replace(",", ""))
    hit = torch.tensor([bool(chars & set(line)) != complement for line in train])
    if not hit.any() or hit.all():
        raise UserError(f"{'no' if not hit.any() else 'every'} training line "
                        f"{'holds' if not complement else 'lacks'} a character of {spec!r}; "
                        "an attribute needs lines with and without it")
    return mu[hit].mean(0)


def attribute(run, toward, away=None):
    """An attribute vector (White 2016; Bowman et al. 2016 use such directions): mean mu
    of the lines ``toward`` names minus that of the lines ``away`` names. Each is a
    file of lines or characters (training lines holding any of them); without ``away``,
    the training lines that lack ``toward``'s characters (or all of them, for a file)."""
    for spec in (toward, away):
        if spec and _lines_of(spec) is None and not set(spec) & set(run.tokenizer.chars):
            raise UserError(f"no training line holds a character of {spec!r} (none is in "
                            "the vocabulary); give other characters or a file of lines")
    train, mu = train_index(run)
    if away:
        base = _mean_mu(run, away, train, mu)
    elif _lines_of(toward) is not None:
        base = mu.mean(0)
    else:
        base = _mean_mu(run, toward, train, mu, complement=True)
    return _mean_mu(run, toward, train, mu) - base


def shift(run, line, vector, steps=5, scale=1.0, sc: SampleConfig = SampleConfig()):
    """``line`` written from z + t * vector for ``steps`` values of t from 0 to ``scale``.
    t = 0 is the line's own z, read at noise 0; further points are off its posterior and
    are read more loosely, up to ``noise_of(sc)`` at the end (as interpolation does)."""
    if steps < 2:
        raise UserError(f"--steps must be at least 2, got {steps}")
    z = given_z(run, [line], allow_unk=True, sc=sc).cpu()[0]
    ts = torch.linspace(0, 1, steps)
    path = torch.stack([z + scale * t * vector for t in ts])
    return texts(run, write_lines(run, path, noise_of(sc) * ts, sc))


COLOURS = ("season", "tone")


def map_png(run, n=2000, colour="season", how="pca", n_text=12, seed=0, split="test"):
    """PNG of ``n`` random lines of a split: mu projected to 2-D (plots.project),
    coloured by the season character the line holds, or by the tone class (平 / 仄) of
    its last character in the 平水韵 table."""
    import random
    from .data import corpus_of_run
    from .plots import latent_map, project, season_of, tone_of_last
    from .prosody import table
    if colour not in COLOURS:
        raise UserError(f"--colour must be one of {', '.join(COLOURS)}, got {colour!r}")
    if n < 2:
        raise UserError(f"--num must be at least 2, got {n}")
    corpus = corpus_of_run(run)
    if not corpus.splits[split]:  # a small corpus may have no test lines
        split = "train"
    lines = list(corpus.splits[split])
    lines = random.Random(seed).sample(lines, min(n, len(lines)))
    with torch.no_grad():
        mu = run.model.encode(encode_lines(run, lines, allow_unk=True))[0].float().cpu()
    if colour == "season":
        labels = [season_of(line) for line in lines]
    else:
        labels = [tone_of_last(line, table("pingshui")) for line in lines]
    return latent_map(project(mu, how), lines, labels, n_text,
                      title=f"{run.dir.name}: {len(lines)} {split} lines, mu by {how.upper()}, "
                            f"coloured by {colour}")


def _device(run):
    return next(run.model.parameters()).device
