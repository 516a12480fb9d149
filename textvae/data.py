"""Corpora as the trainer sees them: three lists of lines and the form they share.

``--corpus`` is either a recipe name (``tang5``; prepared on first use) or the path of any
UTF-8 file with one sample per line, which is split 98/1/1 by the same line hash the
recipes use. Lines longer than the model's length are skipped and counted.

The *form* of a corpus is what every well-formed line has: a length seen in training and,
at any position where every training line has the same character (the '，' and '。' of
a quatrain), that character. Samples are judged against it.
"""
from dataclasses import dataclass, field
from pathlib import Path

from .corpora import DEFAULT_DATA_DIR, RECIPES, SPLITS, prepare, split_of
from .errors import UserError
from .files import read_lines

LONGEST_DEFAULT = 64  # default cap on the model length when it is taken from the corpus


@dataclass
class Corpus:
    name: str
    splits: dict                      # split name -> list of lines
    max_len: int
    skipped: dict = field(default_factory=dict)  # reason -> count
    source: str = ""                  # the file the lines were read from

    def stamp(self):
        """What identifies these lines without reading them: the source file's path,
        size and modification time (as make decides what to rebuild)."""
        st = Path(self.source).stat()
        return f"{Path(self.source).resolve()}|{st.st_size}|{st.st_mtime_ns}"

    @property
    def train(self):
        return self.splits["train"]

    def form(self):
        return Form.fit(self.train, self.max_len)


@dataclass
class Form:
    lengths: list   # line lengths seen in training
    fixed: dict     # position (as str, for JSON) -> the character every line has there

    @classmethod
    def fit(cls, lines, max_len):
        lengths = sorted({len(s) for s in lines})
        fixed = {}
        if len(lengths) == 1:
            for i in range(lengths[0]):
                chars = {s[i] for s in lines}
                if len(chars) == 1:
                    fixed[str(i)] = chars.pop()
        return cls(lengths, fixed)

    def matches(self, text):
        return len(text) in self.lengths and all(
            int(i) < len(text) and text[int(i)] == c for i, c in self.fixed.items())

    def to_dict(self):
        return {"lengths": self.lengths, "fixed": self.fixed}


def load_corpus(spec, data_dir=DEFAULT_DATA_DIR, max_len=0, skip_bad_lines=False):
    """Resolve ``spec`` (recipe name or file path) into a Corpus with fitting lines only."""
    if spec in RECIPES and not Path(spec).exists():
        folder = prepare(spec, data_dir)
        splits = {s: read_lines(folder / f"{s}.txt")[0] if (folder / f"{s}.txt").stat().st_size
                  else [] for s in SPLITS}
        name, bad, source = spec, 0, folder / "train.txt"
    else:
        lines, bad = read_lines(spec, skip_bad_lines=skip_bad_lines)
        nul = next((i for i, line in enumerate(lines, 1) if "\x00" in line), None)
        if nul is not None:
            raise UserError(f"corpus {spec} has a NUL character in non-blank line {nul}: "
                            "is it a binary file? (a corpus is UTF-8 text, one line each)")
        if len(set(lines)) < 2:
            raise UserError(f"corpus {spec} has {len(set(lines))} distinct line; a VAE "
                            "learns from many lines (thousands for readable samples)")
        splits = {s: [] for s in SPLITS}
        for line in dict.fromkeys(lines):  # drop duplicates, keep order
            splits[split_of(line)].append(line)
        if not splits["train"]:
            raise UserError(f"corpus {spec} has no lines in its training split "
                            f"({len(lines)} lines in all)")
        name, source = Path(spec).stem, spec
    if max_len < 0:
        raise UserError(f"--max-len must be positive, got {max_len}")
    if max_len == 0:
        max_len = min(max(len(s) for s in splits["train"]), LONGEST_DEFAULT)
    skipped = {"too_long": 0}
    for s in SPLITS:
        keep = [x for x in splits[s] if len(x) <= max_len]
        skipped["too_long"] += len(splits[s]) - len(keep)
        splits[s] = keep
    if bad:
        skipped["not_utf8"] = bad
    if not splits["train"]:
        raise UserError(f"no training line of {spec} fits in {max_len} characters")
    return Corpus(name, splits, max_len, skipped, str(source))


def corpus_of_run(run):
    """The corpus a run was trained on, read with the run's own settings."""
    t = run.config["train"]
    return load_corpus(t["corpus"], t["data_dir"], run.max_len, t.get("skip_bad_lines", False))
