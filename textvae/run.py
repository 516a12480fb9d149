"""A run folder: everything needed to use or resume a trained model, and nothing else.

    runs/tang5/
      config.json          model, data and training settings (rebuilds the model)
      tokenizer.model      sentencepiece vocabulary
      model.safetensors    weights of the best validation record so far, or the latest
                           with --no-keep-best (safetensors: loading never runs code)
      checkpoints/         training state for --resume: step-XXXXXXXX.pt, last K kept;
                           context.pt while the poem-context refiner is fitted (poemfit.py)
      chain.safetensors    the poem chain p(z_t | z_<t) over the lines' latents (poem.py),
                           fitted after the line VAE; absent: each line its own z
      context.safetensors  the poem-context refiner (context.py), fitted after the chain
      metrics.jsonl        one record per evaluation ("kept": its weights became the run's)
      curves.png           reconstruction, KL, beta and -ELBO against step
      summary.json         final test figures

Checkpoints hold plain tensors and numbers only and are read with
``torch.load(weights_only=True)``, which refuses any pickle that would build arbitrary
objects. Every file is written to a temporary name and renamed into place.
"""
import json
import os
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checkpoints import clean_temp_files
from .config import TrainConfig, flag
from .corpora import default_beta, default_poems, default_units, lines_per_poem
from .data import load_corpus
from .errors import UserError
from .files import atomic_write_bytes, atomic_write_text, read_json, write_json
from .model import TextVAE, VAEConfig
from .tokenizer import VOCAB, CharTokenizer, load_tokenizer, tokenizer_class

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.model", "model.safetensors"
METRICS, SUMMARY = "metrics.jsonl", "summary.json"
CURVES, INDEX, CHAIN = "curves.png", "index.safetensors", "chain.safetensors"
CONTEXT = "context.safetensors"


@dataclass
class Run:
    """A loaded run: the model in eval mode, its tokenizer and its saved config."""
    dir: Path
    model: TextVAE
    tokenizer: CharTokenizer
    config: dict
    chain: object = None   # poem.LatentChain where the run has one
    context: object = None # context.ContextRefiner where the run has one

    @property
    def form(self):
        from .data import Form
        return Form(**self.config["data"]["form"])

    @property
    def max_len(self):
        """Positions of a line: characters, or pieces (tokenizer.units)."""
        return self.model.cfg.max_len

    @property
    def lengths(self):
        return position_lengths(self.config)

    def need_characters(self, what):
        """Refuse, in one line, a feature that places characters at positions."""
        if self.tokenizer.units != "chars":
            raise UserError(f"{what} places characters at positions, and this run's "
                            f"positions hold word pieces (--units pieces)")

    # The Python API: each method is the command of the same name in generate.py.
    # Keyword arguments are those of SampleConfig (seed, noise, top_k, temperature, ...).

    def sample(self, n=4, **kw):
        """``n`` new lines written from z ~ N(0, I)."""
        from .decoding import SampleConfig
        from .sampling import sample
        return sample(self, n, SampleConfig(**kw))

    def poems(self, n=1, form=None, rhyme="pingshui", tones=False, acrostic="", **kw):
        """``n`` poems (lists of lines): four lines each, or a classical ``form``
        ('wujue', 'qijue', 'wulv', 'qilv') with rhyme and tones. generate.py's default
        is poetry.default_form: form='wujue', tones=True on a poem model of
        five-character lines."""
        from .decoding import SampleConfig
        from .sampling import poems
        from .poetry import PoemConfig, write_poems
        from .prosody import form_named
        sc = SampleConfig(**kw)
        if form is None:
            return list(poems(self, n, self.config["data"]["lines_per_poem"], sc,
                              heads=acrostic or None))
        return list(write_poems(self, PoemConfig(form_named(form), rhyme, tones, acrostic),
                                n, sc))

    def continue_poem(self, first, n=1, **kw):
        """``n`` poems that open with the line(s) ``first``, written on by the poem chain."""
        from .decoding import SampleConfig
        from .sampling import continued
        first = [first] if isinstance(first, str) else list(first)
        return list(continued(self, first, n, SampleConfig(**kw)))

    def reconstruct(self, lines, **kw):
        from .decoding import SampleConfig
        from .sampling import reconstruct
        return reconstruct(self, list(lines), sc=SampleConfig(**kw))

    def encode(self, lines):
        """(mu, logvar), each (len(lines), latent), of the encoder q(z|x)."""
        from .sampling import encode
        return encode(self, list(lines))

    def interpolate(self, a, b, steps=8, how="linear", **kw):
        """Lines along the path between lines a and b; or, where a and b are poems (lists
        of lines), poems whose line i walks between the poems' lines i."""
        from .decoding import SampleConfig
        from .sampling import interpolate, interpolate_poems
        if isinstance(a, (list, tuple)):
            return interpolate_poems(self, list(a), list(b), steps, how, sc=SampleConfig(**kw))
        return interpolate(self, a, b, steps, how, sc=SampleConfig(**kw))

    def complete(self, patterns, **kw):
        """Fill the '_' of each pattern, e.g. '白日__尽'."""
        from .decoding import SampleConfig
        from .sampling import complete
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
    """Line lengths in positions seen in training, from a run's config.json."""
    return config["data"]["positions"]


def save_run(out, tc, mc, tok, corpus):
    """The files a run needs before its first step; ``load_run`` reads them back."""
    from dataclasses import asdict
    tok.save(Path(out) / TOKENIZER)
    train = asdict(tc)
    for key in PATHS:
        train[key] = _portable(train[key], out)
    write_json(Path(out) / CONFIG, {
        "model": mc.to_dict(), "train": train,
        "data": {"corpus": corpus.name, "max_chars": corpus.max_chars,
                 "counts": {s: len(v) for s, v in corpus.splits.items()},
                 "skipped": corpus.skipped, "form": corpus.form.to_dict(),
                 "positions": tok.position_lengths(corpus),
                 "lines_per_poem": lines_per_poem(corpus.name)}})


def save_train_settings(out, **changes):
    """Change training settings in a run's config.json (the trainer's --minutes budget
    fixing max_steps); everything else in it stays as written."""
    update_config(out, lambda config: config["train"].update(changes))


def update_config(out, change):
    """Apply ``change`` (a function that edits the dict in place) to a run's config.json;
    everything else in it stays as written."""
    config = read_json(Path(out) / CONFIG)
    change(config)
    write_json(Path(out) / CONFIG, config)


# Paths in config.json are stored relative to the run folder, so a project folder can
# move or be shared with its data and runs; they are made absolute again on reading.
PATHS = ("corpus", "data_dir", "poems")


def _portable(path, run_dir):
    """An absolute path relative to the run folder; anything else (a recipe name such as
    'tang5', a path already relative) as it is."""
    if not Path(path).is_absolute():
        return path
    return os.path.relpath(path, Path(run_dir).resolve())


def _absolute(key, path, run_dir):
    """Back from config.json: data_dir is always a folder path; a corpus or --poems is
    a path only where one exists (else a recipe name, or none)."""
    p = Path(run_dir) / path
    if Path(path).is_absolute() or (key != "data_dir" and not p.exists()):
        return path
    return str(p.resolve())


def read_saved_config(run_dir):
    """A run's config.json, upgraded to this version's keys, paths made absolute."""
    config = read_json(Path(run_dir) / CONFIG)
    for section in ("model", "train", "data"):
        if section not in config:
            raise UserError(f"{Path(run_dir) / CONFIG} lacks its {section!r} section")
    config = upgrade_config(config)
    for key in PATHS:
        if key in config["train"]:
            config["train"][key] = _absolute(key, config["train"][key], run_dir)
    return config


def upgrade_config(config):
    """A config.json written by an earlier version, with the keys this version reads:
    each default is what runs of that time were trained with."""
    model, train, data = config["model"], config["train"], config["data"]
    for section in (train, data):          # "max_len" meant characters there
        if "max_len" in section:
            section["max_chars"] = section.pop("max_len")
    model.setdefault("enc_positions", False)   # before the encoder's position vectors
    train.setdefault("units", "chars")         # before word pieces
    train.setdefault("poems", "none")          # before the poem chain
    data.setdefault("positions", data["form"]["lengths"])  # before pieces: the same
    data.setdefault("lines_per_poem", 4)
    return config


def save_weights(run_dir, model, name=WEIGHTS):
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(run_dir) / name, st_save(state))


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
            implied = tuple(w if w is not None else g for w, g in zip(want, got))
            raise UserError(f"{where}: weights tensor {key} has shape {got} but config.json "
                            f"implies {implied} "
                            f"(vocab_size={cfg.vocab_size}, max_len={cfg.max_len}, "
                            f"latent={cfg.latent})")


def load_run(run_dir, device="cpu", poems=True):
    """The run in ``run_dir`` on ``device``, with its poem model where ``poems``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir} (train one with: python train.py)")
    if not run_dir.is_dir():
        raise UserError(f"not a run folder: {run_dir}")
    config = read_saved_config(run_dir)
    cfg = VAEConfig.from_dict(config["model"])
    tok = load_tokenizer(run_dir / TOKENIZER, config["train"]["units"])
    state = read_weights(run_dir / WEIGHTS)
    check_compatible(cfg, tok, state, run_dir)
    model = _loaded(TextVAE(cfg), state, run_dir / WEIGHTS)
    chain, context = poem_model(run_dir, config, cfg) if poems else (None, None)
    return Run(run_dir, model.to(device).eval(), tok, config, chain,
               context if context is None else context.to(device))


def poem_model(run_dir, config, cfg):
    """(chain, poem-context refiner) of a run, each None where it has none or where it was
    fitted to other line weights than the run's (said once on stderr): a line model
    trained on since, and stopped before its poem model was fitted again."""
    from .poemfit import tied, weights_digest
    parts = [k for k in ("chain", "context") if k in config]
    digest = weights_digest(run_dir) if parts else None
    stale = [k for k in parts if not tied(config.get(f"{k}_fit", {}), run_dir, digest)]
    if stale:
        print(f"warning: {run_dir}'s poem model was fitted to other line weights; writing "
              f"without it (python train.py --resume {run_dir} fits it again)", file=sys.stderr)
    chain = None if "chain" in stale else load_chain(run_dir, config)
    context = None if "context" in stale else load_context(run_dir, config, cfg)
    return chain, context


def load_chain(run_dir, config):
    """The run's poem chain (poem.py), or None where it has none."""
    from .poem import ChainConfig, LatentChain
    if "chain" not in config:
        return None
    chain = LatentChain(ChainConfig.from_dict(config["chain"]))
    return _loaded(chain, read_weights(Path(run_dir) / CHAIN), Path(run_dir) / CHAIN).eval()


def load_context(run_dir, config, cfg: VAEConfig):
    """The run's poem-context refiner (context.py), or None where it has none."""
    from .context import ContextConfig, ContextRefiner
    if "context" not in config:
        return None
    cref = ContextRefiner(cfg, ContextConfig.from_dict(config["context"]))
    return _loaded(cref, read_weights(Path(run_dir) / CONTEXT), Path(run_dir) / CONTEXT).eval()


def _loaded(module, state, path):
    """``module`` with the weights ``state`` read from ``path``; one clear line where they
    do not fit the architecture config.json describes."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{path} does not fit config.json: {first}") from None
    return module


def save_chain(run_dir, chain, figures):
    """Write the chain's weights, then its config (so config.json never names a chain
    whose weights are not there yet)."""
    save_weights(run_dir, chain, CHAIN)
    update_config(run_dir, lambda config: config.update(chain=chain.cfg.to_dict(),
                                                        chain_fit=figures))


def save_context(run_dir, cref, figures):
    """Write the poem-context refiner's weights, then its config, as ``save_chain``."""
    save_weights(run_dir, cref, CONTEXT)
    update_config(run_dir, lambda config: config.update(context=cref.cfg.to_dict(),
                                                        context_fit=figures))


# ---------------------------------------------------------------------------------------
# Opening the run folder: a new run, or a resumed one with its saved settings

# Settings a resumed run may change: where and how it runs, and how long. The rest
# (model, data, optimiser) would make the resumed run a different experiment.
RESUMABLE = {"device", "amp", "compile", "eval_every", "ckpt_every", "keep_ckpts",
             "skip_nonfinite", "iw_samples", "data_dir", "epochs", "min_steps", "max_steps",
             "minutes"}


def start_run(tc: TrainConfig, mc: VAEConfig, log=print):
    """A new run: corpus, tokenizer fitted on its training split, run folder written."""
    # Absolute here, so --resume and evaluate work from any directory; config.json stores
    # them relative to the run folder (run.py, PATHS).
    for key in ("corpus", "poems"):
        if Path(getattr(tc, key)).exists():
            setattr(tc, key, str(Path(getattr(tc, key)).resolve()))
    tc.data_dir = str(Path(tc.data_dir).resolve())
    # A poem model writes through the refiner: without one, auto means none, and asking
    # for one is refused before training, not after.
    if not mc.refiner_layers and tc.poems not in ("auto", "none"):
        raise UserError("the poem model (--poems) writes through the refiner: "
                        "--refiner-layers 0 needs --poems none")
    corpus = load_corpus(tc.corpus, tc.data_dir, tc.max_chars, tc.skip_bad_lines)
    out = Path(tc.out or Path("runs") / corpus.name)
    open_run_folder(out)
    # auto settings are resolved here and saved as what they resolved to
    tc.units = tc.units if tc.units != "auto" else default_units(tc.corpus, corpus.train)
    tc.vocab_size = tc.vocab_size or VOCAB[tc.units]
    tc.beta_max = tc.beta_max or default_beta(tc.corpus)
    tc.poems = tc.poems if tc.poems != "auto" else (
        default_poems(tc.corpus) if mc.refiner_layers else "none")
    tok = tokenizer_class(tc.units).train(corpus.train, tc.vocab_size)
    # One position a character, or a piece: as many as the longest line of any split takes
    mc.vocab_size, mc.max_len = tok.vocab_size, max(
        tok.longest(lines) for lines in corpus.splits.values())
    mc.__post_init__()
    save_run(out, tc, mc, tok, corpus)
    return out, tc, mc, tok, corpus


def _default(name, value):
    """The default of the TrainConfig or VAEConfig field ``name`` (``value`` if neither has one)."""
    for cls in (TrainConfig, VAEConfig):
        field = cls.__dataclass_fields__.get(name)
        if field is not None and field.default is not MISSING:
            return field.default
    return value


def reopen_run(folder, given, log=print, clean=True):
    """A run to resume: its saved settings, with the flags in ``given`` that may change
    applied (RESUMABLE) and any other flag that differs refused in one line. ``clean``:
    remove the temporary files of cut-short writes (rank 0 only: the folder is its)."""
    out = Path(folder)
    saved = read_saved_config(out)
    for name, value in given.items():
        # A setting newer than the run: the run was trained at its default.
        before = saved["train"].get(name, saved["model"].get(name, _default(name, value)))
        if name not in RESUMABLE and value != before and not _same_path(value, before):
            raise UserError(f"{flag(name)} cannot change when resuming (the run was trained "
                            f"with {before!r}); start a new run with --out instead")
    tc = TrainConfig(**{**saved["train"], **{k: v for k, v in given.items()
                                              if k in RESUMABLE}})
    mc = VAEConfig.from_dict(saved["model"])
    corpus = load_corpus(tc.corpus, tc.data_dir, saved["data"]["max_chars"], tc.skip_bad_lines)
    removed = clean_temp_files(out) if clean else 0
    if removed:
        log(f"removed {removed} temporary file(s) left by an interrupted write")
    return out, tc, mc, load_tokenizer(out / TOKENIZER, tc.units), corpus


def _same_path(a, b):
    return isinstance(a, str) and isinstance(b, str) and Path(a).exists() and \
        Path(a).resolve() == Path(b).resolve()


def write_curves(out, beta, log=print):
    """curves.png from metrics.jsonl (and summary.json once there is one), with the KL
    weight ``beta`` (step -> weight). A picture that fails to draw is reported, never
    allowed to stop a run."""
    from .plots import curves
    summary = read_json(Path(out) / SUMMARY) if (Path(out) / SUMMARY).exists() else None
    try:
        atomic_write_bytes(Path(out) / CURVES, curves(read_metrics(out), beta, summary,
                                                      title=Path(out).name))
    except Exception as e:  # noqa: BLE001 - any plotting failure; the run goes on
        log(f"warning: could not draw {Path(out) / CURVES}: {type(e).__name__}: {e}")


def weights_step(records):
    """The step whose weights the run folder holds: the last record marked ``kept``
    (keep_best), else the last record's."""
    kept = [r["step"] for r in records if r.get("kept")] or [r["step"] for r in records]
    return kept[-1] if kept else None


def weights_exist(run_dir):
    return (Path(run_dir) / WEIGHTS).exists()


def write_summary(run_dir, summary):
    write_json(Path(run_dir) / SUMMARY, summary)


def rewrite_metrics(run_dir, records):
    """metrics.jsonl holding exactly ``records`` (a resumed run drops what it replays)."""
    atomic_write_text(Path(run_dir) / METRICS,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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
