"""Tokenizers: what one decoder position holds, a character or a word piece.

CharTokenizer (the default, and the only one for Chinese verse) is a sentencepiece 'char'
model with fixed-length encoding. PieceTokenizer, for scripts written with spaces
(English verse), gives each position a BPE piece instead (Sennrich et al. 2016).

sentencepiece builds the vocabulary (the most frequent characters of the training split,
up to ``vocab_size``) and stores it in one portable file, ``tokenizer.model``, in the run
folder. Encoding, though, goes character by character through ``piece_to_id``: the
decoder predicts one character per position, and sentencepiece's own ``encode`` merges a
run of unknown characters into a single <unk>, which would shift every later position.

Ids: 0 <pad> (positions past a line's end), 1 <unk> (characters outside the vocabulary,
and control characters such as NUL, which sentencepiece never puts in a vocabulary),
2 <s>, 3 </s> (reserved; the non-autoregressive model never needs them).
"""
import functools
import io
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .data import evenly_spaced
from .errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FIT_LINES = 2_000_000  # lines the vocabulary is counted on, at most
SPACE = "\u2581"  # sentencepiece's visible space, '▁'


class CharTokenizer:
    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size()
        # id -> character, with the special ids mapped to '' so decode() can skip them
        self.chars = [self.sp.id_to_piece(i).replace(SPACE, " ") for i in range(self.vocab_size)]
        for i in (PAD, UNK, BOS, EOS):
            self.chars[i] = ""
        # character -> id (a 'char' model's pieces are all single characters; a BPE
        # model's single-character pieces are its alphabet)
        self.index = {c: i for i, c in enumerate(self.chars) if len(c) == 1}

    @functools.cached_property
    def lookup(self):
        """Code point -> id for every Unicode character (4.4 MB): encode_batch looks a
        whole batch up at once instead of one dictionary lookup a character."""
        lookup = np.full(0x110000, UNK, dtype=np.int32)
        for c, i in self.index.items():
            lookup[ord(c)] = i
        return lookup

    units = "chars"   # what a position holds, as --units names it

    @property
    def alphabet_size(self):
        """Characters (+4 specials) a character judge of this run's lines counts with."""
        return len(self.chars)

    def longest(self, lines):
        """Positions the longest of ``lines`` takes."""
        return max(map(len, lines), default=0)

    def position_lengths(self, corpus):
        """The line lengths, in positions, of ``corpus``'s training split (decoding
        writes <pad> only where some line ends)."""
        return corpus.form.lengths

    # -- building and saving ------------------------------------------------------------
    @classmethod
    def train(cls, lines, vocab_size):
        """Fit the vocabulary on ``lines`` (a list, or any sized iterable read once): the
        ``vocab_size - 4`` most frequent characters, counted on every line up to FIT_LINES
        and beyond that on an evenly spaced FIT_LINES of them (sentencepiece holds what it
        is given, ~50 bytes a line; only characters near the cap in frequency can differ)."""
        if vocab_size < 5:
            raise UserError(f"--vocab-size must be at least 5, got {vocab_size}")
        proto = io.BytesIO()
        try:
            cls._fit(evenly_spaced(lines, FIT_LINES), vocab_size, proto)
        except RuntimeError as e:  # e.g. lines made only of control characters
            raise UserError(f"cannot build a vocabulary from these lines "
                            f"({str(e).strip().splitlines()[0][:120]})") from None
        return cls(proto.getvalue())

    @staticmethod
    def _fit(lines, vocab_size, proto):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=proto, model_type="char",
            vocab_size=vocab_size,
            hard_vocab_limit=False,          # a tiny corpus with fewer characters is fine
            character_coverage=1.0,          # the vocab_size cap alone decides what is <unk>
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            normalization_rule_name="identity",  # poems are not altered (no NFKC)
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_by_whitespace=False, max_sentence_length=1 << 16,
            num_threads=1, minloglevel=2,
        )

    def save(self, path):
        from .files import atomic_write_bytes
        atomic_write_bytes(path, self.proto)

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.exists():
            raise UserError(f"missing tokenizer file: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError:
            raise UserError(f"{path} is not a valid sentencepiece model") from None

    # -- encoding -------------------------------------------------------------------------
    def unknown_chars(self, text):
        return sorted({c for c in text if c not in self.index})

    def encode(self, text, length=None, allow_unk=True):
        """Ids of ``text``, one per position (a character, or a piece), padded with
        <pad> to ``length``."""
        if not allow_unk:
            unknown = self.unknown_chars(text)
            if unknown:
                shown = " ".join(repr(c) for c in unknown[:5])
                raise UserError(f"{text!r} has characters outside the model's vocabulary: "
                                f"{shown} (pass --allow-unk to map them to <unk>)")
        ids = self._ids(text)
        if length is not None:
            if len(ids) > length:
                raise UserError(f"{text!r} takes {len(ids)} {self.units}; this model "
                                f"handles at most {length}")
            ids += [PAD] * (length - len(ids))
        return ids

    def _ids(self, text):
        return [self.index.get(c, UNK) for c in text]

    def encode_batch(self, lines, length):
        """An int64 array (len(lines), length): ``encode`` of each line; lines must fit."""
        lines = list(lines)
        text = "".join(line.ljust(length, "\0") for line in lines)
        # UTF-32 is one 4-byte code point a character; surrogatepass lets a lone
        # surrogate (from a command line's undecodable bytes) through, to become <unk>.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self.lookup[codes.reshape(len(lines), length)].astype(np.int64)
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        ids[np.arange(length) >= lengths[:, None]] = PAD
        return ids

    def decode(self, ids, unk="□"):
        """Text of ``ids``, stopping at the first <pad>; <unk> shows as ``unk``."""
        ids = [int(i) for i in ids]
        return self._text(ids[:ids.index(PAD)] if PAD in ids else ids, unk)

    def _text(self, ids, unk):
        return "".join(unk if i == UNK else self.chars[i] for i in ids)


class PieceTokenizer(CharTokenizer):
    """A sentencepiece BPE model: each position holds a piece (a word, or a part of one,
    with its leading space as '▁'). An English line of 40-60 characters takes 10-26
    pieces, so a position's head chooses among whole words and word parts instead of
    spelling each word letter by letter, position-independently (measured on the
    sonnets: 86% of sample words are words of the training split, against 72% with
    characters). Every character of the training split is a piece of its own too
    (character_coverage 1.0), so any line of known characters can be encoded."""

    units = "pieces"

    @property
    def alphabet_size(self):
        return len(self.index) + 4

    def longest(self, lines):
        return max((len(ids) for ids in self.sp.encode(list(lines))), default=0)

    def position_lengths(self, corpus):
        return sorted({len(ids) for ids in self.sp.encode(list(corpus.train))})

    @staticmethod
    def _fit(lines, vocab_size, proto):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=proto, model_type="bpe",
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,  # a line comes back with its own spaces
            max_sentence_length=1 << 16, num_threads=1, minloglevel=2)

    def _ids(self, text):
        return self.sp.encode(text)

    def encode_batch(self, lines, length):
        """An int64 array (len(lines), length); lines longer than ``length`` are cut."""
        out = np.zeros((len(lines), length), dtype=np.int64)
        for row, ids in zip(out, self.sp.encode(list(lines))):
            row[:min(len(ids), length)] = ids[:length]
        return out

    def _text(self, ids, unk):
        # sentencepiece turns the first piece's '▁' back into nothing and <unk> into ' ⁇ '
        return self.sp.decode(ids).replace(" \u2047 ", unk)


UNITS = {"chars": CharTokenizer, "pieces": PieceTokenizer}
VOCAB = {"chars": 4000, "pieces": 1000}  # ids kept by default (--vocab-size 0)


def tokenizer_class(units):
    return UNITS[units]


def load_tokenizer(path, units):
    """A run's tokenizer.model, as the ``units`` (chars or pieces) its config.json names."""
    return UNITS[units].load(path)
