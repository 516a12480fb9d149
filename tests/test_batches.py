"""The token cache: a corpus's training ids in a uint16 file, read back a batch at a time."""
import os

import numpy as np
import pytest
import torch

from textvae.data import load_corpus
from textvae.tokenizer import CharTokenizer
from textvae.batches import KeyedOrder, TokenIds, cache_file

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
    lines = list(corpus.train)
    expected = tok.encode_batch([lines[i] for i in rows], 7)
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
    import textvae.batches as tokens
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


def test_an_unwritable_cache_for_a_prepared_corpus_is_one_clear_line(tmp_path, monkeypatch):
    from textvae.errors import UserError
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TEXTVAE_CACHE", str(blocker))
    path = write_corpus(tmp_path / "new.txt", ROTATIONS)
    with pytest.raises(UserError, match="cannot write the prepared corpus .*set TEXTVAE_CACHE"):
        load_corpus(str(path))


@pytest.mark.parametrize("n", [2, 3, 1000, 4097])
def test_a_keyed_order_is_a_permutation_that_differs_by_key(n):
    def epoch(key):
        order = KeyedOrder(n, key)
        return torch.cat([order[b:b + 64] for b in range(0, n, 64)])
    assert torch.equal(epoch(7).sort().values, torch.arange(n))
    assert torch.equal(epoch(7), epoch(7))
    if n > 3:
        assert not torch.equal(epoch(7), epoch(8))
        assert (epoch(7) == torch.arange(n)).float().mean() < 0.05  # shuffled, not kept


def test_training_past_the_held_order_reads_every_line_once_an_epoch(tmp_path, monkeypatch):
    """A corpus larger than HELD_ORDER is ordered by KeyedOrder: made small here."""
    import textvae.batches as tokens
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.trainer import train
    monkeypatch.setattr(tokens, "HELD_ORDER", 0)
    rows, real = [], TokenIds.batch
    monkeypatch.setattr(TokenIds, "batch", lambda self, r: (rows.append(r), real(self, r))[1])
    corpus = write_corpus(tmp_path / "c.txt", ROTATIONS)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), batch_size=8,
                     min_steps=0, epochs=2, iw_samples=0, amp="off")
    mc = VAEConfig(emb_dim=16, enc_hidden=16, latent=4, dec_hidden=16, refiner_layers=0)
    train(tc, mc, log=lambda *a: None)
    n = len(load_corpus(str(corpus)).train)
    seen = torch.cat(rows)
    assert len(seen) == 2 * n
    first, second = seen[:n], seen[n:]
    assert torch.equal(first.sort().values, torch.arange(n))
    assert torch.equal(second.sort().values, torch.arange(n))
    assert not torch.equal(first, second) and not torch.equal(first, torch.arange(n))
