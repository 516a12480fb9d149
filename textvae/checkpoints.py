"""Training state kept in a run folder's checkpoints/ for --resume: the trainer's
step-N.pt files (the newest ``keep`` of them) and the poem-context fit's context.pt
(poemfit.py). Each holds plain tensors and numbers, written atomically and read with
``torch.load(weights_only=True)``."""
import io
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write_bytes

CKPT_DIR = "checkpoints"


def save_checkpoint(run_dir, state, keep=2):
    """Write checkpoints/step-N.pt atomically, then drop all but the newest ``keep``."""
    folder = Path(run_dir) / CKPT_DIR
    path = folder / f"step-{state['step']:08d}.pt"
    save_state(path, state)
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def save_state(path, state):
    """torch.save ``state`` (plain tensors and numbers) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def rng_state(device):
    """The global random streams a fit cut here needs to go on as if it had not been
    (dropout's): the CPU's, and on CUDA the GPU's."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    """Restore what ``rng_state`` kept (a GPU stream only on a GPU)."""
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


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
