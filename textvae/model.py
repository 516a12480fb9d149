"""A sequence VAE for fixed-length lines of text.

    x --embed (+ position)--> encoder (gated CNN or BiLSTM) --pool--> mu, logvar
    z = mu + sigma * eps                                 (reparameterisation)
    z --L fully connected heads--> (L, h) --gated conv--> per-position logits over V
    draft + z --refiner (causal Transformer, left to right)--> characters that agree

The decoder p(x|z) is non-autoregressive: every position is predicted from z alone, so
what a line says must pass through the latent. The loss is the negative ELBO,
    rec_loss + beta * KL(q(z|x) || N(0, I)),
with beta annealed by the trainer and an optional per-dimension free-bits floor.

Positions that are independent given z cannot agree with each other where z is vague,
and z ~ N(0, I) mostly lands where it is: between the posteriors of real lines. So a
small refiner, trained on the same batches, writes the line left to right from z, the
heads' draft and the characters before each position. It learns
p(x_t | x_<t, z_a, a) for a *noised* latent
    z_a = sqrt(1 - a) z + sqrt(a) eps,   a ~ U(0, 1),
told the noise level a. Since z_a is N(0, I)-distributed for every a whenever z is, a
prior sample may be read at any level a: a = 0 trusts z fully (reconstruction), larger
a lets the refiner lean on the characters before a position where z says little. The
ELBO and IW-NLL are those of p(x|z) (the fan-out decoder); the refiner is how lines are
written from it, not part of the likelihood.

References
- Kingma & Welling 2014, Auto-Encoding Variational Bayes (reparameterisation; the
  closed-form Gaussian KL of appendix B).
- Dauphin et al. 2017, Language Modeling with Gated Convolutional Networks (GLU blocks).
- Bowman et al. 2016, Generating Sentences from a Continuous Space (KL annealing).
- Kingma et al. 2016, Improved Variational Inference with IAF (free bits).
- Su Jianlin 2018, "CNN + VAE poetry robot" (GCNN encoder, dense fixed-length decoder).
- Ghazvininejad et al. 2019, Mask-Predict (the refiner's first, masked form; see Refiner).
- Shu et al. 2020, Latent-Variable Non-Autoregressive Neural Machine Translation.
- Ho et al. 2020 / Rombach et al. 2022: noise-level-conditioned denoising of a latent.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Saved
from .errors import UserError
from .tokenizer import PAD


@dataclass
class VAEConfig(Saved):
    vocab_size: int = 4000   # characters + 4 specials; set from the tokenizer
    max_len: int = 5         # L: positions the decoder emits; set from the corpus
    encoder: str = "gcnn"    # "gcnn" (gated convolutions) or "lstm" (bidirectional)
    emb_dim: int = 128       # character embedding size
    enc_hidden: int = 256    # GCNN channels, or LSTM units per direction
    enc_layers: int = 2      # residual GCNN blocks, or stacked LSTM layers
    kernel: int = 3          # GCNN kernel width: 3 sees a character and both neighbours
    pooling: str = "meanmax" # "mean", "max" or "meanmax" (concatenated) over real positions
    enc_positions: bool = True  # add a learned position vector to each character the
                             # encoder reads: pooling forgets order, and a GCNN only
                             # knows a position within its receptive field of an edge
    latent: int = 64         # dimensions of z
    dec_trunk: int = 512     # hidden layer between z and the heads; 0: z feeds them directly
    dec_hidden: int = 256    # width of each position's vector in the decoder
    dec_layers: int = 1      # residual GCNN blocks mixing positions before the softmax
    dropout: float = 0.1     # on embeddings and decoder features; 0 disables
    refiner_layers: int = 2  # Transformer layers of the refiner; 0: decode with the heads only
    refiner_dim: int = 256   # refiner width
    refiner_heads: int = 4   # attention heads of the refiner

    CHOICES = {"encoder": ("gcnn", "lstm"), "pooling": ("mean", "max", "meanmax")}  # flags

    def __post_init__(self):
        if self.encoder not in ("gcnn", "lstm"):
            raise UserError(f"--encoder must be gcnn or lstm, got {self.encoder!r}")
        if self.pooling not in ("mean", "max", "meanmax"):
            raise UserError(f"--pooling must be mean, max or meanmax, got {self.pooling!r}")
        for name in ("vocab_size", "max_len", "emb_dim", "enc_hidden", "enc_layers",
                     "latent", "dec_hidden", "kernel"):
            if getattr(self, name) < 1:
                raise UserError(f"model setting {name} must be at least 1, got "
                                f"{getattr(self, name)}")
        if self.kernel % 2 == 0:
            # padding k//2 on both sides would make an even kernel's output one longer
            raise UserError(f"--kernel must be odd (3, 5, ...), got {self.kernel}")
        if self.dec_layers < 0 or self.dec_trunk < 0 or not 0 <= self.dropout < 1:
            raise UserError("dec_layers and dec_trunk must be >= 0 and dropout in [0, 1)")
        if self.refiner_layers < 0 or (self.refiner_layers and (
                self.refiner_dim < 1 or self.refiner_heads < 1
                or self.refiner_dim % self.refiner_heads)):
            raise UserError("--refiner-layers must be >= 0 and --refiner-dim a multiple of "
                            f"--refiner-heads (got {self.refiner_dim} and {self.refiner_heads})")



# ---------------------------------------------------------------------------------------
# Building blocks

class GatedConv(nn.Module):
    """Residual gated convolution: x + A * sigmoid(B), [A, B] = conv(x) with 2c channels.

    Padding positions are zeroed before the convolution so a line's encoding does not
    depend on how much padding follows it. The convolution is computed as one matmul of
    each position's window of k vectors with the kernel: for lines of 5-60 positions
    that is the same sum 2x faster on a CPU (and backward) than torch's convolution
    kernel, which is built for long signals. The weights stay a Conv1d's, so runs saved
    before this load as they were.
    """

    def __init__(self, channels, kernel):
        super().__init__()
        self.conv = nn.Conv1d(channels, 2 * channels, kernel, padding=kernel // 2)

    def forward(self, x, mask=None):  # x: (B, L, C), mask: (B, L, 1) or None
        if mask is not None:
            x = x * mask
        a, b = conv_as_matmul(self.conv, x).chunk(2, dim=-1)
        return x + a * torch.sigmoid(b)


def conv_as_matmul(conv, x):
    """nn.Conv1d ``conv`` (stride 1, 'same' padding) applied to x (B, L, C) -> (B, L, C')."""
    k, pad = conv.kernel_size[0], conv.padding[0]
    windows = F.pad(x, (0, 0, pad, pad)).unfold(1, k, 1)       # (B, L, C, k)
    return F.linear(windows.flatten(2), conv.weight.flatten(1), conv.bias)


class Dropout(nn.Dropout):
    """nn.Dropout whose mask, on a CPU, takes 16 random bits an element, drawn 64 at a
    time: torch's CPU dropout draws a number an element on one thread and was 8% of a
    training step. An element is dropped with probability round(p 2^16) / 2^16 (p to
    within 1e-5); elsewhere (GPUs) torch's own dropout."""

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, (-(-n // 4),), dtype=torch.int64)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 2 ** 16) - 2 ** 15
        return torch.where(keep, x * (1 / (1 - self.p)), 0.0)


def masked_pool(h, mask, how):
    """Pool (B, L, C) features over the real positions given by mask (B, L, 1)."""
    mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
    if how == "mean":
        return mean
    mx = h.masked_fill(mask == 0, float("-inf")).amax(1)
    return mx if how == "max" else torch.cat([mean, mx], dim=-1)


# ---------------------------------------------------------------------------------------
# Encoders q(z|x): idx (B, L) -> features (B, F)

class GCNNEncoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.proj = nn.Conv1d(cfg.emb_dim, cfg.enc_hidden, 1)
        self.blocks = nn.ModuleList(GatedConv(cfg.enc_hidden, cfg.kernel)
                                    for _ in range(cfg.enc_layers))
        self.pooling = cfg.pooling
        self.out_dim = cfg.enc_hidden * (2 if cfg.pooling == "meanmax" else 1)

    def forward(self, emb, mask):  # emb: (B, L, E), mask: (B, L) bool
        m = mask.unsqueeze(-1).to(emb.dtype)  # (B, L, 1)
        h = conv_as_matmul(self.proj, emb)    # (B, L, C)
        for block in self.blocks:
            h = block(h, m)
        return masked_pool(h, m, self.pooling)


class LSTMEncoder(nn.Module):
    """Bidirectional LSTM over the real characters only (packed), outputs pooled."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, num_layers=cfg.enc_layers,
                            batch_first=True, bidirectional=True,
                            dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0)
        self.pooling = cfg.pooling
        self.out_dim = 2 * cfg.enc_hidden * (2 if cfg.pooling == "meanmax" else 1)

    def forward(self, emb, mask):
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=emb.shape[1])
        m = mask.unsqueeze(-1).to(out.dtype)
        return masked_pool(out, m, self.pooling)  # (B, 2H * pools)


# ---------------------------------------------------------------------------------------
# Decoder p(x|z): z (B, D) -> logits (B, L, V)

class FanOutDecoder(nn.Module):
    """z -> trunk MLP -> L fully connected heads (one per position) -> gated convs -> softmax.

    Every position is predicted independently given z, so all agreement between the
    characters of a line must be written into z and read back out by these layers; the
    trunk gives that reading a hidden layer shared by all positions.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.L, self.H = cfg.max_len, cfg.dec_hidden
        self.trunk = (nn.Sequential(nn.Linear(cfg.latent, cfg.dec_trunk), nn.GELU())
                      if cfg.dec_trunk else nn.Identity())
        # One Linear(T, L*H) is L separate heads Linear(T, H) computed in one matmul.
        self.heads = nn.Linear(cfg.dec_trunk or cfg.latent, cfg.max_len * cfg.dec_hidden)
        self.blocks = nn.ModuleList(GatedConv(cfg.dec_hidden, cfg.kernel)
                                    for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.dec_hidden)
        self.drop = Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dec_hidden, cfg.vocab_size)

    def features(self, z):
        """z (B, D) -> each position's vector (B, L, H) before the shared softmax."""
        h = F.gelu(self.heads(self.trunk(z))).view(-1, self.L, self.H)  # (B, L, H)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, z):
        return self.out(self.features(z))                    # (B, L, V)


# ---------------------------------------------------------------------------------------
# Refiner p(x_t | x_<t, z_a, a): characters that agree with each other

class Refiner(nn.Module):
    """A small causal Transformer that writes the line left to right, conditioned on a
    noised z and on the fan-out decoder's draft.

    Input: a first token made from [z_a, a]; then for each position t, the character
    before it (a start id at t = 0), its position, and the decoder's vector for position
    t given z_a (the draft, before its softmax). Output t is p(x_t | x_<t, z_a, a,
    draft_<=t): a character model that z steers. Causal, not masked: the first refiner
    was a bidirectional masked-character model, and it learnt almost nothing from the
    characters it could see (its loss on a position was the same with 0 or 4 others
    visible, 10.3 bits at noise 1, a unigram's figure): a masked position must first
    learn to attend to its neighbour, while here the previous character is already in
    the position's own input. Trained alone for 600 steps on tang5, the masked model
    reached 10.0 bits a character read left to right, this one 9.4.
    The character and draft streams are layer-normed before they are summed: the draft's
    projection is dense and trained every step, the character embeddings are sparse, and
    unnormed the draft grew to ~120x their norm and drowned them.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        d = cfg.refiner_dim
        self.start_id = cfg.vocab_size                 # one id past the vocabulary
        self.embed = nn.Embedding(cfg.vocab_size + 1, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, d))  # std 1: as the normed streams
        self.cond = nn.Linear(cfg.latent + 1, d)
        self.draft = nn.Linear(cfg.dec_hidden, d)
        self.char_norm, self.draft_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(d, cfg.refiner_heads, 4 * d, cfg.dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.refiner_layers,
                                            enable_nested_tensor=False)
        for block in self.blocks.layers:  # the faster masks on a CPU
            block.dropout, block.dropout1, block.dropout2 = (Dropout(cfg.dropout)
                                                             for _ in range(3))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.vocab_size)
        causal = nn.Transformer.generate_square_subsequent_mask(cfg.max_len + 1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, idx, z, noise, draft, at=None):
        """idx (B, L): the line (only characters before each position are read); z (B, D);
        noise (B,); draft (B, L, H), the decoder's features of z -> logits (B, L, V), or
        (n, V) at the positions ``at`` (B, L) bool."""
        c = self.cond(torch.cat([z, noise.unsqueeze(-1).to(z.dtype)], dim=-1))  # (B, d)
        before = torch.cat([torch.full_like(idx[:, :1], self.start_id), idx[:, :-1]], 1)
        x = (self.char_norm(self.embed(before)) + self.pos
             + self.draft_norm(self.draft(draft)))                              # (B, L, d)
        h = torch.cat([c.unsqueeze(1), x], dim=1)                               # (B, 1+L, d)
        h = self.norm(self.blocks(h, mask=self.causal, is_causal=True))[:, 1:]  # (B, L, d)
        return self.out(h if at is None else h[at])

    # Writing a line one position at a time, as decoding does: each position's keys and
    # values are kept, so a line of L characters costs L + 1 positions through the
    # blocks instead of L (L + 1). Same layers and weights as forward; eval mode only.

    def start(self, z, noise):
        """The cache (per layer, keys and values (B, heads, 1, d / heads)) after the
        first token [z_a, a]."""
        c = self.cond(torch.cat([z, noise.unsqueeze(-1).to(z.dtype)], dim=-1))
        return self._advance(c.unsqueeze(1), [None] * len(self.blocks.layers))[1]

    def step(self, cache, before, t, draft, shift=0.0):
        """Position t: before (B,) the character before it (``start_id`` at t = 0),
        draft (B, H) its draft features -> hidden (B, d) for ``out``, and the cache
        grown by this position. ``shift`` (d,) is added to the input (the poem-context
        refiner's row vector, context.py)."""
        x = (self.char_norm(self.embed(before)) + self.pos[t]
             + self.draft_norm(self.draft(draft)) + shift)
        h, cache = self._advance(x.unsqueeze(1), cache)
        return self.norm(h[:, 0]), cache

    def _advance(self, x, cache):
        """x (B, S, d), S new positions, through the blocks (pre-norm layers, as
        nn.TransformerEncoderLayer computes them), each attending to the cached positions,
        the new ones before it and itself."""
        assert not self.training, "the cached refiner is for writing (eval mode)"
        grown = []
        for layer, kv in zip(self.blocks.layers, cache):
            assert layer.norm_first, "written for pre-norm layers, as __init__ builds them"
            attn = layer.self_attn
            heads = attn.num_heads
            q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight,
                               attn.in_proj_bias).chunk(3, -1)
            q, k, v = (y.unflatten(-1, (heads, -1)).transpose(1, 2) for y in (q, k, v))
            if kv is not None:
                k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
            grown.append((k, v))
            S, P = q.shape[2], k.shape[2]
            # New position i sees every cached one and the new ones up to i.
            seen = (torch.ones(S, P, dtype=torch.bool, device=x.device).tril(P - S)
                    if S > 1 else None)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)  # (B, heads, S, d_h)
            x = x + attn.out_proj(a.transpose(1, 2).flatten(2))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        return x, grown


def noised(z, noise, eps):
    """z_a = sqrt(1 - a) z + sqrt(a) eps: N(0, I) stays N(0, I) at every level a."""
    a = noise.unsqueeze(-1)
    return (1 - a).sqrt() * z + a.sqrt() * eps


# ---------------------------------------------------------------------------------------
# The VAE

def log_normal(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def gaussian_kl(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per dimension, closed form (Kingma & Welling, app. B):
    -0.5 * (1 + log sigma^2 - mu^2 - sigma^2)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


class TextVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=PAD)
        # std 1, as the character embeddings: neither drowns the other.
        self.enc_pos = (nn.Parameter(torch.randn(cfg.max_len, cfg.emb_dim))
                        if cfg.enc_positions else None)
        self.emb_drop = Dropout(cfg.dropout)
        self.encoder = (GCNNEncoder if cfg.encoder == "gcnn" else LSTMEncoder)(cfg)
        self.to_mu = nn.Linear(self.encoder.out_dim, cfg.latent)
        self.to_logvar = nn.Linear(self.encoder.out_dim, cfg.latent)
        self.decoder = FanOutDecoder(cfg)
        self.refiner = Refiner(cfg) if cfg.refiner_layers else None

    def encode(self, idx):
        """idx (B, L) -> mu, logvar (B, D)."""
        assert idx.dim() == 2 and idx.shape[1] == self.cfg.max_len, idx.shape
        mask = idx != PAD
        emb = self.embed(idx)
        if self.enc_pos is not None:
            emb = emb + self.enc_pos
        h = self.encoder(self.emb_drop(emb), mask)
        return self.to_mu(h), self.to_logvar(h)

    @staticmethod
    def reparameterize(mu, logvar):
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z):
        """z (B, D) -> logits (B, L, V)."""
        return self.decoder(z)

    def forward(self, idx):
        mu, logvar = self.encode(idx)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar

    def loss(self, idx, beta=1.0, free_bits=0.0):
        """Negative ELBO terms for a batch, in nats per line.

        rec_loss: cross-entropy summed over all L positions (padding positions predict
        <pad>, so a variable-length corpus learns where lines end).
        kl_loss: the true KL, reported; the optimised term floors each dimension's
        batch-mean KL at ``free_bits`` so no dimension is pushed all the way to the prior.
        ref: the refiner's cross-entropy (nats per line), added to the loss.
        mu: the posterior means, for callers that also measure reconstruction.
        """
        mu, logvar = self.encode(idx)
        z = self.reparameterize(mu, logvar)
        logits = self.decode(z)
        rec = F.cross_entropy(logits.float().flatten(0, 1), idx.flatten(),
                              reduction="sum") / idx.shape[0]
        kl_dim = gaussian_kl(mu.float(), logvar.float()).mean(0)     # (D,)
        kl = kl_dim.sum()
        kl_opt = kl_dim.clamp(min=free_bits).sum() if free_bits > 0 else kl
        out = {"loss": rec + beta * kl_opt, "rec": rec, "kl": kl, "mu": mu}
        if self.refiner is not None:
            out["ref"] = self.refiner_loss(idx, z.detach())
            out["loss"] = out["loss"] + out["ref"]
        return out

    def refiner_loss(self, idx, z):
        """The refiner's cross-entropy on every character of the line, in nats per line.

        Each line gets its own noise level a ~ U(0, 1), so the refiner learns to write
        from a z it can trust entirely (a = 0) to one that says nothing (a = 1), and how
        far to trust z in between. z is detached: the refiner reads the latent, it does
        not shape it. Only the first half of the batch is used: the refiner needs fewer
        lines per step than the ELBO, and this halves its share of the step time.
        """
        idx, z = idx[:max(1, len(idx) // 2)], z[:max(1, len(idx) // 2)]
        noise = torch.rand(len(idx), device=idx.device)
        z_a = noised(z, noise, torch.randn_like(z))
        with torch.no_grad():
            draft = self.decoder.features(z_a)
        logits = self.refiner(idx, z_a, noise, draft)                           # (B, L, V)
        return F.cross_entropy(logits.float().flatten(0, 1), idx.flatten(),
                               reduction="sum") / len(idx)
