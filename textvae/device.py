"""Where and how a run computes: the device, bf16 autocast, and a compiled training step.

Measurements behind these defaults are in docs/speed.md.
"""
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
    # Only CPUs with AMX tiles multiply bf16 faster than fp32; elsewhere it is emulated.
    return device.type == "cpu" and cpu_has("amx_bf16")


def cpu_has(flag_name):
    """Whether /proc/cpuinfo lists ``flag_name`` (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag_name in line.split() for line in f)
    except OSError:
        return False


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
