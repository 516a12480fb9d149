"""The token cache: a corpus's training ids in a uint16 file, read back a batch at a time."""
import os

import numpy as np
import pytest
import torch

from textvae.data import load_corpus
from textvae.tokenizer import CharTokenizer
from textvae.tokens import TokenIds, cache_file

from .conftest import POEM_LINES, write_corpus

ROTATIONS = [s[i:] + s[:i] for s in POEM_LINES for i in range(5)]


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(str(write_corpus(tmp_path / "c.txt", ROTATIONS)))


def test_batches_read_from_the_file_are_the_encoded_lines(corpus, tmp_path):
    tok = CharTokenizer.train(corpus.train, 100)
    ids = TokenIds(cache_file(corpus, tok, 7, tmp_path / "cache"), 7, torch.device("cpu"))
    assert len(ids) == len(corpus.train)
    rows = torch.tensor([3, 0, len(ids) - 1, 3])
    expected = tok.encode_batch([corpus.train[i] for i in rows], 7)
    got = ids.batch(rows)
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), expected)


def test_the_file_is_reused_and_a_changed_corpus_or_vocabulary_gets_its_own(corpus, tmp_path):
    tok = CharTokenizer.train(corpus.train, 100)
    first = cache_file(corpus, tok, 5, tmp_path / "cache")
    written = first.stat().st_mtime_ns
    assert cache_file(corpus, tok, 5, tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == written  # not rebuilt
    assert cache_file(corpus, tok, 6, tmp_path / "cache") != first
    assert cache_file(corpus, CharTokenizer.train(corpus.train, 10), 5,
                      tmp_path / "cache") != first
    with open(corpus.source, "a", encoding="utf-8") as f:
        f.write("一二三四五\n")
    os.utime(corpus.source, ns=(written + 10**9, written + 10**9))
    changed = load_corpus(corpus.source)
    assert cache_file(changed, tok, 5, tmp_path / "cache") != first


def test_an_interrupted_build_leaves_no_file(corpus, tmp_path, monkeypatch):
    import textvae.tokens as tokens
    tok = CharTokenizer.train(corpus.train, 100)
    monkeypatch.setattr(tokens, "CHUNK", 8)  # several pieces, the third one fails
    real, calls = tok.encode_batch, []

    def failing(lines, length):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(lines, length)
    monkeypatch.setattr(tok, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        cache_file(corpus, tok, 5, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_unwritable_cache_is_one_clear_line(corpus, tmp_path):
    from textvae.errors import UserError
    tok = CharTokenizer.train(corpus.train, 100)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write the token cache .*set TEXTVAE_CACHE"):
        cache_file(corpus, tok, 5, blocker / "tokens")
