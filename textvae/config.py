"""Training settings and named presets.

The model's own settings are ``VAEConfig`` in model.py (they rebuild the model); these
decide how it is trained. Both are saved in the run folder's config.json. Each field's
comment is its ``--flag`` help in train.py.
"""
import math
from dataclasses import asdict, dataclass, fields

from .errors import UserError


class Saved:
    """A config dataclass that config.json stores as a section and reads back; a key it
    does not know is refused (a run from a newer version, or a mistyped edit)."""
    SECTION = "model"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"config has unknown {cls.SECTION} settings: {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainConfig:
    corpus: str = "tang5"         # a recipe name (corpora/) or the path of a UTF-8 file
    data_dir: str = "data"        # where recipes write prepared corpora
    out: str = ""                 # run folder; default runs/<corpus name>
    units: str = "auto"           # what a decoder position holds: chars, pieces (BPE word
                                  # pieces, for English verse), or auto: the recipe's,
                                  # else pieces for a script written with spaces
                                  # (corpora.default_units)
    vocab_size: int = 0           # ids kept, the 4 specials among them: characters (rarer
                                  # ones become <unk>) or pieces; 0: 4000 ids for
                                  # characters, 1000 for pieces
    max_chars: int = 0            # longest line kept, in characters; 0: the longest training
                                  # line (at most 64)
    epochs: float = 2.4           # passes over the training split (tang5: ~10 min on 2
                                  # CPU cores); see min_steps and max_steps
    min_steps: int = 3000         # a small corpus still trains this many steps (10k lines
                                  # at 2.4 epochs would be only ~100 steps)
    max_steps: int = 0            # > 0: train exactly this many steps, whatever --epochs
                                  # and --minutes
    minutes: float = 15.0         # time budget: where the planned steps would take longer
                                  # on this machine, train as many as fit (the clock is
                                  # read every step); 0: none (the same steps on any
                                  # machine, as many minutes as they take)
    batch_size: int = 256         # lines per step, at most; see batch_chars
    batch_chars: int = 2048       # a step holds at most this many positions, so long
                                  # lines take fewer a step (256 of 5 or 7 characters, 34
                                  # of 60: a step costs about the same); 0: no limit
    lr: float = 2e-3              # Adam; cosine-decayed to lr/10 over the run
    weight_decay: float = 0.0     # Adam's L2 penalty
    grad_clip: float = 1.0        # max global grad norm; 0 disables
    kl_schedule: str = "cyclical" # constant, linear, sigmoid or cyclical (Fu et al. 2019)
    beta_max: float = 0.0         # the KL weight's ceiling: < 1 keeps more of each line in
                                  # z (reconstruction), 1 is the true ELBO; 0: the
                                  # recipe's (corpora.default_beta: 0.35 for tang7,
                                  # else 0.5)
    kl_warmup: int = 2000         # linear / sigmoid: steps to reach beta_max
    kl_cycles: int = 2            # cyclical: cycles over the run
    kl_ratio: float = 0.5         # cyclical: share of each cycle spent ramping up
    free_bits: float = 0.1        # per-dimension KL floor (nats); keeps every dimension in use
    eval_every: int = 500         # steps between validation records in metrics.jsonl
    keep_best: bool = True        # the run's weights are those of the validation record
                                  # with the lowest -ELBO + refiner loss (early stopping:
                                  # a small corpus overfits long before min_steps);
                                  # --no-keep-best: the last step's
    ckpt_every: int = 500         # steps between checkpoints
    keep_ckpts: int = 2           # checkpoints kept on disk
    iw_samples: int = 100         # k for the final test IW-NLL (0 skips it)
    seed: int = 0                 # fixes initialisation, data order and sampling
    device: str = "auto"          # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    amp: str = "auto"             # bf16 autocast: auto = on for CUDA GPUs with native bf16
                                  # and for CPUs timed 1.5x faster in bf16 than fp32
                                  # (AVX-512 BF16, AMX), bf16 = on, off = fp32
    compile: str = "auto"         # torch.compile the training step into CUDA graphs: auto =
                                  # on for CUDA runs of 2,000+ steps (~30 s to compile, then
                                  # a 5x faster step on an H100), on, off
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/inf instead of stopping
    skip_bad_lines: bool = False  # drop corpus lines that are not UTF-8 instead of failing
    poems: str = "auto"           # stanzas the poem chain (poem.py) is fitted on after the
                                  # line VAE, so a poem's lines follow each other: a recipe
                                  # (stanza5) or a file of poems, one a line as 甲，乙。丙，丁。;
                                  # auto: the recipe's (tang5: stanza5, else none); none
    poem_minutes: float = 4.5     # of --minutes, what the poem model takes (less where the
                                  # line model left less, but never under its share of
                                  # the budget or half of it): encoding stanzas, the chain and
                                  # the poem-context refiner (an eighth, an eighth but at most
                                  # 30 s, and the rest); with --minutes 0, as given
    poem_context: bool = True     # fit the poem-context refiner (context.py), so each line
                                  # is written seeing the lines before it; off: a third
                                  # encoding, the rest the chain
    context_layers: int = 0       # Transformer layers the poem-context refiner has above the
                                  # line refiner's (each the identity at first)

    # Not a field: the flags' allowed values.
    CHOICES = {"units": ("auto", "chars", "pieces"),
               "kl_schedule": ("constant", "linear", "sigmoid", "cyclical"),
               "amp": ("auto", "bf16", "off"), "compile": ("auto", "on", "off")}

    def __post_init__(self):
        for name in ("batch_size", "eval_every", "ckpt_every", "keep_ckpts"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"{flag(name)} must be > 0, got {getattr(self, name)}")
        for name in ("vocab_size", "free_bits", "iw_samples", "max_chars", "min_steps", "max_steps",
                     "batch_chars", "minutes", "beta_max", "poem_minutes", "context_layers"):
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")

    def line_seconds(self):
        """The line VAE's share of the --minutes budget, in seconds (0: none)."""
        if not self.minutes:
            return 0.0
        chain = self.poem_minutes if self.poems != "none" else 0.0
        return max(self.minutes - chain, self.minutes / 2) * 60

    def lines_per_step(self, positions):
        """batch_size, or fewer lines where batch_chars positions would not hold them."""
        if not self.batch_chars:
            return self.batch_size
        return max(1, min(self.batch_size, self.batch_chars // max(positions, 1)))

    def steps_per_epoch(self, train_lines, positions):
        return math.ceil(train_lines / self.lines_per_step(positions))

    def total_steps(self, steps_per_epoch):
        if self.max_steps:
            return self.max_steps
        return max(round(self.epochs * steps_per_epoch), self.min_steps, 1)


def flag(name):
    return "--" + name.replace("_", "-")


# Su Jianlin's Keras poetry VAE (bojone/vae, 2018), the baseline to beat: no
# refiner (so no poem model), KL at weight 1 from the first step, no free bits.
PRESETS = {
    "su2018": {"emb_dim": 64, "enc_hidden": 64, "enc_layers": 2, "kernel": 3,
               "pooling": "mean", "enc_positions": False, "latent": 64, "dec_trunk": 0,
               "dec_hidden": 64, "dec_layers": 1, "dropout": 0.0, "refiner_layers": 0,
               "kl_schedule": "constant", "beta_max": 1.0, "free_bits": 0.0, "lr": 1e-3,
               "batch_size": 64, "poems": "none"},
    # An hour on a 2-core CPU, up to two thirds of it for the poem model: time there is
    # what blind readers saw (docs/poems.md, "More time"); more steps of the line model
    # alone read no better.
    "hour": {"minutes": 60.0, "epochs": 5, "poem_minutes": 40.0},
    # Three hours, the longest recipe on this CPU: up to five sixths of them for the
    # poem model, whose fit keeps a checkpoint every five minutes (--resume goes on).
    "long": {"minutes": 180.0, "epochs": 6, "poem_minutes": 150.0},
}


def configs(preset=None, overrides=None):
    """(TrainConfig, VAEConfig) for a preset name (None: the defaults) plus overrides."""
    from .model import VAEConfig
    if preset and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    settings = {**PRESETS.get(preset or "", {}), **(overrides or {})}

    def build(cls):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})
    return build(TrainConfig), build(VAEConfig)
