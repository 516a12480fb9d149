"""Training: data in, run folder out; resumable from any checkpoint.

The loop knows the model only through ``model.loss(idx, beta, free_bits)``. Everything
that decides the course of a run is saved in each checkpoint (weights, optimizer, step,
epoch and batch position in the shuffled order, RNG state), so ``--resume`` continues
exactly where the run stopped: on the CPU with a fixed seed, a resumed run has the same
losses as one that never stopped. SIGINT / SIGTERM save a checkpoint and exit with 130.
"""
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .anneal import KLSchedule
from .data import load_corpus
from .errors import UserError
from .evaluate import active_units
from .io import atomic_write_text
from .model import TextVAE, VAEConfig
from .run import (CKPT_DIR, CONFIG, METRICS, SUMMARY, TOKENIZER, append_metrics,
                  load_checkpoint, read_json, read_metrics, save_checkpoint, save_config,
                  save_weights)
from .tokenizer import PAD, CharTokenizer

INTERRUPTED = 130


@dataclass
class TrainConfig:
    corpus: str = "tang5"         # a recipe name (corpora/) or the path of a UTF-8 file
    data_dir: str = "data"        # where recipes write prepared corpora
    out: str = ""                 # run folder; default runs/<corpus name>
    vocab_size: int = 4000        # characters kept (+4 specials); rarer ones become <unk>
    max_len: int = 0              # 0: the longest training line (at most 64)
    epochs: float = 6.0           # passes over the training split (~10 min on 2 CPU cores)
    batch_size: int = 256
    lr: float = 2e-3              # Adam; cosine-decayed to lr/10 over the run
    weight_decay: float = 0.0
    grad_clip: float = 1.0        # max global grad norm; 0 disables
    kl_schedule: str = "cyclical"
    beta_max: float = 0.5         # < 1 trades ~1 nat of IW-NLL for 3x the reconstruction
                                  # accuracy; at 1 this decoder keeps only ~6 nats in z
    kl_warmup: int = 2000         # linear / sigmoid ramp length (steps)
    kl_cycles: int = 2            # cyclical: cycles over the run
    kl_ratio: float = 0.5         # cyclical: share of a cycle spent ramping
    free_bits: float = 0.1        # per-dimension KL floor (nats); keeps every dimension in use
    eval_every: int = 500         # steps between validation records in metrics.jsonl
    ckpt_every: int = 500         # steps between checkpoints
    keep_ckpts: int = 2           # checkpoints kept on disk
    iw_samples: int = 100         # k for the final test IW-NLL (0 skips it)
    seed: int = 0
    device: str = "auto"          # auto: cuda, then mps, then cpu
    amp: str = "auto"             # bf16 autocast: auto = on for CUDA and for CPUs with
                                  # native bf16 matmul (2x faster here), "off" = fp32
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/inf instead of stopping
    skip_bad_lines: bool = False  # drop corpus lines that are not UTF-8 instead of failing

    def __post_init__(self):
        positive = ("vocab_size", "batch_size", "eval_every", "ckpt_every", "keep_ckpts")
        for name in positive:
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise UserError(f"--epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.free_bits < 0 or self.iw_samples < 0 or self.max_len < 0:
            raise UserError("--free-bits, --iw-samples and --max-len must be >= 0")


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r} (auto, cpu, cuda, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


def use_amp(amp, device):
    """Whether to train under bf16 autocast (the loss itself is always fp32)."""
    if amp not in ("auto", "bf16", "off"):
        raise UserError(f"--amp must be auto, bf16 or off, got {amp!r}")
    if amp != "auto":
        return amp == "bf16"
    if device.type == "cuda":
        return True
    # CPUs with AVX-512 BF16 / AMX run bf16 matrix products at about twice fp32 speed;
    # elsewhere bf16 is emulated and slower, so stay in fp32.
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        torch.ops.mkldnn._is_mkldnn_bf16_supported()


class StopRequested:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now (checkpoints are atomic)
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def lr_at(step, total, base):
    """Cosine decay from base to base/10 (keeps late steps from undoing the KL balance)."""
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))))


@torch.no_grad()
def validate(model, idx, beta, batch_size=1024):
    model.eval()
    rec = kl = hits = 0.0
    mus = []
    for i in range(0, len(idx), batch_size):
        batch = idx[i:i + batch_size]
        terms = model.loss(batch, beta)
        rec += terms["rec"].item() * len(batch)
        kl += terms["kl"].item() * len(batch)
        guess = model.decode(terms["mu"]).argmax(-1)
        hits += float(((guess == batch) & (batch != PAD)).sum())
        mus.append(terms["mu"].float())
    model.train()
    mu = torch.cat(mus)
    n = len(idx)
    return {"rec": rec / n, "kl": kl / n, "nelbo": (rec + kl) / n,
            "acc_mu": hits / float((idx != PAD).sum()),
            "au": active_units(mu)}


def train(tc: TrainConfig, mc: VAEConfig, resume=None, log=print):
    """Train (or resume) a run; returns the run folder. See the module docstring."""
    if resume:
        out = Path(resume)
        saved = read_json(out / CONFIG)
        tc = TrainConfig(**{**saved["train"], **_overrides(tc)})
        mc = VAEConfig.from_dict(saved["model"])
    torch.manual_seed(tc.seed)
    device = pick_device(tc.device)
    # Absolute paths in config.json, so --resume and evaluate work from any directory.
    if Path(tc.corpus).exists():
        tc.corpus = str(Path(tc.corpus).resolve())
    tc.data_dir = str(Path(tc.data_dir).resolve())
    corpus = load_corpus(tc.corpus, tc.data_dir, tc.max_len, tc.skip_bad_lines)
    out = Path(tc.out or Path("runs") / corpus.name) if not resume else Path(resume)

    if resume:
        tok = CharTokenizer.load(out / TOKENIZER)
        config = saved
        state, ckpt_path = load_checkpoint(out)
        log(f"resuming {out} from {ckpt_path.name} (step {state['step']})")
    else:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"run folder {out} already exists; continue it with "
                            f"--resume {out}, or pick another with --out")
        tok = CharTokenizer.train(corpus.train, tc.vocab_size)
        mc.vocab_size, mc.max_len = tok.vocab_size, corpus.max_len
        mc.__post_init__()
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / TOKENIZER)
        config = {"model": mc.to_dict(), "train": asdict(tc),
                  "data": {"corpus": corpus.name, "max_len": corpus.max_len,
                           "counts": {s: len(v) for s, v in corpus.splits.items()},
                           "skipped": corpus.skipped, "form": corpus.form().to_dict(),
                           "lines_per_poem": 1 if corpus.name.startswith("quatrain") else 4}}
        save_config(out, config)
        state = None
    for why, count in corpus.skipped.items():
        if count:
            log(f"skipped {count} lines of {corpus.name} ({why.replace('_', ' ')}; "
                f"the model length is {corpus.max_len})")

    train_idx = torch.from_numpy(tok.encode_batch(corpus.train, corpus.max_len))
    valid_lines = corpus.splits["valid"] or corpus.train[:1000]
    valid_idx = torch.from_numpy(tok.encode_batch(valid_lines, corpus.max_len)).to(device)
    n = len(train_idx)
    per_epoch = math.ceil(n / tc.batch_size)
    total = max(1, math.ceil(tc.epochs * per_epoch))
    schedule = KLSchedule(tc.kl_schedule, tc.beta_max, total, tc.kl_warmup, tc.kl_cycles,
                          tc.kl_ratio)

    model = TextVAE(mc).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step, epoch, batch_pos = 0, 0, 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            step, epoch, batch_pos = state["step"], state["epoch"], state["batch_pos"]
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{ckpt_path} does not fit {out / CONFIG} "
                            f"({str(e).strip().splitlines()[-1][:160]})") from None
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        # Records written after that checkpoint belong to a course the resumed run
        # replays; drop them so metrics.jsonl has each step once.
        kept = [r for r in read_metrics(out) if r.get("step", 0) <= step]
        atomic_write_text(out / METRICS, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                 for r in kept))

    def checkpoint():
        save_weights(out, model)
        ckpt = {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                "epoch": epoch, "batch_pos": batch_pos, "rng": torch.get_rng_state()}
        if device.type == "cuda":
            ckpt["cuda_rng"] = torch.cuda.get_rng_state()
        return save_checkpoint(out, ckpt, tc.keep_ckpts)

    use_bf16 = use_amp(tc.amp, device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"corpus {corpus.name}: {n} train lines, length {corpus.max_len}, "
        f"vocab {tok.vocab_size}; model {n_params / 1e6:.2f}M params on {device}; "
        f"{total} steps ({tc.epochs:g} epochs of {per_epoch})")
    model.train()
    bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr)
    t0, seen0, lines_per_s = time.time(), 0, 0.0
    with StopRequested() as stop:
        while step < total:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed + epoch))
            while batch_pos < per_epoch and step < total:
                batch = train_idx[order[batch_pos * tc.batch_size:
                                        (batch_pos + 1) * tc.batch_size]].to(device)
                beta = schedule(step)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, tc.lr)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    terms = model.loss(batch, beta, tc.free_bits)
                if not torch.isfinite(terms["loss"]):
                    if not tc.skip_nonfinite:
                        bar.close()
                        raise UserError(f"loss is {terms['loss'].item()} at step {step}; "
                                        f"stopped, last good checkpoint kept in {out / CKPT_DIR}"
                                        " (--skip-nonfinite skips such steps)")
                    opt.zero_grad(set_to_none=True)
                else:
                    opt.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    if tc.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    opt.step()
                step, batch_pos = step + 1, batch_pos + 1
                seen0 += len(batch)
                bar.update(1)
                if step % 20 == 0:
                    lines_per_s = seen0 / (time.time() - t0)
                    bar.set_postfix(loss=f"{terms['loss'].item():.2f}",
                                    rec=f"{terms['rec'].item():.2f}",
                                    kl=f"{terms['kl'].item():.2f}", beta=f"{beta:.2f}",
                                    lines_s=f"{lines_per_s:.0f}", refresh=False)
                if step % tc.eval_every == 0 or step == total:
                    rec = {"step": step, "epoch": epoch, "beta": beta,
                           "lines_per_s": round(lines_per_s, 1),
                           "elapsed_s": round(time.time() - t0, 1),
                           **{f"valid_{k}": v for k, v in validate(model, valid_idx, beta).items()}}
                    append_metrics(out, rec)
                if step % tc.ckpt_every == 0 or step == total:
                    checkpoint()
                if stop.signal is not None:
                    bar.close()
                    path = checkpoint()
                    name = signal.Signals(stop.signal).name
                    print(f"{name}: saved {path} at step {step}; continue with: "
                          f"python train.py --resume {out}", file=sys.stderr)
                    sys.exit(INTERRUPTED)
            if batch_pos >= per_epoch:
                epoch, batch_pos = epoch + 1, 0
    bar.close()
    log(f"trained {step} steps in {time.time() - t0:.0f} s; weights in {out}")
    return out


def _overrides(tc):
    """Flags given on the command line for a resumed run (only those differing from defaults)."""
    defaults = TrainConfig()
    allowed = {"device", "eval_every", "ckpt_every", "keep_ckpts", "skip_nonfinite",
               "iw_samples", "data_dir"}
    return {f.name: getattr(tc, f.name) for f in fields(tc)
            if f.name in allowed and getattr(tc, f.name) != getattr(defaults, f.name)}


def finish(out, log=print):
    """Evaluate a finished run on its test split and write summary.json.

    A corpus too small to have test lines (a file of a few dozen lines: 1% goes to test)
    is evaluated on its validation split, or else on its training split.
    """
    from .evaluate import evaluate_split, format_table
    from .io import write_json
    from .run import load_run
    run = load_run(out)
    counts = run.config["data"]["counts"]
    split = next((s for s in ("test", "valid") if counts.get(s)), "train")
    t0 = time.time()
    res = evaluate_split(run, split, max_lines=0 if split != "train" else 1000,
                         iw_samples=run.config["train"]["iw_samples"])
    res["eval_s"] = round(time.time() - t0, 1)
    hist = read_metrics(out)
    summary = {**res,
               "steps": hist[-1]["step"] if hist else None,
               "train_s": hist[-1]["elapsed_s"] if hist else None}
    write_json(Path(out) / SUMMARY, summary)
    log(format_table(res))
    return summary
