"""The anchor a user would pick instead to write lines: a character-level GRU LM.

    python bench/charlm.py [--minutes 10] [--corpus tang5] [--out runs/bench-charlm-<corpus>]

One GRU layer (hidden 512) over the same characters (the same sentencepiece vocabulary
as the VAE), trained with teacher forcing on <s> line </s> for a wall-clock budget, then
sampled at temperature 1 (ancestral sampling). On a corpus of one line length the
length is imposed (no </s> before it, </s> at it), as the VAE's fixed form is. It cannot
encode, reconstruct, interpolate or complete: it is the bar for fluency alone.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.data import load_corpus  # noqa: E402
from textvae.device import fused_adam  # noqa: E402
from textvae.tokenizer import BOS, EOS, PAD, UNK, CharTokenizer  # noqa: E402


class CharGRU(nn.Module):
    def __init__(self, vocab, emb=128, hidden=512):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, idx, h=None):  # idx (B, T) -> logits (B, T, V), state
        y, h = self.gru(self.embed(idx), h)
        return self.out(y), h


def sequences(tok, lines, max_len):
    """<s> line </s> <pad>...: (N, max_len + 2) ids."""
    ids = torch.from_numpy(tok.encode_batch(lines, max_len)).long()
    out = torch.full((len(lines), max_len + 2), PAD, dtype=torch.long)
    out[:, 0] = BOS
    out[:, 1:max_len + 1] = ids
    lengths = (ids != PAD).sum(1)
    out[torch.arange(len(lines)), lengths + 1] = EOS
    return out


def train_lm(model, data, seconds, batch=128, lr=2e-3, seed=0):
    """Teacher-forced training until the clock runs out; returns steps taken."""
    # fused, as the VAE's trainer: the anchor gets the same optimiser's speed
    opt = torch.optim.Adam(model.parameters(), lr=lr,
                           fused=fused_adam(next(model.parameters()).device))
    gen = torch.Generator().manual_seed(seed)
    t0, steps = time.time(), 0
    while time.time() - t0 < seconds:
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    return steps


@torch.no_grad()
def sample_lm(model, tok, n, max_len, fixed_len=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1), BOS, dtype=torch.long)
    h, rows = None, []
    for t in range(max_len + 1):
        logits, h = model(x, h)
        logits = logits[:, -1].float()
        logits[:, [PAD, UNK, BOS]] = float("-inf")
        if fixed_len is not None and t < fixed_len:
            logits[:, EOS] = float("-inf")          # not before the corpus' length
        elif fixed_len is not None:
            logits[:, :EOS] = logits[:, EOS + 1:] = float("-inf")  # and only there
        x = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        rows.append(x)
    ids = torch.cat(rows, 1).tolist()
    return ["".join(tok.chars[i] for i in (row[:row.index(EOS)] if EOS in row else row))
            for row in ids]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--corpus", default="tang5")
    p.add_argument("--num", type=int, default=1000, help="samples written to samples.json")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    corpus = load_corpus(args.corpus)
    tok = CharTokenizer.train(corpus.train, 4000)
    data = sequences(tok, corpus.train, corpus.max_chars)
    model = CharGRU(tok.vocab_size)
    steps = train_lm(model, data, args.minutes * 60)
    lengths = corpus.form.lengths
    fixed = lengths[0] if len(lengths) == 1 else None
    samples = sample_lm(model.eval(), tok, args.num, corpus.max_chars, fixed)
    out = Path(args.out or f"runs/bench-charlm-{corpus.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.json").write_text(json.dumps(
        {"steps": steps, "minutes": args.minutes, "samples": samples}, ensure_ascii=False))
    print(f"{steps} steps in {args.minutes:g} min; {out / 'samples.json'}")
    print(" ".join(samples[:16]))


if __name__ == "__main__":
    main()
