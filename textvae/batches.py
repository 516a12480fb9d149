"""A corpus split's token ids, encoded once into an array file that training reads.

The file is a flat uint16 array of (lines, positions) ids, as nanoGPT's train.bin: 2 bytes
an id instead of the 8 of an int64 tensor (10M lines of 64 characters: 1.3 GB on disk,
not 5 GB in memory). Its name is a hash of what decides its contents - the corpus file
(path, size, modification time), the tokenizer and the model length - so a second run on
the same corpus and vocabulary reuses it, and a changed corpus gets a new one. It lives
in the user's cache (corpora.cache_dir(), beside the downloaded archives), where
deleting it costs only its re-encoding.

On a CPU a batch is read from the file with a fresh memory map each time: pages of a map
held open stay counted in the process's memory until the map closes, so a map kept for a
whole epoch would grow to the file's size; reopening it keeps an epoch's memory at a
batch (the operating system's page cache still keeps the file at hand). On a GPU the ids
are copied to the device once, so that no step waits for a host-to-device copy.
"""
import hashlib
import itertools
from pathlib import Path

import numpy as np
import torch

from .corpora import cache_dir
from .errors import UserError
from .files import atomic_write_chunks

DTYPE = np.uint16  # ids below 65,536 (the vocabulary is capped far below)
CHUNK = 1 << 16    # lines encoded per piece written


def cache_file(corpus, tok, positions, folder=None):
    """The array file for ``corpus``'s training split under ``tok`` at ``positions`` (in
    ``folder``, default corpora.cache_dir()/tokens), built atomically unless there."""
    if tok.vocab_size > np.iinfo(DTYPE).max + 1:
        raise UserError(f"a vocabulary of {tok.vocab_size} ids does not fit in uint16")
    key = hashlib.sha256(tok.proto + f"|{corpus.stamp()}|{positions}".encode()).hexdigest()
    path = Path(folder or cache_dir() / "tokens") / f"{corpus.name}-{key[:16]}.u16"
    if not path.exists():
        lines = iter(corpus.train)  # read from its file piece by piece, never held
        pieces = iter(lambda: list(itertools.islice(lines, CHUNK)), [])
        try:
            atomic_write_chunks(path, (tok.encode_batch(piece, positions).astype(DTYPE).tobytes()
                                       for piece in pieces))
        except OSError as e:
            raise UserError(f"cannot write the token cache {path} ({e.strerror or e}); "
                            "set TEXTVAE_CACHE to a writable folder") from None
    return path


class TokenIds:
    """The training ids of one array file: ``len``, and ``batch(rows)`` as int64 on the
    device (rows: a LongTensor of line numbers)."""

    def __init__(self, path, positions, device):
        self.path, self.positions = Path(path), positions
        self.n = self.path.stat().st_size // (np.dtype(DTYPE).itemsize * positions)
        self.on_device = None
        if device.type != "cpu":  # int32 halves device memory; ids are < 65,536
            self.on_device = torch.empty(self.n, positions, dtype=torch.int32, device=device)
            ids, step = self._map(), CHUNK * 16  # copied a million lines at a time
            for i in range(0, self.n, step):
                self.on_device[i:i + step] = torch.from_numpy(ids[i:i + step].astype(np.int32))

    def __len__(self):
        return self.n

    def _map(self):
        return np.memmap(self.path, dtype=DTYPE, mode="r", shape=(self.n, self.positions))

    def batch(self, rows):
        if self.on_device is not None:
            return self.on_device[rows].long()
        return torch.from_numpy(self._map()[rows.numpy()].astype(np.int64))


# ---------------------------------------------------------------------------------------
# The order of an epoch

HELD_ORDER = 1 << 20  # up to this many lines an epoch's order is a stored permutation


def epoch_order(n, seed, epoch, device=torch.device("cpu")):
    """The shuffled line numbers of epoch ``epoch``, sliced as ``order[b:b + size]``.

    Seeded by the pair (seed, epoch), so seed s is not seed s + 1 shifted by an epoch, as
    ``seed + epoch`` would make it. Up to HELD_ORDER lines, and on an accelerator (which
    holds the ids themselves), a torch.randperm on the device; beyond, on a CPU, a keyed
    permutation computed a batch at a time (KeyedOrder), so that an epoch over 100M lines
    holds nothing per line instead of 800 MB of int64.
    """
    key = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    if n <= HELD_ORDER or device.type != "cpu":
        return torch.randperm(n, generator=torch.Generator().manual_seed(key)).to(device)
    return KeyedOrder(n, key)


class KeyedOrder:
    """A pseudo-random permutation of range(n) evaluated at any position, holding only its
    keys: a 4-round Feistel network over 2 * half bits (the smallest even width that
    holds n - 1), and cycle-walking (apply it again until the value is below n; the
    domain is under 4n, so that takes under 4 applications on average), the standard
    construction of format-preserving encryption."""

    MUL = 0x5851F42D4C957F2D  # an odd 63-bit multiplier (PCG's): mixes low bits upward

    def __init__(self, n, key):
        self.n, self.half = n, ((n - 1).bit_length() + 1) // 2
        self.mask = (1 << self.half) - 1
        keys = np.random.SeedSequence(key).generate_state(4, dtype=np.uint64) >> np.uint64(2)
        self.keys = [int(k) for k in keys]

    def __len__(self):
        return self.n

    def __getitem__(self, span):
        x = self._permute(torch.arange(*span.indices(self.n)))
        while True:
            out = x >= self.n
            if not out.any():
                return x
            x[out] = self._permute(x[out])

    def _permute(self, x):
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            # The round function: the product's bits 32 and up depend on all of right's.
            mixed = (((right ^ k) * self.MUL) >> 32) & self.mask
            left, right = right, left ^ mixed
        return (left << self.half) | right
