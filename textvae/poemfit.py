"""A run's poem model, fitted by train.py after the line model: on the run's --poems
stanzas, in the time the budget gives it (``poem_seconds``), the chain first and then the
poem-context refiner, whose fit keeps a checkpoint (``checkpoints/context.pt``) that
``--resume`` goes on from. Both are tied to the line weights they were fitted with (the
step of those weights, ``line_step``): a run whose line model trains further fits its
poem model again.
"""
import time
from pathlib import Path

import torch

from .context import Keep, fit_context
from .device import resolve_device, use_amp
from .errors import UserError
from .poem import encode_splits, read_stanzas, train_chain
from .run import CKPT_DIR


def stanza_splits(spec, data_dir, lines, lengths):
    """(train, valid) stanzas of a recipe (prepared as every corpus is) or of a file of
    poems, split by each stanza's hash as corpus lines are."""
    from .corpora import RECIPES, prepare, split_of
    if spec in RECIPES and not Path(spec).exists():
        folder = prepare(spec, data_dir)
        return tuple(read_stanzas(folder / f"{s}.txt", lines, lengths) for s in ("train", "valid"))
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--poems: no recipe or file named {spec!r}")
    every = read_stanzas(path, lines, lengths)
    split = [split_of("，".join(s)) for s in every]
    train = [s for s, k in zip(every, split) if k == "train"]
    valid = [s for s, k in zip(every, split) if k != "train"] or train[:100]
    return train, valid


def fit_run_chain(run_dir, log=print):
    """Fit the poem model of the run in ``run_dir`` on its --poems stanzas and save it
    there: the chain, then (with --poem-context) the poem-context refiner, whose fit a
    checkpoint keeps for --resume. Nothing where --poems is none or the poem model
    saved was fitted to the line model's weights as they are."""
    from .run import load_run, read_metrics, read_saved_config, save_chain, weights_step
    config = read_saved_config(run_dir)
    tc, records = config["train"], read_metrics(run_dir)
    if tc.get("poems", "none") == "none":
        return None
    line_step, context = weights_step(records), tc.get("poem_context", False)
    done = config.get("context_fit" if context else "chain_fit")
    if done and done.get("line_step") == line_step:
        log("the poem model is fitted already")
        (Path(run_dir) / CONTEXT_CKPT).unlink(missing_ok=True)
        return done
    run = load_run(run_dir, device=str(resolve_device(tc.get("device", "auto"))))
    train, valid = _run_stanzas(run, tc)
    saved = read_context_checkpoint(run_dir, config, line_step, log)
    if saved:  # the chain is saved; the same stanzas again, and the context fit goes on
        log(f"poem context: going on from step {saved['steps']:,} "
            f"({saved['elapsed_s']:.0f} of {saved['seconds']:.0f} s)")
        data = encode_splits(run, train, valid, float("inf"), tc["seed"], saved["stanzas"])
        return _fit_run_context(run_dir, run, data, saved["seconds"], tc, line_step, saved, log)
    forget_context(run_dir)  # fitted to other line weights, or never
    seconds, t0 = poem_seconds(tc, records), time.time()
    if seconds < tc["poem_minutes"] * 60:
        log(f"the poem model gets {seconds / 60:.3g} of its --poem-minutes "
            f"{tc['poem_minutes']:g}: what --minutes {tc['minutes']:g} left after the line model")
    data = encode_splits(run, train, valid, seconds / (8 if context else 3), tc["seed"])
    chain_seconds = seconds / 8 if context else seconds - (time.time() - t0)
    chain, figures = train_chain(run, data, chain_seconds, log, tc["seed"])
    save_chain(run_dir, chain, {**figures, "line_step": line_step})
    if not context:
        return figures
    return _fit_run_context(run_dir, run, data, seconds - (time.time() - t0), tc, line_step,
                            None, log)


def _run_stanzas(run, tc):
    """(train, valid) stanzas of the run's --poems, checked to be enough to fit on."""
    if run.tokenizer.units != "chars":
        raise UserError("--poems chains lines of characters; this run's positions hold word pieces")
    train, valid = stanza_splits(tc["poems"], tc["data_dir"], 4, set(run.form.lengths))
    if len(train) < 100:
        raise UserError(f"--poems {tc['poems']}: {len(train)} stanzas of four lines of "
                        f"{run.form.lengths} characters; the chain needs at least 100")
    return train, valid


def poem_seconds(tc, records):
    """The poem model's seconds: --poem-minutes, or what --minutes leaves after the line
    model's training (its last record in ``records``) where that is less, so the whole
    run keeps the budget; never less than the share the line model's budget left it."""
    seconds, budget = tc["poem_minutes"] * 60, tc["minutes"] * 60
    if not budget or not records:
        return seconds
    return min(seconds, max(budget / 2, budget - records[-1]["elapsed_s"]))


CONTEXT_CKPT = f"{CKPT_DIR}/context.pt"  # the poem-context fit so far, for --resume
SAVE_EVERY = 300.0  # seconds between its checkpoints: a kill loses at most this much


def _fit_run_context(run_dir, run, data, seconds, tc, line_step, saved, log):
    """The poem-context refiner of a run, fitted (or fitted on from ``saved``) in
    ``seconds`` and saved; its checkpoint goes once the refiner is saved. Ctrl-C or
    SIGTERM saves the checkpoint and stops."""
    from .decoding import device_of
    from .run import save_context, save_state
    from .trainer import StopRequested
    path = Path(run_dir) / CONTEXT_CKPT
    bf16 = saved["bf16"] if saved else use_amp(tc.get("amp", "auto"), device_of(run))

    def save(state):
        save_state(path, {**state, "seconds": seconds, "stanzas": len(data.mu), "bf16": bf16,
                          "line_step": line_step})
    with StopRequested() as stop:
        cref, figures = fit_context(run.model, data, seconds, log, tc["seed"], bf16=bf16,
                                    saved=saved, keep=Keep(save, SAVE_EVERY,
                                                           lambda: stop.signal is not None))
    save_context(run_dir, cref, {**figures, "line_step": line_step})
    path.unlink(missing_ok=True)
    return figures


def read_context_checkpoint(run_dir, config, line_step, log=print):
    """The poem-context fit a cut run left, or None: none, one fitted to other line
    weights or beside another chain, or one unreadable (said in a line)."""
    path = Path(run_dir) / CONTEXT_CKPT
    if not path.exists() or config.get("chain_fit", {}).get("line_step") != line_step:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a write a kill cut short: the fit starts again
        log(f"warning: cannot read {path} ({type(e).__name__}); fitting the poem model anew")
        return None
    return state if state.get("line_step") == line_step else None


def forget_context(run_dir):
    """Drop a poem-context refiner and its checkpoint from the run folder, so no later
    reader pairs them with a chain or line weights they were not fitted with."""
    from .run import CONTEXT, update_config
    update_config(run_dir, lambda c: (c.pop("context", None), c.pop("context_fit", None)))
    for name in (CONTEXT, CONTEXT_CKPT):
        (Path(run_dir) / name).unlink(missing_ok=True)
