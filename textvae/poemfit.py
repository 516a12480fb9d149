"""A run's poem model, fitted by train.py after the line model: on the run's --poems
stanzas, in the time the budget gives it (``poem_seconds``), the chain first and then the
poem-context refiner, whose fit keeps a checkpoint (``checkpoints/context.pt``) that
``--resume`` goes on from. Both are tied to the line weights they were fitted with (the
digest of those weights, ``line_weights``): a run whose line model trains further fits
its poem model again, and a run folder is read without a poem model not tied to its
line weights (run.load_run).
"""
import hashlib
import time
from pathlib import Path

import torch

from .context import LR, ContextConfig, Keep, fit_context
from .device import resolve_device, use_amp
from .errors import UserError
from .poem import encode_splits, read_stanzas, train_chain
from .checkpoints import CKPT_DIR, save_state


def stanza_splits(spec, data_dir, lines, lengths):
    """(train, valid) stanzas of a recipe (prepared as every corpus is) or of a file of
    poems, split by each stanza's hash as corpus lines are; where no stanza falls to
    valid, the first 100 of train stand in for it (its figures are then train's)."""
    from .corpora import RECIPES, prepare, split_of
    if spec in RECIPES and not Path(spec).exists():
        folder = prepare(spec, data_dir)
        train, valid = (read_stanzas(folder / f"{s}.txt", lines, lengths)
                        for s in ("train", "valid"))
        return train, valid or train[:100]
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
    from .run import load_run, read_metrics, read_saved_config, save_chain
    config = read_saved_config(run_dir)
    tc, records = config["train"], read_metrics(run_dir)
    if tc.get("poems", "none") == "none":
        return None
    context, line_weights = tc.get("poem_context", False), weights_digest(run_dir)
    done = config.get("context_fit" if context else "chain_fit")
    if done and tied(done, run_dir, line_weights):
        log("the poem model is fitted already")
        (Path(run_dir) / CONTEXT_CKPT).unlink(missing_ok=True)
        return done
    run = load_run(run_dir, str(resolve_device(tc.get("device", "auto"))), poems=False)
    train, valid = _run_stanzas(run, tc)
    saved = read_context_checkpoint(run_dir, config, line_weights, log)
    if saved:  # the chain is saved; the same stanzas again, and the context fit goes on
        data = encode_splits(run, train, valid, float("inf"), tc["seed"], saved["stanzas"])
        if saved.get("stanzas_digest") in (None, stanzas_digest(data)):  # None: kept before
            log(f"poem context: going on from step {saved['steps']:,} "
                f"({saved['elapsed_s']:.0f} of {saved['seconds']:.0f} s)")
            return _fit_run_context(run_dir, run, data, saved["seconds"], tc, line_weights,
                                    saved, log)
        log("the --poems stanzas changed since the poem model's fit began; fitting it anew")
    seconds, t0 = poem_seconds(tc, records), time.time()
    if seconds < tc["poem_minutes"] * 60:
        log(f"the poem model gets {seconds / 60:.3g} of its --poem-minutes "
            f"{tc['poem_minutes']:g}: what --minutes {tc['minutes']:g} left after the line model")
    data = encode_splits(run, train, valid, seconds / (8 if context else 3), tc["seed"])
    chain_seconds = min(seconds / 8, CHAIN_SECONDS) if context else seconds - (time.time() - t0)
    chain, figures = train_chain(run, data, chain_seconds, log, tc["seed"])
    save_chain(run_dir, chain, {**figures, "line_weights": line_weights})
    forget_context(run_dir)  # fitted beside another chain, or to other line weights
    if not context:
        return figures
    return _fit_run_context(run_dir, run, data, seconds - (time.time() - t0), tc, line_weights,
                            None, log)


def weights_digest(run_dir):
    """A digest of the run's line weights (model.safetensors): a poem model is fitted to
    one set of them, and the line model training further (a resume, another record)
    changes it."""
    from .run import WEIGHTS
    return hashlib.sha256((Path(run_dir) / WEIGHTS).read_bytes()).hexdigest()[:16]


def tied(fit, run_dir, digest):
    """Whether a poem model whose figures (or a context checkpoint) are ``fit`` was fitted
    to the run's line weights as they are now, whose ``weights_digest`` is ``digest``.
    Runs before the digest kept the weights' step instead; runs before that kept
    nothing, and are taken at their word."""
    from .run import read_metrics, weights_step
    if "line_weights" in fit:
        return fit["line_weights"] == digest
    if "line_step" in fit:
        return fit["line_step"] == weights_step(read_metrics(run_dir))
    return True


def stanzas_digest(data):
    """A digest of the encoded training stanzas' ids, so a resumed fit goes on only on the
    stanzas it began on (a --poems file edited since, or another --data-dir, starts anew)."""
    ids = data.ids[:len(data.mu)].contiguous()
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]


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


# Beside a context refiner, the chain's seconds at most: it is only the proposal, and it
# learns next to nothing past its first seconds (a held-out z 90.28 nats under a chain fitted
# 1,126 s, 90.39 independent), so the context refiner gets the time.
CHAIN_SECONDS = 30.0
CONTEXT_CKPT = f"{CKPT_DIR}/context.pt"  # the poem-context fit so far, for --resume
# Seconds between the context fit's checkpoints: a kill loses at most this much of it
# (before the first, the whole poem model is fitted again).
SAVE_EVERY = 300.0


def _fit_run_context(run_dir, run, data, seconds, tc, line_weights, saved, log):
    """The poem-context refiner of a run, fitted (or fitted on from ``saved``) in
    ``seconds`` and saved; its checkpoint goes once the refiner is saved. Ctrl-C or
    SIGTERM saves the checkpoint and stops: within the fit at the next step, and after
    its last step once the refiner is saved."""
    from .decoding import device_of
    from .run import save_context
    from .trainer import StopRequested
    path = Path(run_dir) / CONTEXT_CKPT
    bf16 = use_amp(tc.get("amp", "auto"), device_of(run))
    if saved and saved["bf16"] != bf16:
        log(f"note: the fit began {'with' if saved['bf16'] else 'without'} bf16 autocast and "
            f"goes on {'with' if bf16 else 'without'} it on {device_of(run)}")
    fit = {"lr": LR, "dropout": ContextConfig.dropout, "extra_layers": tc.get("context_layers", 0)}
    if saved:  # go on as it began; a fit kept before its settings were: 2e-3, the run's dropout
        fit = saved.get("fit", {"lr": 2e-3, "dropout": run.model.cfg.dropout, "extra_layers": 0})
    kept = {"seconds": seconds, "stanzas": len(data.mu), "stanzas_digest": stanzas_digest(data),
            "bf16": bf16, "line_weights": line_weights, "fit": fit}
    with StopRequested() as stop:
        cref, figures = fit_context(
            run.model, data, seconds, log, tc["seed"], bf16=bf16, saved=saved, **fit,
            keep=Keep(lambda state: save_state(path, {**state, **kept}), SAVE_EVERY,
                      lambda: stop.signal is not None))
    save_context(run_dir, cref, {**figures, "line_weights": line_weights})
    path.unlink(missing_ok=True)
    if stop.signal is not None:
        raise KeyboardInterrupt
    return figures


def read_context_checkpoint(run_dir, config, digest, log=print):
    """The poem-context fit a cut run left, or None: none, one fitted to other line
    weights (the run's are ``digest``, its weights_digest) or beside another chain, or one
    unreadable (said in a line)."""
    path = Path(run_dir) / CONTEXT_CKPT
    chain_fit = config.get("chain_fit")
    if not path.exists() or not chain_fit or not tied(chain_fit, run_dir, digest):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, or one another torch wrote: start again
        log(f"warning: cannot read {path} ({type(e).__name__}); fitting the poem model anew")
        return None
    return state if tied(state, run_dir, digest) else None


def forget_context(run_dir):
    """Drop a poem-context refiner and its checkpoint from the run folder, so no later
    reader pairs them with a chain or line weights they were not fitted with."""
    from .run import CONTEXT, update_config
    update_config(run_dir, lambda c: (c.pop("context", None), c.pop("context_fit", None)))
    for name in (CONTEXT, CONTEXT_CKPT):
        (Path(run_dir) / name).unlink(missing_ok=True)
