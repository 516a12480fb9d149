"""Reference character language models that judge generated lines.

Generation never uses these: they are fitted on the training split (fluency: how likely
are the samples under real verse) or on the samples (reverse fluency: how well do the
samples cover real verse; Zhao et al. 2018). Two orders are kept:

- CharBigram: add-k smoothed bigram (the first wave's judge, kept for comparison);
- CharKN: interpolated Kneser-Ney of order 3 (Chen & Goodman 1998, with one discount
  D = 0.75 at each order), the judge the sample-quality targets are stated in. Its
  figures are in bits per character (log2), counting the line end as one symbol.

A whole poem has a third judge, PoemThread: do its lines belong together, fitted on real
poems (a character model of lines cannot see that).
"""
import math
import re
from collections import Counter

BOS, EOS = "\x02", "\x03"  # line start / end markers; never characters of a corpus


class CharBigram:
    """Add-k smoothed character bigram with line start / end markers (natural log)."""

    def __init__(self, lines, vocab_size, k=0.1):
        self.k, self.V = k, vocab_size + 1  # +1 for the end marker
        self.pair, self.ctx = Counter(), Counter()
        for line in lines:
            chars = [BOS, *line, EOS]
            self.pair.update(zip(chars, chars[1:]))
            self.ctx.update(chars[:-1])

    def logprob_per_char(self, lines):
        """Mean natural-log probability per predicted symbol (characters and line end)."""
        total, n = 0.0, 0
        for line in lines:
            chars = [BOS, *line, EOS]
            for a, b in zip(chars, chars[1:]):
                total += math.log((self.pair[(a, b)] + self.k) / (self.ctx[a] + self.k * self.V))
                n += 1
        return total / max(n, 1)


class CharKN:
    """Interpolated Kneser-Ney character trigram."""

    def __init__(self, lines, vocab_size, discount=0.75):
        self.D, self.V = discount, vocab_size + 1   # +1 for the end marker
        tri = Counter()
        for line in lines:
            s = [BOS, BOS, *line, EOS]
            tri.update(zip(s, s[1:], s[2:]))
        self.tri = tri
        self.ctx2 = Counter()                 # c(u v .)
        self.follow2 = Counter()              # N1+(u v .)
        cont2 = Counter()                     # N1+(. v w): contexts a bigram follows
        for (u, v, w), c in tri.items():
            self.ctx2[(u, v)] += c
            self.follow2[(u, v)] += 1
            cont2[(v, w)] += 1
        self.cont2 = cont2
        self.ctx1 = Counter()                 # N1+(. v .)
        self.follow1 = Counter()              # N1+(v .) among continuation bigrams
        cont1 = Counter()                     # N1+(. w)
        for (v, w), c in cont2.items():
            self.ctx1[v] += c
            self.follow1[v] += 1
            cont1[w] += 1
        self.cont1, self.n_bigram_types = cont1, len(cont2)
        self.follow1_unigram = len(cont1)

    def _p1(self, w):
        # continuation unigram, interpolated with the uniform distribution
        lam = self.D * self.follow1_unigram / self.n_bigram_types
        return max(self.cont1[w] - self.D, 0) / self.n_bigram_types + lam / self.V

    def _p2(self, v, w):
        n = self.ctx1[v]
        if not n:
            return self._p1(w)
        return (max(self.cont2[(v, w)] - self.D, 0) + self.D * self.follow1[v] * self._p1(w)) / n

    def _p3(self, u, v, w):
        n = self.ctx2[(u, v)]
        if not n:
            return self._p2(v, w)
        return (max(self.tri[(u, v, w)] - self.D, 0)
                + self.D * self.follow2[(u, v)] * self._p2(v, w)) / n

    def line_bits(self, line):
        """log2 p(line) and the number of predicted symbols (characters + line end)."""
        s = [BOS, BOS, *line, EOS]
        return sum(math.log2(self._p3(u, v, w)) for u, v, w in zip(s, s[1:], s[2:])), len(s) - 2

    def bits_per_char(self, lines):
        """Mean log2 probability per predicted symbol over ``lines`` (higher is better)."""
        total = n = 0
        for line in lines:
            b, k = self.line_bits(line)
            total, n = total + b, n + k
        return total / max(n, 1)


def distinct_n(lines, n):
    grams = [tuple(s[i:i + n]) for s in lines for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def adjacent_repeat_share(lines):
    return sum(any(a == b for a, b in zip(s, s[1:])) for s in lines) / max(len(lines), 1)


def words(line):
    """The lower-cased words of a line of a spaced script (letters, inner apostrophes)."""
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", line.lower())


def known_word_share(line_sets, train_lines):
    """For each list of lines in ``line_sets``, the share of its words that are words of
    ``train_lines``; None for a script written without spaces (Chinese), where a line
    has no words to check."""
    if not any(" " in line for line in train_lines):
        return None
    vocab = {w for line in train_lines for w in words(line)}
    shares = []
    for lines in line_sets:
        found = [w in vocab for line in lines for w in words(line)]
        shares.append(sum(found) / max(len(found), 1))
    return shares


def chars_changed(a, b):
    """Positions at which two lines differ (a length difference counts per position)."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def fewest_changed(pairs, steps):
    """The fewest characters a step, on average, that paths of ``steps`` lines must change
    to go from a to b for each (a, b) in ``pairs`` with their ends exactly a and b:
    chars_changed obeys the triangle inequality, so a path changes at least
    chars_changed(a, b) in its steps - 1 moves. Long lines that differ almost everywhere
    (the sonnets') put this floor above a fixed target of a few characters."""
    return sum(chars_changed(a, b) for a, b in pairs) / (len(pairs) * (steps - 1))


class PoemThread:
    """How much the lines of a poem belong together, in bits: the mean pointwise mutual
    information of a character of one line with a character of another line of the same
    poem, log2 p(d in another line | c in this one) / p(d), counted on real poems.

    A character in few poems makes the ratio noise (one poem's rare character would
    "predict" every other character of that poem), so only characters found in at
    least ``min_lines`` lines are scored, and each conditional is shrunk toward p(d)
    by ``shrink`` pseudo-counts. Lines of unrelated poems score below lines of one poem;
    compare a system's poems with its own lines re-dealt into poems.
    """

    def __init__(self, poems, shrink=20.0, min_lines=20):
        self.shrink, self.min_lines = shrink, min_lines
        self.pair, self.ctx, self.other = Counter(), Counter(), Counter()
        self.lines = Counter()
        for poem in poems:
            self.lines.update(c for line in poem for c in set(line))
            for a, b in self._line_pairs(poem):
                for c in a:
                    for d in b:
                        self.pair[(c, d)] += 1
                self.ctx.update({c: len(b) for c in a})
                self.other.update(b)
        self.n = sum(self.other.values())

    @staticmethod
    def _line_pairs(poem):
        sets = [set(line) for line in poem]
        return [(a, b) for i, a in enumerate(sets) for j, b in enumerate(sets) if i != j]

    def pmi(self, c, d):
        """log2 p(d | c) / p(d) in bits; None where c or d is too rare to say."""
        if min(self.lines[c], self.lines[d]) < self.min_lines:
            return None
        p_d = self.other[d] / self.n
        return math.log2((self.pair[(c, d)] + self.shrink * p_d)
                         / (self.ctx[c] + self.shrink) / p_d)

    def poem_bits(self, poem):
        scores = [self.pmi(c, d) for a, b in self._line_pairs(poem) for c in a for d in b]
        scores = [s for s in scores if s is not None]
        return sum(scores) / max(len(scores), 1)

    def bits(self, poems):
        """Mean over poems (lists of lines) of ``poem_bits``."""
        return sum(self.poem_bits(p) for p in poems) / max(len(poems), 1)
