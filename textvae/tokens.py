"""A corpus split's token ids, encoded once into an array file that training reads.

The file is a flat uint16 array of (lines, max_len) ids, as nanoGPT's train.bin: 2 bytes
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
from pathlib import Path

import numpy as np
import torch

from .corpora import cache_dir
from .errors import UserError
from .files import atomic_write_chunks

DTYPE = np.uint16  # ids below 65,536 (the vocabulary is capped far below)
CHUNK = 1 << 16    # lines encoded per piece written


def cache_file(corpus, tok, max_len, folder=None):
    """The array file for ``corpus``'s training split under ``tok`` at ``max_len`` (in
    ``folder``, default corpora.cache_dir()/tokens), built atomically unless there."""
    if tok.vocab_size > np.iinfo(DTYPE).max + 1:
        raise UserError(f"a vocabulary of {tok.vocab_size} ids does not fit in uint16")
    key = hashlib.sha256(tok.proto + f"|{corpus.stamp()}|{max_len}".encode()).hexdigest()
    path = Path(folder or cache_dir() / "tokens") / f"{corpus.name}-{key[:16]}.u16"
    if not path.exists():
        lines = corpus.train
        try:
            atomic_write_chunks(path, (tok.encode_batch(lines[i:i + CHUNK], max_len)
                                       .astype(DTYPE).tobytes()
                                       for i in range(0, len(lines), CHUNK)))
        except OSError as e:
            raise UserError(f"cannot write the token cache {path} ({e.strerror or e}); "
                            "set TEXTVAE_CACHE to a writable folder") from None
    return path


class TokenIds:
    """The training ids of one array file: ``len``, and ``batch(rows)`` as int64 on the
    device (rows: a LongTensor of line numbers)."""

    def __init__(self, path, max_len, device):
        self.path, self.max_len = Path(path), max_len
        self.n = self.path.stat().st_size // (np.dtype(DTYPE).itemsize * max_len)
        self.on_device = None
        if device.type != "cpu":  # int32 halves device memory; ids are < 65,536
            self.on_device = torch.empty(self.n, max_len, dtype=torch.int32, device=device)
            ids, step = self._map(), CHUNK * 16  # copied a million lines at a time
            for i in range(0, self.n, step):
                self.on_device[i:i + step] = torch.from_numpy(ids[i:i + step].astype(np.int32))

    def __len__(self):
        return self.n

    def _map(self):
        return np.memmap(self.path, dtype=DTYPE, mode="r", shape=(self.n, self.max_len))

    def batch(self, rows):
        if self.on_device is not None:
            return self.on_device[rows].long()
        return torch.from_numpy(self._map()[rows.numpy()].astype(np.int64))
