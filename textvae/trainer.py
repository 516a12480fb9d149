"""Training: data in, run folder out; resumable from any checkpoint.

    train(tc, mc)  ->  open (or reopen) the run folder  ->  Trainer(...).run()

The loop knows the model only through ``model.loss(idx, beta, free_bits)`` and the
schedules (learning rate, KL weight). Everything that decides the course of a run is
saved in each checkpoint (weights, optimizer, step, epoch and batch position in the
shuffled order, RNG state, training time so far), so ``--resume`` continues exactly
where the run stopped: on the CPU with a fixed seed, a resumed run has the same losses
as one that never stopped. SIGINT / SIGTERM save a checkpoint and exit with 130.

Under torchrun (distributed.py) each process trains on its share of every global batch,
DistributedDataParallel averages the gradients, and rank 0 alone writes the run folder.
"""
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .anneal import KLSchedule
from .config import TrainConfig, flag
from .corpora import default_beta, default_units
from .data import load_corpus
from .distributed import Group, shard
from .errors import UserError
from .evaluate import active_units
from .files import atomic_write_bytes, atomic_write_text, read_json
from .generate import SampleConfig, write_ids
from .model import TextVAE, VAEConfig
from .run import (CKPT_DIR, CURVES, METRICS, SUMMARY, WEIGHTS, append_metrics,
                  clean_temp_files, has_checkpoint, load_checkpoint, open_run_folder,
                  position_lengths, read_metrics, read_saved_config, save_checkpoint,
                  save_run, save_train_settings, save_weights)
from .tokenizer import PAD, VOCAB, load_tokenizer, tokenizer_class
from .tokens import TokenIds, cache_file, epoch_order

INTERRUPTED = 130
# Steps between the loop's looks at device values (a non-finite loss, a stop on another
# rank): each look waits for the device, so it is not done every step.
SYNC_EVERY = 20
# A CUDA run of at least this many steps compiles its step (--compile auto): the ~30 s
# of compiling is then paid back by steps ~15 ms shorter (H100, tang5's default model).
COMPILE_FROM_STEPS = 2000
# Settings a resumed run may change: where and how it runs, and how long. The rest
# (model, data, optimiser) would make the resumed run a different experiment.
RESUMABLE = {"device", "amp", "compile", "eval_every", "ckpt_every", "keep_ckpts",
             "skip_nonfinite", "iw_samples", "data_dir", "epochs", "min_steps", "max_steps",
             "minutes"}
# --minutes is first fitted at the second of these steps, from the time per step since
# the first: past start-up (and CUDA compiling), early enough that the schedules built
# for the planned length have barely begun; then again at every validation record.
BUDGET_PROBE = (10, 50)


def resolve_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise UserError("--device mps asked for, but torch sees no Apple GPU")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported --device {name!r} (auto, cpu, cuda, cuda:N, mps)")
    return device


def use_amp(amp, device):
    """Whether to train under bf16 autocast (the loss itself is always fp32)."""
    if amp not in ("auto", "bf16", "off"):
        raise UserError(f"--amp must be auto, bf16 or off, got {amp!r}")
    if amp != "auto":
        return amp == "bf16"
    if device.type == "cuda":
        # Ampere and later run bf16 at tensor-core speed; older GPUs would emulate it,
        # so they train in fp32 (TF32 is not available there either).
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # Only CPUs with AMX tiles run bf16 matrix products faster than fp32 (2x on the
    # first wave's machine); with AVX-512 BF16 alone they ran at 99 against 153 GFLOP/s
    # fp32 on ours, and without either bf16 is emulated.
    return device.type == "cpu" and _cpu_has("amx_bf16")


def use_compile(how, device, steps, distributed):
    """Whether to compile the training step (--compile): see COMPILE_FROM_STEPS."""
    if how not in ("auto", "on", "off"):
        raise UserError(f"--compile must be auto, on or off, got {how!r}")
    if how == "auto":
        # Under torchrun the step is DDP's; compiling it is untested here, so not automatic.
        return device.type == "cuda" and steps >= COMPILE_FROM_STEPS and not distributed
    return how == "on"


def compiled(loss_fn):
    """``loss_fn`` compiled by torch.compile. On a GPU, "reduce-overhead" replays the whole
    forward and backward as CUDA graphs: the default model's step is launch-bound there
    (the same 23 ms at batch 256 and 4,096 on an H100), and graphs took it to 4 ms. One
    graph per batch shape (dynamic=False): a run has two, the full batch and an epoch's
    last. On a CPU compiling gains 8% a step (217 against 237 ms) for 39 s of compiling."""
    return torch.compile(loss_fn, mode="reduce-overhead", dynamic=False)


class CompiledOrPlain:
    """The compiled loss while compiling works; after a failure, the plain one. Compiling
    needs a C++ compiler or Triton and can fail where eager code runs: a run must not
    stop for an optimisation. The forward pass compiles at its first call (a failure is
    caught here), the backward at its first use (caught in Trainer.train_step); either
    way the step is taken again, plain, before the optimiser has moved."""

    def __init__(self, loss_fn, log=print):
        self.plain, self.fn, self.log = loss_fn, compiled(loss_fn), log

    @property
    def compiled(self):
        return self.fn is not self.plain

    def give_up(self, error):
        why = (str(error).strip().splitlines() or [""])[0][:160]
        self.log(f"warning: torch.compile failed ({type(error).__name__}: {why}); "
                 "training on without it (--compile off skips the attempt)")
        self.fn = self.plain

    def __call__(self, *args):
        if self.compiled:
            try:
                return self.fn(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure; eager goes on
                self.give_up(e)
        return self.fn(*args)


def _cpu_has(flag_name):
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag_name in line.split() for line in f)
    except OSError:
        return False


class StopRequested:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        # A second Ctrl-C: stop now (checkpoints are atomic). Only the same signal again:
        # torchrun passes a Ctrl-C on to its workers as SIGTERM, after the SIGINT the
        # terminal already sent them.
        if self.signal == signum:
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def lr_at(step, total, base):
    """Cosine decay from base to base/10 (keeps late steps from undoing the KL balance)."""
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))))


@torch.no_grad()
def validate(model, idx, beta, lengths, batch_size=1024):
    """Validation -ELBO terms and accuracy from mu through the full decoding path (the
    same figure as ``evaluate``'s acc_mu)."""
    model.eval()
    rec = kl = ref = hits = 0.0
    mus = []
    for i in range(0, len(idx), batch_size):
        batch = idx[i:i + batch_size]
        terms = model.loss(batch, beta)
        rec += terms["rec"].item() * len(batch)
        kl += terms["kl"].item() * len(batch)
        ref += terms["ref"].item() * len(batch) if "ref" in terms else 0.0
        guess = write_ids(model, lengths, terms["mu"], 0.0, SampleConfig()).to(batch.device)
        hits += float(((guess == batch) & (batch != PAD)).sum())
        mus.append(terms["mu"].float())
    model.train()
    n = len(idx)
    return {"rec": rec / n, "kl": kl / n, "nelbo": (rec + kl) / n, "ref": ref / n,
            "acc_mu": hits / float((idx != PAD).sum()), "au": active_units(torch.cat(mus))}


# ---------------------------------------------------------------------------------------
# Opening the run folder: a new run, or a resumed one with its saved settings

def start_run(tc: TrainConfig, mc: VAEConfig, log=print):
    """A new run: corpus, tokenizer fitted on its training split, run folder written."""
    # Absolute here, so --resume and evaluate work from any directory; config.json stores
    # them relative to the run folder (run.py, PATHS).
    if Path(tc.corpus).exists():
        tc.corpus = str(Path(tc.corpus).resolve())
    tc.data_dir = str(Path(tc.data_dir).resolve())
    corpus = load_corpus(tc.corpus, tc.data_dir, tc.max_len, tc.skip_bad_lines)
    out = Path(tc.out or Path("runs") / corpus.name)
    open_run_folder(out)
    # auto settings are resolved here and saved as what they resolved to
    tc.units = tc.units if tc.units != "auto" else default_units(tc.corpus, corpus.train)
    tc.vocab_size = tc.vocab_size or VOCAB[tc.units]
    tc.beta_max = tc.beta_max or default_beta(tc.corpus)
    tok = tokenizer_class(tc.units).train(corpus.train, tc.vocab_size)
    # One position a character, or a piece: as many as the longest line of any split takes
    mc.vocab_size, mc.max_len = tok.vocab_size, max(
        tok.longest(lines) for lines in corpus.splits.values())
    mc.__post_init__()
    save_run(out, tc, mc, tok, corpus)
    return out, tc, mc, tok, corpus


def reopen_run(folder, given, log=print, clean=True):
    """A run to resume: its saved settings, with the flags in ``given`` that may change
    applied (RESUMABLE) and any other flag that differs refused in one line. ``clean``:
    remove the temporary files of cut-short writes (rank 0 only: the folder is its)."""
    out = Path(folder)
    saved = read_saved_config(out)
    for name, value in given.items():
        before = saved["train"].get(name, saved["model"].get(name, value))
        if name not in RESUMABLE and value != before and not _same_path(value, before):
            raise UserError(f"{flag(name)} cannot change when resuming (the run was trained "
                            f"with {before!r}); start a new run with --out instead")
    tc = TrainConfig(**{**saved["train"], **{k: v for k, v in given.items()
                                              if k in RESUMABLE}})
    mc = VAEConfig.from_dict(saved["model"])
    corpus = load_corpus(tc.corpus, tc.data_dir, saved["data"]["max_len"], tc.skip_bad_lines)
    removed = clean_temp_files(out) if clean else 0
    if removed:
        log(f"removed {removed} temporary file(s) left by an interrupted write")
    return out, tc, mc, load_tokenizer(out / "tokenizer.model", tc.units), corpus


def _same_path(a, b):
    return isinstance(a, str) and isinstance(b, str) and Path(a).exists() and \
        Path(a).resolve() == Path(b).resolve()


def train(tc: TrainConfig, mc: VAEConfig, resume=None, given=None, log=print):
    """Train a new run, or resume the run folder ``resume``; returns the folder.

    ``given``: the settings the user typed (flag name -> value), checked on resume.
    """
    # Flush denormal floats to zero. Late in a run tiny weights and Adam moments make
    # denormals, which the CPU handles ~100x slower: steps went from 0.22 to 0.30 s.
    # Set before torch starts its worker threads, which inherit the setting.
    torch.set_flush_denormal(True)
    torch.manual_seed(tc.seed)
    group = Group()
    group.start()
    log = log if group.main else _quiet
    try:
        out = _train_here(group, tc, mc, resume, given or {}, log)
        group.wait_for_all()
    finally:
        group.stop()
    return out


def _train_here(group, tc, mc, resume, given, log):
    """This rank's share of ``train``. Its trainer (and the DistributedDataParallel
    wrapper that holds the process group) is gone when it returns, so ``Group.stop``
    really closes the group: one left for the interpreter's exit to destroy aborted the
    process about once in ten runs (gloo's threads were still running)."""
    out, tc, mc, tok, corpus = open_on_every_rank(group, tc, mc, resume, given, log)
    for why, count in corpus.skipped.items():
        if count:
            log(f"skipped {count} lines of {corpus.name} ({why.replace('_', ' ')}; "
                f"the model length is {corpus.max_len})")
    trainer = Trainer(tc, TextVAE(mc), tok, corpus, out, log, group)
    if resume:
        trainer.restore()
    trainer.run()
    return out


def open_on_every_rank(group, tc, mc, resume, given, log):
    """Rank 0 creates (or checks and reopens) the run folder; the other ranks then read
    the settings it saved, so every rank builds the same model from the same config."""
    opened = {}

    def on_rank0():
        opened["run"] = reopen_run(resume, given, log) if resume else start_run(tc, mc, log)
        return str(opened["run"][0])
    out = group.first(on_rank0)
    if not group.main:
        opened["run"] = reopen_run(out, given if resume else {}, log, clean=False)
    return opened["run"]


def _quiet(*args, **kwargs):
    pass


# ---------------------------------------------------------------------------------------
# The loop

class Trainer:
    """One run's model, optimiser, data and schedules, and the loop over them."""

    def __init__(self, tc, model, tok, corpus, out, log=print, group=None):
        self.tc, self.out, self.log = tc, Path(out), log
        self.group = group or Group()
        self.device = self.group.place(resolve_device(tc.device))
        self.model = model.to(self.device)
        self.loss_of = self.model.loss
        if self.group.active:  # same initial weights everywhere: DDP copies rank 0's
            self.loss_of = torch.nn.parallel.DistributedDataParallel(
                _Loss(self.model), device_ids=[self.device] if self.device.type == "cuda"
                else None)
            torch.manual_seed(_rank_seed(tc.seed, self.group.rank, 0))  # own dropout
        # Fused Adam: one kernel for all parameters on a GPU instead of a dozen per tensor.
        self.opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                    fused=self.device.type == "cuda")
        self.bf16 = use_amp(tc.amp, self.device)
        # The training ids: encoded once into a uint16 file in the user's cache (rank 0
        # writes it), read a batch at a time on a CPU, held on the device on a GPU.
        L = model.cfg.max_len  # positions: corpus.max_len characters, or fewer pieces
        ids = self.group.first(lambda: str(cache_file(corpus, tok, L)))
        self.data = TokenIds(ids, L, self.device)
        valid = corpus.splits["valid"] or corpus.train.head(1000)
        self.valid = torch.from_numpy(tok.encode_batch(valid, L)).to(self.device)
        # for validation's decoding: counted once, by save_run, into config.json
        self.lengths = position_lengths(read_saved_config(out))
        self.batch = tc.lines_per_step(L)
        self.per_epoch = tc.steps_per_epoch(len(self.data), L)
        self.total = tc.total_steps(self.per_epoch)
        self.beta = kl_schedule(self.tc, self.total)
        # --minutes binds a run that did not set its length (a budget that has fitted
        # one writes it as max_steps, so a resumed run keeps it and refits no more).
        self.budget_s = tc.minutes * 60 if not tc.max_steps else 0
        self.probe = None  # (step, time) when this process passed BUDGET_PROBE[0]
        self.cycle_len = self.total / tc.kl_cycles  # as planned, before any budget cut
        if use_compile(tc.compile, self.device, self.total, self.group.active):
            self.loss_of = CompiledOrPlain(self.loss_of, log)
        self.step = self.epoch = self.batch_pos = 0
        self.sums, self.n_sums = torch.zeros(2, device=self.device), 0  # rec, kl since
        # the last record, summed on the device: no host sync until the record
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)  # a non-finite
        self.looked = 0                       # loss since step ``looked`` (check_finite)
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self.best = math.inf  # the lowest valid_loss of a kept record (keep_best)
        self.corpus_line = (f"corpus {corpus.name}: {len(self.data)} train lines, length "
                            f"{L} {tok.unit}s, vocab {tok.vocab_size}")

    def restore(self):
        """Continue from the newest checkpoint; a run killed before its first checkpoint
        starts again from step 0 with its saved settings."""
        if not has_checkpoint(self.out):
            self.log(f"{self.out} has no checkpoint yet; starting it from step 0")
            if self.group.main:
                atomic_write_text(self.out / METRICS, "")
            return
        state, path = load_checkpoint(self.out)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{path} does not fit {self.out / 'config.json'} "
                            f"({str(e).strip().splitlines()[-1][:160]})") from None
        self.elapsed = float(state.get("elapsed_s", 0.0))
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        if not self.group.main:  # rank 0's RNG state is the one saved
            torch.manual_seed(_rank_seed(self.tc.seed, self.group.rank, self.step))
            return
        # Records written after that checkpoint belong to a course the resumed run
        # replays; drop them so metrics.jsonl has each step once.
        kept = [r for r in read_metrics(self.out) if r.get("step", 0) <= self.step]
        atomic_write_text(self.out / METRICS, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                      for r in kept))
        self.best = min((valid_loss(r) for r in kept if r.get("kept")), default=math.inf)
        self.log(f"resuming {self.out} from {path.name} (step {self.step})")

    def checkpoint(self):
        if not self.group.main:
            return None
        # With keep_best record() writes the weights, when a step's are the best yet; a
        # run stopped before its first record still gets some, so it can be used.
        if not self.tc.keep_best or not (self.out / WEIGHTS).exists():
            save_weights(self.out, self.model)
        state = {"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                 "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                 "rng": torch.get_rng_state(), "elapsed_s": self.seconds()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return save_checkpoint(self.out, state, self.tc.keep_ckpts)

    def seconds(self):
        """Training seconds so far, across every resume."""
        return self.elapsed + time.time() - self.t0

    def train_step(self, batch, weight=1.0):
        """One optimiser step; returns the loss terms (None if a non-finite step was skipped).
        ``weight``: this rank's share of the global batch, times the number of ranks."""
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.total, self.tc.lr)
        # beta as a device tensor: a compiled step takes it as an input, not a constant
        # to recompile for at every new value.
        beta = torch.full((), self.beta(self.step), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.loss_of(batch, beta, self.tc.free_bits)
        self.opt.zero_grad(set_to_none=True)
        bad = ~torch.isfinite(terms["loss"].detach())
        if self.tc.skip_nonfinite:  # deciding each step needs the host: only when asked
            if self.group.any(bad):
                return None
        else:  # noted on the device; check_finite looks before any record or checkpoint
            self.bad |= bad
        try:
            (terms["loss"] * weight).backward()
        except Exception as e:  # noqa: BLE001 - re-raised unless the compiled backward
            if not (isinstance(self.loss_of, CompiledOrPlain) and self.loss_of.compiled):
                raise
            self.loss_of.give_up(e)
            self.opt.zero_grad(set_to_none=True)
            return self.train_step(batch, weight)  # once: the loss is plain now
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.opt.step()
        return terms

    def run(self):
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"{self.corpus_line}; model {n_params / 1e6:.2f}M params on {self.device}; "
                 f"{self.total} steps of {self.batch} lines ({self.total / self.per_epoch:.3g} "
                 f"epochs of {self.per_epoch})")
        self.model.train()
        bar = tqdm(total=self.total, initial=self.step, desc="train", unit="step",
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   disable=not self.group.main)
        self.t0, seen = time.time(), 0
        with StopRequested() as stop:
            try:
                while self.step < self.total:
                    order = epoch_order(len(self.data), self.tc.seed, self.epoch, self.device)
                    while self.batch_pos < self.per_epoch and self.step < self.total:
                        b = self.batch_pos * self.batch
                        ids = order[b:b + self.batch]               # the global batch
                        mine, weight = shard(ids, self.group)
                        terms = self.train_step(self.data.batch(mine), weight)
                        self.step, self.batch_pos, seen = self.step + 1, self.batch_pos + 1, \
                            seen + len(ids)
                        bar.update(1)
                        self.fit_budget(bar)
                        self.after_step(terms, bar, seen / (time.time() - self.t0), stop)
                    if self.batch_pos >= self.per_epoch:
                        self.epoch, self.batch_pos = self.epoch + 1, 0
            finally:
                bar.close()
        kept = weights_step(read_metrics(self.out)) if self.group.main else self.step
        which = f" (step {kept}'s: the lowest validation loss)" if kept != self.step else ""
        self.log(f"trained {self.step} steps in {self.seconds():.0f} s; weights{which} in "
                 f"{self.out}")

    def fit_budget(self, bar):
        """--minutes: at step BUDGET_PROBE[1], and again at every validation record, if
        the steps left would not fit in the budget at the pace since BUDGET_PROBE[0]
        (records and checkpoints included), train as many as fit. Only ever fewer: the
        pace of a shared machine drifts, and a first guess ran tang7 5% over. The new length
        is saved in config.json as max_steps, so a resume (which refits no more), the
        plotted KL schedule and a reader of the config all see the run that was trained."""
        first, last = BUDGET_PROBE
        if self.step == first:
            self.probe = (self.step, time.time())
        due = self.step == last or (self.step > last and self.step % self.tc.eval_every == 0)
        if not (due and self.probe and self.budget_s) or self.step >= self.total:
            return
        per_step = (time.time() - self.probe[1]) / (self.step - self.probe[0])
        left = self.budget_s * 0.97 - self.seconds()  # 3%: the last record and checkpoint
        fits = self.group.smallest(max(self.step, self.step + int(left / per_step)))
        if fits >= self.total:
            return
        # A cut run keeps the planned length of a KL cycle, in fewer cycles: squeezed
        # into 1,657 steps, tang7's two cycles left it accuracy from mu 0.61; one cycle
        # in 1,504 steps gave 0.83 (3,000 steps, two cycles: 0.93).
        cycles = max(1, round(fits / self.cycle_len))
        self.log(f"\n--minutes {self.tc.minutes:g}: at {per_step:.2f} s a step, {fits} of "
                 f"the planned {self.total} steps fit, in {cycles} KL cycle(s) (--minutes 0 "
                 f"trains them all)")
        self.total = self.tc.max_steps = fits
        self.tc.kl_cycles = cycles
        self.beta = kl_schedule(self.tc, self.total)
        bar.total = fits
        if self.group.main:
            save_train_settings(self.out, max_steps=fits, kl_cycles=cycles)

    def after_step(self, terms, bar, lines_per_s, stop):
        """Progress bar, validation record, checkpoint, and a requested stop."""
        if terms is not None:
            self.sums += torch.stack([terms["rec"].detach().float(), terms["kl"].detach().float()])
            self.n_sums += 1
        if self.step % SYNC_EVERY == 0 and terms is not None:  # .item() waits: a look
            bar.set_postfix(loss=f"{terms['loss'].item():.2f}", rec=f"{terms['rec'].item():.2f}",
                            kl=f"{terms['kl'].item():.2f}",
                            ref=f"{terms['ref'].item():.2f}" if "ref" in terms else "-",
                            beta=f"{self.beta(self.step):.2f}", lines_s=f"{lines_per_s:.0f}",
                            refresh=False)
        last = self.step == self.total
        record = last or self.step % self.tc.eval_every == 0
        save = last or self.step % self.tc.ckpt_every == 0
        look = record or save or self.step % SYNC_EVERY == 0
        # Alone, a signal is a Python flag, free to read each step; with other ranks, all
        # must agree to stop at the same step, which is a collective: only when looking.
        stopping = (look or not self.group.active) and self.group.any(stop.signal is not None)
        if look or stopping:
            self.check_finite()
        if record:
            self.record(lines_per_s)
        if save or stopping:
            path = self.checkpoint()
        if stopping:
            if self.group.main:
                print(f"\n{signal.Signals(stop.signal or signal.SIGTERM).name}: saved {path} "
                      f"at step {self.step}; continue with: python train.py --resume "
                      f"{self.out}", file=sys.stderr)
            self.group.stop()
            sys.exit(INTERRUPTED)


    def check_finite(self):
        """Stop if a loss since the last look was NaN or infinite. Looks come before every
        record and checkpoint, so the newest checkpoint is always from good steps."""
        if self.group.any(bool(self.bad)):
            raise UserError(f"loss became NaN or infinite between steps {self.looked} and "
                            f"{self.step}; stopped, last good checkpoint kept in "
                            f"{self.out / CKPT_DIR} (--skip-nonfinite skips such steps)")
        self.looked = self.step

    def record(self, lines_per_s):
        """Append a metrics.jsonl record (training means since the last one, validation
        figures) and redraw curves.png from all records."""
        self.group.check_in_sync(self.model)
        rec, kl = self.group.mean(self.sums / max(self.n_sums, 1)).tolist()
        train = {"train_rec": rec, "train_kl": kl, "train_nelbo": rec + kl} if self.n_sums else {}
        self.sums, self.n_sums = torch.zeros_like(self.sums), 0
        if not self.group.main:
            return
        valid = validate(self.model, self.valid, self.beta(self.step), self.lengths)
        entry = {"step": self.step, "epoch": self.epoch, "beta": self.beta(self.step),
                 "lines_per_s": round(lines_per_s, 1), "elapsed_s": round(self.seconds(), 1),
                 **train, **{f"valid_{k}": v for k, v in valid.items()}}
        if self.keep_if_best(valid_loss(entry)):
            entry["kept"] = True
        append_metrics(self.out, entry)
        write_curves(self.out, self.beta, self.log)

    def keep_if_best(self, loss):
        """Write this step's weights as the run's if its validation loss is the lowest
        yet (``self.best``: of the records marked kept; restore reads it back from them).
        A small corpus that min_steps takes through dozens of epochs overfits long before
        its last step; tang5 improves to its last."""
        if not self.tc.keep_best or not loss < self.best:
            return False
        self.best = loss
        save_weights(self.out, self.model)
        return True


class _Loss(torch.nn.Module):
    """``model.loss`` as a module's forward: what DistributedDataParallel wraps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, beta, free_bits):
        return self.model.loss(idx, beta, free_bits)


def _rank_seed(seed, rank, step):
    """A seed of its own for each rank's dropout and noise, renewed on resume."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


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


def valid_loss(record):
    """What keep_best ranks metrics.jsonl records by: -ELBO at KL weight 1 (so records
    anywhere on the KL schedule compare) plus the refiner's loss."""
    return record["valid_nelbo"] + record["valid_ref"]


def weights_step(records):
    """The step whose weights the run folder holds: the last record marked ``kept``
    (keep_best), else the last record's."""
    kept = [r["step"] for r in records if r.get("kept")] or [r["step"] for r in records]
    return kept[-1] if kept else None


def schedule_of(config):
    """The KL schedule of a saved run (config.json), as its trainer built it."""
    tc = TrainConfig(**config["train"])
    return kl_schedule(tc, tc.total_steps(tc.steps_per_epoch(
        config["data"]["counts"]["train"], config["model"]["max_len"])))


def kl_schedule(tc, total):
    """The KL weight's schedule of a run of ``total`` steps with settings ``tc``."""
    return KLSchedule(tc.kl_schedule, tc.beta_max, total, tc.kl_warmup, tc.kl_cycles,
                      tc.kl_ratio)


def finish(out, log=print):
    """Evaluate a finished run on its test split and write summary.json.

    Runs on the device the run trained on. A corpus too small to have test lines (a
    file of a few dozen lines: 1% goes to test) is evaluated on its validation split, or
    else on 1,000 random lines of its training split.
    """
    from .evaluate import evaluate_split, format_table
    from .files import write_json
    from .run import load_run
    config = read_saved_config(out)
    run = load_run(out, resolve_device(config["train"].get("device", "auto")))
    counts = config["data"]["counts"]
    split = next((s for s in ("test", "valid") if counts.get(s)), "train")
    t0 = time.time()
    res = evaluate_split(run, split, max_lines=0 if split != "train" else 1000,
                         iw_samples=config["train"]["iw_samples"])
    res["eval_s"] = round(time.time() - t0, 1)
    hist = read_metrics(out)
    summary = {**res, "steps": hist[-1]["step"] if hist else None,
               "train_s": hist[-1]["elapsed_s"] if hist else None,
               "weights_step": weights_step(hist)}
    write_json(Path(out) / SUMMARY, summary)
    write_curves(out, schedule_of(config), log)  # now with the test IW-NLL
    log(format_table(res))
    return summary
