"""Corpora as the trainer sees them: three splits of lines and the form they share.

``--corpus`` is either a recipe name (``tang5``; prepared on first use) or the path of any
UTF-8 file with one sample per line, which is split 98/1/1 by the same line hash the
recipes use (once, into a cached folder). Lines longer than the model's length are
skipped and counted. The training split is read from its file as it is used, never held,
so a corpus of any size trains in the memory of a batch (with tokens.py's id cache).

The *form* of a corpus is what every well-formed line has: a length seen in training and,
at any position where every training line has the same character (the '，' and '。' of
a quatrain), that character. Samples are judged against it.
"""
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .corpora import (DEFAULT_DATA_DIR, RECIPES, SPLITS, cache_dir, line_key, prepare,
                      split_file)
from .errors import UserError
from .files import LineReader, read_json

LONGEST_DEFAULT = 64  # default cap on the model length when it is taken from the corpus


@dataclass
class Corpus:
    name: str
    splits: dict                      # split name -> lines (train: a LineFile, read as used)
    max_chars: int                    # the longest line kept
    form: "Form"
    skipped: dict = field(default_factory=dict)  # reason -> count
    source: str = ""                  # the file the lines were read from

    def stamp(self):
        return file_stamp(self.source)

    @property
    def train(self):
        return self.splits["train"]


def file_stamp(path):
    """What identifies a file's lines without reading them: its path, size and
    modification time (as make decides what to rebuild)."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


class LineFile:
    """A prepared split's lines of at most ``max_chars`` characters, read from its file each
    time they are iterated: ``len`` and iteration as a list gives them, without holding a
    split that may not fit in memory (``list(lines)`` where a list is needed)."""

    def __init__(self, path, max_chars, count):
        self.path, self.max_chars, self.count = Path(path), max_chars, count

    def __len__(self):
        return self.count

    def __iter__(self):
        return (line for line in self.every(self.path) if len(line) <= self.max_chars)

    def head(self, n):
        return list(itertools.islice(self, n))

    @staticmethod
    def every(path):
        """Every line of a prepared split file (one line each, as corpora.py writes
        them), whatever its length, read as iterated."""
        with open(path, encoding="utf-8", newline="\n") as f:
            for line in f:
                yield line.removesuffix("\n")


def evenly_spaced(lines, n):
    """At most ``n`` of ``lines`` (a list or a LineFile), evenly spaced, as a list: all of
    them up to n. What is fitted on a split that may not fit in memory sees this."""
    return list(itertools.islice(lines, 0, None, -(-len(lines) // n) or 1))


class LineKeys:
    """Whether a line is in a split, without holding the split: the sorted 8-byte keys
    (corpora.line_key) of its lines, 8 bytes a line (a set of str: ~100)."""

    def __init__(self, lines):
        keys = np.fromiter(map(line_key, lines), dtype=np.uint64, count=len(lines))
        self.keys = np.sort(keys)

    def __contains__(self, line):
        key = np.uint64(line_key(line))
        i = np.searchsorted(self.keys, key)
        return bool(i < len(self.keys) and self.keys[i] == key)


@dataclass
class Form:
    lengths: list   # line lengths seen in training
    fixed: dict     # position (as str, for JSON) -> the character every line has there

    @classmethod
    def fit(cls, lines, lengths):
        """The form of ``lines``, whose lengths are ``lengths`` (read in a pass of their
        own, as Counter(map(len, lines))): where those are one length, the characters all
        lines share, found in a pass that stops once no position is shared."""
        fixed = {}
        if len(lengths) == 1:
            lines = iter(lines)
            fixed = dict(enumerate(next(lines)))
            for line in lines:
                if not fixed:
                    break
                for i in [i for i, c in fixed.items() if line[i] != c]:
                    del fixed[i]
        return cls(sorted(lengths), {str(i): c for i, c in sorted(fixed.items())})

    def matches(self, text):
        return len(text) in self.lengths and all(
            int(i) < len(text) and text[int(i)] == c for i, c in self.fixed.items())

    def to_dict(self):
        return {"lengths": self.lengths, "fixed": self.fixed}


def load_corpus(spec, data_dir=DEFAULT_DATA_DIR, max_chars=0, skip_bad_lines=False):
    """Resolve ``spec`` (recipe name or file path) into a Corpus with fitting lines only.

    A file is prepared once, like a recipe, into a folder of split files in the cache
    (split_file: streamed, so a corpus need not fit in memory); the training split is
    then read from its file whenever it is used, the small valid and test splits held."""
    if spec in RECIPES and not Path(spec).exists():
        folder = prepare(spec, data_dir)
        name, source, bad = spec, folder / "train.txt", 0
    else:
        folder, name, source = prepared_file(spec, skip_bad_lines), Path(spec).stem, spec
        bad = read_json(folder / "meta.json").get("not_utf8", 0)
    if max_chars < 0:
        raise UserError(f"--max-chars must be positive, got {max_chars}")
    counts = Counter(map(len, LineFile.every(folder / "train.txt")))
    if not counts:
        raise UserError(f"corpus {spec} has no lines in its training split")
    max_chars = max_chars or min(max(counts), LONGEST_DEFAULT)
    kept = sum(c for n, c in counts.items() if n <= max_chars)
    splits = {"train": LineFile(folder / "train.txt", max_chars, kept)}
    skipped = {"too_long": sum(counts.values()) - kept}
    for s in SPLITS[1:]:
        lines = list(LineFile.every(folder / f"{s}.txt"))
        splits[s] = [x for x in lines if len(x) <= max_chars]
        skipped["too_long"] += len(lines) - len(splits[s])
    if bad:
        skipped["not_utf8"] = bad
    if not splits["train"]:
        raise UserError(f"no training line of {spec} fits in {max_chars} characters")
    form = Form.fit(splits["train"], [n for n in counts if n <= max_chars])
    return Corpus(name, splits, max_chars, form, skipped, str(source))


def prepared_file(path, skip_bad_lines=False):
    """The folder of split files for corpus file ``path``, made on first use under
    cache_dir()/corpora and named by the file's stamp, so an edited file is split anew."""
    reader = LineReader(path, skip_bad_lines)
    key = hashlib.sha256(f"{file_stamp(path)}|{skip_bad_lines}".encode()).hexdigest()
    folder = cache_dir() / "corpora" / f"{Path(path).stem}-{key[:16]}"
    if not (folder / "meta.json").exists():
        try:
            split_file(reader, folder, {"source": str(Path(path).resolve())})
        except OSError as e:
            raise UserError(f"cannot write the prepared corpus {folder} "
                            f"({e.strerror or e}); set TEXTVAE_CACHE to a writable folder") \
                from None
    return folder


def corpus_of_run(run):
    """The corpus a run was trained on, read with the run's own settings."""
    t = run.config["train"]
    return load_corpus(t["corpus"], t["data_dir"], run.config["data"]["max_chars"],
                       t.get("skip_bad_lines", False))
