"""Where and how a run computes: the device, bf16 autocast, and a compiled training step.

Measurements behind these defaults are in docs/speed.md.
"""
import functools
import time

import torch

from .errors import UserError

# A CUDA run of at least this many steps compiles its step (--compile auto): the
# compiling time is then paid back by shorter steps.
COMPILE_FROM_STEPS = 2000


def resolve_device(name):
    """A torch.device for --device (auto: cuda, then mps, then cpu); one clear line for
    a device that is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU")
    if device.type == "mps" and not _mps_available():
        raise UserError("--device mps asked for, but torch sees no Apple GPU")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported --device {name!r} (auto, cpu, cuda, cuda:N, mps)")
    return device


def fused_adam(device):
    """Whether to ask torch for its fused Adam on ``device``: one kernel for every
    parameter instead of several for each tensor (the default's 7.2M parameters on a
    2-core CPU: 6 ms a step instead of 19-35)."""
    return torch.device(device).type in ("cpu", "cuda")


def _mps_available():
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def use_amp(amp, device):
    """Whether to train under bf16 autocast (the loss itself is always fp32)."""
    if amp not in ("auto", "bf16", "off"):
        raise UserError(f"--amp must be auto, bf16 or off, got {amp!r}")
    if amp != "auto":
        return amp == "bf16"
    if device.type == "cuda":
        # Older GPUs would emulate bf16, slower than their fp32.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # CPUs with AVX-512 BF16 or AMX multiply bf16 natively, 2-2.5x fp32's rate (a 1.5x
    # faster step); elsewhere it is emulated and slower. Timed, not read from the flags.
    return device.type == "cpu" and bf16_is_faster()


@functools.lru_cache(maxsize=None)
def bf16_is_faster(timer=None, ratio=1.5):
    """Whether this CPU multiplies bf16 matrices at least ``ratio`` times as fast as fp32
    (timed once, about 0.1 s). ``timer(dtype, n)``: seconds of one n x n product (tests)."""
    timer = timer or product_seconds
    # Emulated bf16 runs about 250x slower than fp32: one small product shows it at once,
    # where timing the full size would take half a minute.
    if timer(torch.bfloat16, 128) > 4 * timer(torch.float32, 128):
        return False
    return timer(torch.float32, 512) >= ratio * timer(torch.bfloat16, 512)


def product_seconds(dtype, n, reps=8, device="cpu"):
    """Seconds of one n x n matrix product in ``dtype`` on ``device``: the fastest of
    three timings of ``reps`` products (a shared machine's pace wanders, and a slow
    round would understate what it can do)."""
    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best / reps


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_compile(how, device, steps, distributed):
    """Whether to compile the training step (--compile): see COMPILE_FROM_STEPS."""
    if how not in ("auto", "on", "off"):
        raise UserError(f"--compile must be auto, on or off, got {how!r}")
    if how == "auto":
        # Compiling DDP's step is untested here, so never automatic under torchrun.
        return device.type == "cuda" and steps >= COMPILE_FROM_STEPS and not distributed
    return how == "on"


def compiled(loss_fn):
    """``loss_fn`` compiled into CUDA graphs ("reduce-overhead"): the step is launch-bound
    on a GPU. One graph per batch shape: a run has two, the full batch and an epoch's last."""
    return torch.compile(loss_fn, mode="reduce-overhead", dynamic=False)


class CompiledOrPlain:
    """The compiled loss while compiling works; after a failure, the plain one, since a
    run must not stop for an optimisation. The forward compiles at its first call (a
    failure is caught here), the backward at its first use (caught by the trainer)."""

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
