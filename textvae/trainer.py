"""Training: data in, run folder out; resumable from any checkpoint.

    train(tc, mc)  ->  open (or reopen) the run folder  ->  Trainer(...).run()

The loop knows the model only through ``model.loss(idx, beta, free_bits)`` and the
schedules (learning rate, KL weight). Everything that decides the course of a run is
saved in each checkpoint (weights, optimizer, step, epoch and batch position in the
shuffled order, RNG state, training time so far), so ``--resume`` continues exactly
where the run stopped. SIGINT / SIGTERM save a checkpoint and exit with 130.

Under torchrun (distributed.py) each process trains on its share of every global batch,
DistributedDataParallel averages the gradients, and rank 0 alone writes the run folder.
"""
import math
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .anneal import kl_schedule
from .batches import TokenIds, cache_file, epoch_order
from .device import CompiledOrPlain, fused_adam, resolve_device, use_amp, use_compile
from .distributed import Group, shard
from .errors import UserError
from .evaluate import validate
from .model import TextVAE, VAEConfig
from .config import TrainConfig
from .checkpoints import (CKPT_DIR, has_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                          set_rng_state)
from .run import (append_metrics, position_lengths, read_metrics, read_saved_config,
                  reopen_run, rewrite_metrics, save_train_settings, save_weights, start_run,
                  weights_exist, weights_step, write_curves)

INTERRUPTED = 130
# Steps between the loop's looks at device values (a non-finite loss, a stop on another
# rank): each look waits for the device, so it is not done every step.
SYNC_EVERY = 20
# --minutes is first fitted at the second of these steps; step times count from the
# first: past start-up (and compiling), before the schedules have gone far.
BUDGET_PROBE = (10, 50)
PACE_STEPS = 9  # the budget's pace: the median of this many step times


class StopRequested:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        # A second Ctrl-C stops at once (checkpoints are atomic). Only the same signal
        # again: torchrun passes a Ctrl-C on to its workers as SIGTERM after the SIGINT.
        if self.signal == signum:
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def lr_at(step, total, base):
    """Cosine decay from base to base/10 (keeps late steps from undoing the KL balance)."""
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))))


def train(tc: TrainConfig, mc: VAEConfig, resume=None, given=None, log=print):
    """Train a new run, or resume the run folder ``resume``; returns the folder.

    ``given``: the settings the user typed (flag name -> value), checked on resume.
    """
    # Denormal floats, which tiny late-run weights and Adam moments make, are ~100x
    # slower on a CPU; set before torch starts the worker threads that inherit it.
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
    really closes the group: gloo's threads must not outlive it."""
    out, tc, mc, tok, corpus = open_on_every_rank(group, tc, mc, resume, given, log)
    for why, count in corpus.skipped.items():
        if count:
            log(f"skipped {count} lines of {corpus.name} ({why.replace('_', ' ')}; "
                f"the longest line kept has {corpus.max_chars} characters)")
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


class Budget:
    """--minutes as a promise. The pace is the median time of the last few steps (a
    record or checkpoint inside one step does not move it). At BUDGET_PROBE[1] and at
    every validation record the run is fitted to the steps that fit; between them the
    clock is read every ``every`` steps (every step; under torchrun every SYNC_EVERY
    steps, when the ranks compare notes anyway), and a pace
    that would overrun the budget cuts the run there. A record may give back steps a
    passing slowdown cut, up to the ``planned`` length, never beyond it."""

    def __init__(self, seconds, eval_every, every, planned):
        self.seconds, self.eval_every, self.every = seconds, eval_every, every
        self.planned = planned
        self.times = deque(maxlen=PACE_STEPS + 1)  # (step, time) of the latest steps
        self.per_step = None
        self.told = None  # the length the log last gave

    def steps_that_fit(self, step, total, elapsed, now, smallest):
        """The steps the run should have now: ``total``, or fewer that fit (``smallest``:
        the ranks' agreement on a count)."""
        first, last = BUDGET_PROBE
        if step >= first:
            self.times.append((step, now))
        due = step == last or (step > last and step % self.eval_every == 0)
        if not self.seconds or step >= total or (step % self.every and not due):
            return total
        left = self.seconds * 0.97 - elapsed  # 3%: the last record and checkpoint
        if step >= last and len(self.times) > 1:
            self.per_step = self._pace()
            fits = step + int(max(left, 0) / self.per_step)
            # Between records only a pace that overruns the whole budget cuts (to 97%
            # of it again): a pace that drifts a little is not a cut every step.
            overrun = elapsed + (total - step) * self.per_step > self.seconds
            if due or overrun:
                return min(self.planned if due else total, smallest(max(step, fits)))
        # Before the first fit, or at a pace that fits: only a budget already spent stops.
        return min(total, smallest(step if elapsed >= self.seconds else total))

    def _pace(self):
        """Median seconds a step over the latest PACE_STEPS steps."""
        times = list(self.times)
        gaps = sorted((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(times, times[1:]))
        return max(gaps[len(gaps) // 2], 1e-6)  # a coarse clock may see no time pass

    def worth_telling(self, fits):
        """Whether a refit is news for the log: the first, or one that moves the length a
        quarter or more from the one last told. On a shared CPU the pace wanders by a
        fifth, and a cut run is refitted at each record and at each overrun; the progress
        bar shows each refit, the log the first, a real change of course, and (the
        closing line) a length that differs from the one last told."""
        if self.told is not None and abs(fits - self.told) < self.told / 4:
            return False
        self.told = fits
        return True

    def cut(self, minutes, step, fits, cycles):
        """What a refit says: the pace (or where the budget ran out) and the steps left."""
        pace = f"at {self.per_step:.2f} s a step" if self.per_step else f"spent at step {step}"
        return (f"{self.label(minutes)}: {pace}, {fits} of the planned {self.planned} steps "
                f"fit, in {cycles} KL cycle(s) (--minutes 0 trains them all)")

    def label(self, minutes):
        """'--minutes M', with the line model's share where the poem chain takes some."""
        share = self.seconds / 60
        return f"--minutes {minutes:g}" + (
            f" ({share:.3g} of them the line model's)" if share < minutes else "")


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
        self.opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                    fused=fused_adam(self.device))
        self.bf16 = not self.group.any(not use_amp(tc.amp, self.device))  # all ranks alike
        self._data(tok, corpus)
        self.total = tc.total_steps(self.per_epoch)
        self.beta = kl_schedule(self.tc, self.total)
        # A budget that has fitted a length wrote it as max_steps: a resumed run keeps it.
        self.budget = Budget(tc.line_seconds() if not tc.max_steps else 0, tc.eval_every,
                             SYNC_EVERY if self.group.active else 1, self.total)
        self.cycle_len = self.total / tc.kl_cycles  # as planned, before any budget cut
        if use_compile(tc.compile, self.device, self.total, self.group.active):
            self.loss_of = CompiledOrPlain(self.loss_of, log)
        self.step = self.epoch = self.batch_pos = 0
        # rec, kl since the last record, summed on the device: no host sync until then
        self.sums, self.n_sums = torch.zeros(2, device=self.device), 0
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)  # a non-finite
        self.looked = 0                       # loss since step ``looked`` (check_finite)
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self.best = math.inf  # the lowest valid_loss of a kept record (keep_best)

    def _data(self, tok, corpus):
        """The training ids (encoded once into a uint16 file in the user's cache, which
        rank 0 writes), the validation lines, and the sizes of a step and an epoch."""
        L = self.model.cfg.max_len  # positions: characters, or fewer pieces
        ids = self.group.first(lambda: str(cache_file(corpus, tok, L)))
        self.data = TokenIds(ids, L, self.device)
        self.valid_lines = list(corpus.splits["valid"] or corpus.train.head(1000))
        self.valid = torch.from_numpy(tok.encode_batch(self.valid_lines, L)).to(self.device)
        self.tok = tok
        self.lengths = position_lengths(read_saved_config(self.out))
        self.batch = self.tc.lines_per_step(L)
        self.per_epoch = self.tc.steps_per_epoch(len(self.data), L)
        self.corpus_line = (f"corpus {corpus.name}: {len(self.data)} train lines, length "
                            f"{L} {tok.units}, vocab {tok.vocab_size}")

    def restore(self):
        """Continue from the newest checkpoint; a run killed before its first checkpoint
        starts again from step 0 with its saved settings."""
        if not has_checkpoint(self.out):
            self.log(f"{self.out} has no checkpoint yet; starting it from step 0")
            if self.group.main:
                rewrite_metrics(self.out, [])
            return
        state, path = load_checkpoint(self.out)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.step, self.epoch = state["step"], state["epoch"]
            self.batch_pos = state["batch_pos"]
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{path} does not fit the run's config.json "
                            f"({str(e).strip().splitlines()[-1][:160]})") from None
        self.elapsed = float(state.get("elapsed_s", 0.0))
        set_rng_state(state, self.device)
        if not self.group.main:  # rank 0's RNG state is the one saved
            torch.manual_seed(_rank_seed(self.tc.seed, self.group.rank, self.step))
            return
        # Records written after that checkpoint belong to a course the resumed run
        # replays; drop them so metrics.jsonl has each step once.
        kept = [r for r in read_metrics(self.out) if r.get("step", 0) <= self.step]
        rewrite_metrics(self.out, kept)
        self.best = min((valid_loss(r) for r in kept if r.get("kept")), default=math.inf)
        self.log(f"resuming {self.out} from {path.name} (step {self.step})")

    def checkpoint(self):
        if not self.group.main:
            return None
        # With keep_best, record() writes the weights when a step's are the best yet; a
        # run stopped before its first record still gets some, so it can be used.
        if not self.tc.keep_best or not weights_exist(self.out):
            save_weights(self.out, self.model)
        state = {"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                 "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                 "elapsed_s": self.seconds(), **rng_state(self.device)}
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
        self.log(f"{self.corpus_line}; model {n_params / 1e6:.2f}M params on {self.device}"
                 f"{' (bf16 autocast)' if self.bf16 else ''}; "
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
        told = self.budget.told  # a refit the log did not give: say where the run ended
        which += f" ({told} were last said to fit)" if told not in (None, self.step) else ""
        self.log(f"trained {self.step} steps in {self.seconds():.0f} s; weights{which} in "
                 f"{self.out}")

    def fit_budget(self, bar):
        """Cut the run to the steps that fit in --minutes (Budget). The new length is
        saved in config.json as max_steps, so a resume, the plotted KL schedule and a
        reader of the config all see the run that was trained."""
        fits = self.budget.steps_that_fit(self.step, self.total, self.seconds(), time.time(),
                                          self.group.smallest)
        if fits == self.total:
            return
        # A cut run keeps the planned length of a KL cycle, in fewer cycles: squeezing
        # the cycles leaves too few steps at full KL weight to learn a code.
        cycles = max(1, round(fits / self.cycle_len))
        if self.budget.worth_telling(fits):
            self.log("\n" + self.budget.cut(self.tc.minutes, self.step, fits, cycles))
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
        figures), keep the weights if they are the best yet, and redraw curves.png."""
        self.group.check_in_sync(self.model)
        rec, kl = self.group.mean(self.sums / max(self.n_sums, 1)).tolist()
        train = {"train_rec": rec, "train_kl": kl, "train_nelbo": rec + kl} if self.n_sums else {}
        train["steps_used"] = self.n_sums  # since the last record: the rest were skipped
        self.sums, self.n_sums = torch.zeros_like(self.sums), 0
        if not self.group.main:
            return
        valid = validate(self.model, self.tok, self.lengths, self.valid, self.valid_lines,
                         self.beta(self.step))
        entry = {"step": self.step, "epoch": self.epoch, "beta": self.beta(self.step),
                 "lines_per_s": round(lines_per_s, 1), "elapsed_s": round(self.seconds(), 1),
                 **train, **{f"valid_{k}": v for k, v in valid.items()}}
        if self.keep_if_best(valid_loss(entry)):
            entry["kept"] = True
        append_metrics(self.out, entry)
        write_curves(self.out, self.beta, self.log)

    def keep_if_best(self, loss):
        """Write this step's weights as the run's if its validation loss is the lowest yet
        (early stopping: a small corpus overfits long before min_steps)."""
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


def valid_loss(record):
    """What keep_best ranks metrics.jsonl records by: -ELBO at KL weight 1 (so records
    anywhere on the KL schedule compare) plus the refiner's loss."""
    return record["valid_nelbo"] + record["valid_ref"]
