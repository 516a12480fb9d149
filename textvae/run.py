"""A run folder: everything needed to use or resume a trained model, and nothing else.

    runs/tang5/
      config.json          model, data and training settings (rebuilds the model)
      tokenizer.model      sentencepiece vocabulary
      model.safetensors    weights of the best validation record so far, or the latest
                           with --no-keep-best (safetensors: loading never runs code)
      checkpoints/         training state for --resume: step-XXXXXXXX.pt, last K kept
      metrics.jsonl        one record per evaluation ("kept": its weights became the run's)
      curves.png           reconstruction, KL, beta and -ELBO against step
      summary.json         final test figures

Checkpoints hold plain tensors and numbers only and are read with
``torch.load(weights_only=True)``, which refuses any pickle that would build arbitrary
objects. Every file is written to a temporary name and renamed into place.
"""
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .corpora import lines_per_poem
from .errors import UserError
from .files import atomic_write_bytes, read_json, write_json
from .model import TextVAE, VAEConfig
from .tokenizer import CharTokenizer, load_tokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.model", "model.safetensors"
METRICS, SUMMARY, CKPT_DIR = "metrics.jsonl", "summary.json", "checkpoints"
CURVES = "curves.png"


@dataclass
class Run:
    """A loaded run: the model in eval mode, its tokenizer and its saved config."""
    dir: Path
    model: TextVAE
    tokenizer: CharTokenizer
    config: dict

    @property
    def form(self):
        from .data import Form
        return Form(**self.config["data"]["form"])

    @property
    def max_len(self):
        """Positions: characters, or pieces (tokenizer.unit)."""
        return self.model.cfg.max_len

    @property
    def lengths(self):
        return position_lengths(self.config)

    def need_characters(self, what):
        """Refuse, in one line, a feature that places characters at positions."""
        if self.tokenizer.unit != "character":
            raise UserError(f"{what} places characters at positions, and this run's "
                            f"positions hold {self.tokenizer.unit}s (--units pieces)")

    # The Python API: each method is the command of the same name in generate.py.
    # Keyword arguments are those of SampleConfig (seed, noise, top_k, temperature, ...).

    def sample(self, n=4, **kw):
        """``n`` new lines written from z ~ N(0, I)."""
        from .generate import SampleConfig, sample
        return sample(self, n, SampleConfig(**kw))

    def poems(self, n=1, form=None, rhyme="pingshui", tones=False, acrostic="", **kw):
        """``n`` poems (lists of lines): four lines each, or a classical ``form``
        ('wujue', 'qijue', 'wulv', 'qilv') with rhyme and tones."""
        from .generate import SampleConfig, poems
        from .poetry import PoemConfig, write_poems
        from .prosody import form_named
        sc = SampleConfig(**kw)
        if form is None:
            return list(poems(self, n, self.config["data"].get("lines_per_poem", 4), sc,
                              heads=acrostic or None))
        return list(write_poems(self, PoemConfig(form_named(form), rhyme, tones, acrostic),
                                n, sc))

    def reconstruct(self, lines, **kw):
        from .generate import SampleConfig, reconstruct
        return reconstruct(self, list(lines), sc=SampleConfig(**kw))

    def encode(self, lines):
        """(mu, logvar), each (len(lines), latent), of the encoder q(z|x)."""
        from .generate import encode
        return encode(self, list(lines))

    def interpolate(self, a, b, steps=8, how="linear", **kw):
        from .generate import SampleConfig, interpolate
        return interpolate(self, a, b, steps, how, sc=SampleConfig(**kw))

    def complete(self, patterns, **kw):
        """Fill the '_' of each pattern, e.g. '白日__尽'."""
        from .generate import SampleConfig, complete
        return complete(self, [patterns] if isinstance(patterns, str) else list(patterns),
                        SampleConfig(**kw))


def open_run_folder(out):
    """Create a new, empty run folder, or say in one line why it cannot be one."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"cannot make run folder {out}: {p} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"run folder {out} already exists; continue it with --resume {out}, "
                        "or pick another with --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make run folder {out}: {e.strerror}") from None


def position_lengths(config):
    """Line lengths in positions seen in training, from a run's config.json (runs saved
    before pieces existed hold only the form's, in characters: the same thing)."""
    return config["data"].get("positions") or config["data"]["form"]["lengths"]


def save_run(out, tc, mc, tok, corpus):
    """The files a run needs before its first step; ``load_run`` reads them back."""
    from dataclasses import asdict
    tok.save(Path(out) / TOKENIZER)
    train = asdict(tc)
    for key in PATHS:
        train[key] = _portable(train[key], out)
    write_json(Path(out) / CONFIG, {
        "model": mc.to_dict(), "train": train,
        "data": {"corpus": corpus.name, "max_len": corpus.max_len,
                 "counts": {s: len(v) for s, v in corpus.splits.items()},
                 "skipped": corpus.skipped, "form": corpus.form.to_dict(),
                 "positions": tok.position_lengths(corpus),
                 "lines_per_poem": lines_per_poem(corpus.name)}})


def save_train_settings(out, **changes):
    """Change training settings in a run's config.json (the trainer's --minutes budget
    fixing max_steps); everything else in it stays as written."""
    config = read_json(Path(out) / CONFIG)
    config["train"].update(changes)
    write_json(Path(out) / CONFIG, config)


# Paths in config.json are stored relative to the run folder, so a project folder can
# move or be shared with its data and runs; they are made absolute again on reading.
PATHS = ("corpus", "data_dir")


def _portable(path, run_dir):
    """An absolute path relative to the run folder; anything else (a recipe name such as
    'tang5', a path already relative) as it is."""
    if not Path(path).is_absolute():
        return path
    return os.path.relpath(path, Path(run_dir).resolve())


def _absolute(key, path, run_dir):
    """Back from config.json: data_dir is always a folder path; a corpus is a path only
    where one exists (else it is a recipe name)."""
    p = Path(run_dir) / path
    if Path(path).is_absolute() or (key == "corpus" and not p.exists()):
        return path
    return str(p.resolve())


def read_saved_config(run_dir):
    config = read_json(Path(run_dir) / CONFIG)
    for section in ("model", "train", "data"):
        if section not in config:
            raise UserError(f"{Path(run_dir) / CONFIG} lacks its {section!r} section")
    for key in PATHS:
        if key in config["train"]:
            config["train"][key] = _absolute(key, config["train"][key], run_dir)
    return config


def save_weights(run_dir, model):
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(run_dir) / WEIGHTS, st_save(state))


def read_weights(path):
    path = Path(path)
    if not path.exists():
        raise UserError(f"missing weights file: {path}")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it may be "
                        "truncated or replaced, refusing to load it") from None


def check_compatible(cfg: VAEConfig, tok: CharTokenizer, state, where):
    """Catch config / tokenizer / weights mismatches with a message naming both values."""
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(f"{where}: tokenizer has {tok.vocab_size} pieces but config.json "
                        f"says vocab_size={cfg.vocab_size}")
    checks = {"embed.weight": (cfg.vocab_size, cfg.emb_dim),
              "to_mu.weight": (cfg.latent, None),
              "decoder.heads.weight": (cfg.max_len * cfg.dec_hidden, cfg.dec_trunk or cfg.latent)}
    for key, want in checks.items():
        if key not in state:
            raise UserError(f"{where}: weights lack tensor {key!r}")
        got = tuple(state[key].shape)
        if any(w is not None and w != g for w, g in zip(want, got)):
            raise UserError(f"{where}: weights tensor {key} has shape {got} but config.json "
                            f"implies {tuple(w if w is not None else g for w, g in zip(want, got))} "
                            f"(vocab_size={cfg.vocab_size}, max_len={cfg.max_len}, "
                            f"latent={cfg.latent})")


def load_run(run_dir, device="cpu"):
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir} (train one with: python train.py)")
    if not run_dir.is_dir():
        raise UserError(f"not a run folder: {run_dir}")
    config = read_saved_config(run_dir)
    cfg = VAEConfig.from_dict(config["model"])
    tok = load_tokenizer(run_dir / TOKENIZER, config["train"].get("units", "chars"))
    state = read_weights(run_dir / WEIGHTS)
    check_compatible(cfg, tok, state, run_dir)
    model = TextVAE(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{run_dir / WEIGHTS} does not fit config.json: {first}") from None
    return Run(run_dir, model.to(device).eval(), tok, config)


# -- training checkpoints ------------------------------------------------------------------

def save_checkpoint(run_dir, state, keep=2):
    """Write checkpoints/step-N.pt atomically, then drop all but the newest ``keep``."""
    folder = Path(run_dir) / CKPT_DIR
    buf = io.BytesIO()
    torch.save(state, buf)
    path = folder / f"step-{state['step']:08d}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def has_checkpoint(run_dir):
    return any((Path(run_dir) / CKPT_DIR).glob("step-*.pt"))


def clean_temp_files(run_dir):
    """Remove the temporary files of writes a SIGKILL cut short; returns how many."""
    found = [p for folder in (Path(run_dir), Path(run_dir) / CKPT_DIR)
             for p in folder.glob(".*.tmp") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


def load_checkpoint(run_dir):
    """The newest readable checkpoint (an unreadable newest one falls back to the previous)."""
    folder = Path(run_dir) / CKPT_DIR
    paths = sorted(folder.glob("step-*.pt"), reverse=True)
    if not paths:
        raise UserError(f"no checkpoint to resume from in {folder}")
    errors = []
    for path in paths:
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:  # truncated file, or a pickle weights_only refuses
            errors.append(f"{path.name}: {type(e).__name__}")
    raise UserError(f"no readable checkpoint in {folder} ({'; '.join(errors)})")


def append_metrics(run_dir, record):
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


def read_metrics(run_dir):
    """Records of metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
