"""Command lines of train.py and generate.py.

Train flags are made from the fields of TrainConfig and VAEConfig (``--batch-size`` for
``batch_size``), with each field's comment as its help, so a new setting needs one line.
Every UserError becomes one line on stderr and exit status 2.
"""
import argparse
import functools
import inspect
import json
import re
import signal
import sys
import typing
from dataclasses import fields
from pathlib import Path

import torch

from .config import PRESETS, configs
from .errors import UserError
from .decoding import SampleConfig
from .sampling import chained, continued, poems
from .poetry import PoemConfig, chosen_form, couplets, write_poems
from .prosody import VERSE_FORMS, RHYMES, form_named

DEFAULT_RUN = "runs/tang5"


def cli(main):
    """Run ``main(argv)``; a UserError is one line on stderr and exit status 2."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(sys.argv[1:] if argv is None else argv) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `generate.py | head`
            return 0
    return wrapped


class Parser(argparse.ArgumentParser):
    """argparse with the project's rule for bad input: one line on stderr, exit 2
    (argparse's own error prints the whole usage first)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


@functools.lru_cache(maxsize=None)  # reading a class's source takes ~15 ms; a parser asks often
def _field_help(cls):
    """Each dataclass field's comment, as help text: the trailing comment of its line
    and the comment-only lines that continue it."""
    helps, name = {}, None
    for line in inspect.getsource(cls).splitlines():
        field = re.match(r"^\s+(\w+): [^#\n]+#(.*)$", line)
        if field:
            name, helps[field.group(1)] = field.group(1), field.group(2).strip()
        elif name and line.strip().startswith("#"):
            helps[name] += " " + line.strip()[1:].strip()
        else:
            name = None
    return helps


def _flag_type(annotation):
    """int, float or str for a field's type, ``float | None`` included (None: the default)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    name = getattr(kinds[0], "__name__", str(kinds[0]).split("|")[0].strip())
    return {"int": int, "float": float}.get(name, str)


def _add_fields(parser, cls, skip=()):
    helps = _field_help(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            # --x / --no-x; None when neither is typed, so the default (or a preset) holds
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=helps.get(f.name))
        else:
            typ = _flag_type(f.type)
            default = f" (default: {f.default})" if f.default not in ("", None) else ""
            parser.add_argument(flag, type=typ, default=None,
                                choices=getattr(cls, "CHOICES", {}).get(f.name),
                                help=f"{helps.get(f.name, '')}{default}")


# ---------------------------------------------------------------------------------------
@cli
def train_main(argv):
    from .config import TrainConfig
    from .model import VAEConfig
    from .distributed import Group
    from .evaluate import finish
    from .poemfit import fit_run_chain
    from .trainer import train
    p = Parser(
        prog="train.py", description="Train a text VAE and save a self-contained run folder.")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last "
                   "checkpoint (its saved settings are used)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration "
                   "(su2018: Su Jianlin's 2018 Keras poetry VAE, the baseline; hour: 60 "
                   "minutes, up to 40 of them for the poem model, docs/poems.md; long: "
                   "180 minutes, up to 150 of them for the poem model)")
    _add_fields(p, TrainConfig)
    _add_fields(p, VAEConfig, skip=("vocab_size", "max_len"))
    args = vars(p.parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    tc, mc = configs(args["preset"], given)
    if args["resume"] and not Path(args["resume"]).is_dir():
        raise UserError(f"cannot resume: run folder not found: {args['resume']}")
    if args["preset"] and not tc.out:
        tc.out = f"runs/{Path(tc.corpus).stem}-{args['preset']}"  # keep baselines apart
    given.pop("resume", None), given.pop("preset", None)
    out = train(tc, mc, resume=args["resume"], given=given)
    if not Group().main:  # under torchrun, rank 0 evaluates and reports
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the poem model as Ctrl-C does
    try:
        fit_run_chain(out)
    except KeyboardInterrupt:
        print(f"interrupted while fitting the poem model; continue with: python train.py "
              f"--resume {out}", file=sys.stderr)
        return 130
    finish(out)
    print(f"\nrun saved in {out}; write poems with: python generate.py --run {out}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------
COMMANDS = ("sample", "continue", "interpolate", "reconstruct", "encode", "complete", "similar",
            "shift", "map", "evaluate", "serve")


def _lines_arg(values, file):
    lines = list(values or [])
    if file:
        from .files import LineReader
        lines += LineReader(file).read()
    if not lines:
        raise UserError("give lines as arguments or with --file")
    return lines


def _common(sp):
    sp.add_argument("--run", default=DEFAULT_RUN, help="run folder made by train.py")
    sp.add_argument("--format", choices=("text", "json"), default="text")
    sp.add_argument("--device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    return sp


# Sampling flags are SampleConfig's fields (decoding.py), their help its comments, as
# training flags are TrainConfig's: one place says what each does and its default.
SAMPLING = ("seed", "temperature", "top_k", "noise", "keep", "repeat_penalty")


def _sample_fields(sp, *names):
    _add_fields(sp, SampleConfig, skip={f.name for f in fields(SampleConfig)} - set(names))


def _sampling(sp):
    _sample_fields(sp, *SAMPLING)


def _fitting(sp):
    _sample_fields(sp, "fit_steps")


def _sample_flags(s):
    """The default command's own flags: how many poems, and their form."""
    s.add_argument("--num", type=int, default=4, help="how many poems")
    s.add_argument("--lines", type=int, default=0,
                   help="lines per poem (default: 4 for line corpora, 1 for whole poems)")
    s.add_argument("--acrostic", help="first characters of the lines, e.g. 春夏秋冬")
    s.add_argument("--form", choices=sorted(VERSE_FORMS) + ["free"],
                   help="a classical form: wujue 五绝, qijue 七绝 (4 lines), wulv 五律, "
                        "qilv 七律 (8 lines); needs a run of 5- or 7-character lines; free: "
                        "free lines (default: wujue with --tones on a poem model of "
                        "5-character lines, else free)")
    s.add_argument("--rhyme", choices=RHYMES,
                   help="in a form: the even lines rhyme by 平水韵 (pingshui) or "
                        "中华新韵 (xinyun), or not at all (default: pingshui)")
    s.add_argument("--tones", action=argparse.BooleanOptionalAction, default=None,
                   help="in a form: follow its 平仄 template (characters 2, 4, "
                        "6 and the last; default: on for the default form only)")
    _sample_fields(s, "theme", "theme_weight", "keywords", "line_candidates", "independent")
    s.add_argument("--coherence", type=float,
                   help="in a form on a run without a poem model (or --independent): "
                        "share of its latent a line takes from the line before, 0 to <1 "
                        f"(default: {PoemConfig.rho})")


def generate_parser():
    """generate.py's flags: one subcommand each for sample (the default), interpolate,
    reconstruct, encode, complete and evaluate."""
    p = Parser(
        prog="generate.py",
        description="Use a trained run: write poems (default), interpolate, reconstruct, "
                    "encode, complete lines, or evaluate.")
    sub = p.add_subparsers(dest="command")
    s = _common(sub.add_parser("sample", help="poems from z ~ N(0, I) (the default)"))
    p.default_command = s  # its options are listed by a bare --help too
    _sampling(s)
    _sample_flags(s)
    s = _common(sub.add_parser("continue", help="poems that open with the given line(s), "
                               "written on by the run's poem chain"))
    s.add_argument("lines", nargs="+")
    s.add_argument("--num", type=int, default=4, help="how many poems")
    _sampling(s)
    _sample_fields(s, "line_candidates")
    s = _common(sub.add_parser("interpolate", help="walk the latent path between two lines "
                               "(or two poems, written 甲，乙。丙，丁。: line by line)"))
    s.add_argument("line_a")
    s.add_argument("line_b")
    s.add_argument("--steps", type=int, default=8, help="points on the path, ends included")
    s.add_argument("--how", choices=("linear", "spherical", "both"), default="both")
    _sampling(s)
    _sample_fields(s, "stay")
    _fitting(s)
    s.add_argument("--allow-unk", action="store_true",
                   help="map characters outside the vocabulary to <unk> instead of failing")
    for name, what in (("encode", "print mu (and logvar) of each line as JSON"),
                       ("reconstruct", "write each line back from its (fitted) z")):
        s = _common(sub.add_parser(name, help=what))
        s.add_argument("lines", nargs="*")
        s.add_argument("--file", help="a UTF-8 file of lines")
        s.add_argument("--allow-unk", action="store_true",
                       help="map characters outside the vocabulary to <unk> instead of failing")
        if name == "reconstruct":
            _fitting(s)
    s = _common(sub.add_parser("complete", help="fill the _ of a line, e.g. 白日__尽"))
    _sampling(s)
    s.add_argument("patterns", nargs="+")
    s.add_argument("--candidates", type=int, default=256, help="z drawn to fit the pattern")
    _latent_commands(sub)
    s = _common(sub.add_parser("evaluate", help="likelihood, latent use, samples (eval.json)"))
    s.add_argument("--split", choices=("test", "valid", "train"), default="test")
    s.add_argument("--iw-samples", type=int, default=500, help="k of the IW-NLL (0 skips)")
    s.add_argument("--num-samples", type=int, default=1000, help="prior samples judged")
    s.add_argument("--max-lines", type=int, default=0,
                   help="evaluate N random lines of the split (0: all)")
    s.add_argument("--plot", action="store_true",
                   help="also draw eval.png: KL per latent dimension, samples against real lines")
    s = _common(sub.add_parser("serve", help="a local web page to play with the run"))
    s.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default: 7860)")
    return p


def _latent_commands(sub):
    """similar, shift and map: the latent space itself."""
    s = _common(sub.add_parser("similar", help="nearest training lines in the latent space"))
    s.add_argument("lines", nargs="*")
    s.add_argument("--file", help="a UTF-8 file of lines")
    s.add_argument("--k", type=int, default=5, help="neighbours per line (default: 5)")
    s = _common(sub.add_parser("shift", help="move a line along an attribute vector"))
    s.add_argument("line")
    s.add_argument("--toward", required=True,
                   help="characters (training lines holding any of them, e.g. 秋) or a "
                        "file of lines")
    s.add_argument("--away", help="the same, for the other end (default: the training "
                                  "lines without --toward's characters)")
    s.add_argument("--steps", type=int, default=5, help="lines written, the line itself first")
    s.add_argument("--scale", type=float, default=3.0,
                   help="how far to go, in lengths of the vector (default: 3)")
    _sampling(s)
    _fitting(s)
    s = _common(sub.add_parser("map", help="a PNG of test lines' latent means in 2-D"))
    s.add_argument("--num", type=int, default=2000, help="lines drawn (default: 2000)")
    s.add_argument("--colour", choices=("season", "tone"), default="season",
                   help="season character in the line, or 平/仄 of its last character")
    s.add_argument("--projection", choices=("pca", "umap"), default="pca",
                   help="umap needs umap-learn installed")
    s.add_argument("--labels", type=int, default=12, help="lines written beside their points")
    s.add_argument("--out", help="PNG path (default: RUN/map.png)")


@cli
def generate_main(argv):
    from .run import load_run
    from .device import resolve_device
    # The subcommand may come after global flags (`--run X interpolate A B`); with none,
    # the command is `sample`.
    argv = list(argv)
    first = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if first is not None:
        argv.insert(0, argv.pop(first))
    elif argv in (["-h"], ["--help"]):
        parser = generate_parser()
        print(parser.format_help() + "\nThe default command, sample (`generate.py sample`):\n"
              + parser.default_command.format_help())
        return 0
    else:
        argv.insert(0, "sample")
    args = generate_parser().parse_args(argv)
    run = load_run(args.run, resolve_device(args.device))
    if args.command == "sample":
        return _sample(run, args)
    if args.command == "continue":
        return _continue(run, args)
    if args.command == "evaluate":
        return _evaluate(run, args)
    if args.command == "map":
        return _map(run, args)
    if args.command == "serve":
        from .web import serve
        return serve(run, args.port)
    out, text = _use(run, args)
    if args.format == "json":
        print(json.dumps(out, ensure_ascii=False, indent=None if args.command == "encode"
                         else 2))
    else:
        print(text)
    return 0


def _use(run, args):
    """interpolate, reconstruct, encode or complete: (JSON-able result, text)."""
    from .poem import clauses
    from .sampling import complete, encode, interpolate, interpolate_poems, reconstruct
    text = None
    if args.command == "interpolate":
        hows = ("linear", "spherical") if args.how == "both" else (args.how,)
        a, b = clauses(args.line_a), clauses(args.line_b)
        if len(a) > 1 or len(b) > 1:  # two poems: line i walks to line i
            out = {h: interpolate_poems(run, a, b, args.steps, h, args.allow_unk,
                                        _sample_config(args)) for h in hows}
            shown = {h: ["".join(couplets(p)) for p in out[h]] for h in hows}
        else:
            out = shown = {h: interpolate(run, args.line_a, args.line_b, args.steps, h,
                                          args.allow_unk, _sample_config(args)) for h in hows}
        text = "\n".join(f"{i}  " + "  ".join(f"{shown[h][i]}" for h in hows)
                         for i in range(args.steps))
        text = "   " + "  ".join(hows) + "\n" + text
    elif args.command == "reconstruct":
        lines = _lines_arg(args.lines, args.file)
        rec = reconstruct(run, lines, args.allow_unk, _sample_config(args))
        out = [{"line": a, "reconstruction": b} for a, b in zip(lines, rec)]
        text = "\n".join(f"{a}\t{b}" for a, b in zip(lines, rec))
    elif args.command == "encode":
        lines = _lines_arg(args.lines, args.file)
        mu, logvar = encode(run, lines, args.allow_unk)
        out = [{"line": s, "mu": m.tolist(), "logvar": v.tolist()}
               for s, m, v in zip(lines, mu, logvar)]
        args.format = "json"
    elif args.command == "complete":
        sc = _sample_config(args)
        out = [{"pattern": pat, "line": line}
               for pat, line in zip(args.patterns, complete(run, args.patterns, sc,
                                                            args.candidates))]
        text = "\n".join(f"{o['pattern']}\t{o['line']}" for o in out)
    else:
        out, text = _use_latent(run, args)
    return out, text


def _use_latent(run, args):
    """similar or shift: (JSON-able result, text)."""
    from .latent import attribute, shift, similar
    if args.command == "similar":
        lines = _lines_arg(args.lines, args.file)
        near = similar(run, lines, args.k)
        out = [{"line": a, "similar": [{"line": b, "distance": d} for b, d in n]}
               for a, n in zip(lines, near)]
        return out, "\n".join(f"{a}\t" + "  ".join(f"{b} {d:.2f}" for b, d in n)
                              for a, n in zip(lines, near))
    vector = attribute(run, args.toward, args.away)
    out = shift(run, args.line, vector, args.steps, args.scale, _sample_config(args))
    return out, "\n".join(f"{t:.2f}  {line}" for t, line in
                          zip(torch.linspace(0, args.scale, args.steps).tolist(), out))


def _map(run, args):
    from .files import atomic_write_bytes
    from .latent import map_png
    path = Path(args.out or Path(args.run) / "map.png")
    if path.parent and not path.parent.is_dir():
        raise UserError(f"--out: folder {path.parent} does not exist")
    atomic_write_bytes(path, map_png(run, args.num, args.colour, args.projection, args.labels))
    print(path)
    return 0


def _sample_config(args):
    """The SampleConfig of whichever of its fields this command has flags for."""
    names = {f.name for f in fields(SampleConfig)}
    return SampleConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def _sample(run, args):
    """Poems printed as they are written: any --num streams in constant memory."""
    if args.num < 1 or args.lines < 0:
        raise UserError("--num must be at least 1 and --lines at least 0")
    if args.acrostic is not None and not args.acrostic.strip():
        raise UserError("--acrostic needs at least one character")
    sc = _sample_config(args)
    form, tones = _form_and_tones(run, args, sc)
    if form:
        given = {k: v for k, v in (("rhyme", args.rhyme), ("rho", args.coherence))
                 if v is not None}  # else PoemConfig's defaults
        pc = PoemConfig(form_named(form), tones=tones, acrostic=args.acrostic or "", **given)
        stream = write_poems(run, pc, args.num, sc)
    else:
        n_lines = args.lines or run.config["data"]["lines_per_poem"]
        stream = poems(run, args.num, n_lines, sc, heads=args.acrostic)
    return _write_poems(stream, args.format, couplets if form else None)


def _form_and_tones(run, args, sc):
    """The form to write (None: free lines) and its tones, by poetry.chosen_form; a flag
    these poems would drop stops with one line instead."""
    free = bool(args.lines) or args.acrostic is not None or args.line_candidates is not None
    form, tones = chosen_form(run, sc, args.form, args.tones, free)
    if form and args.form and (args.lines or args.line_candidates is not None):
        raise UserError("--lines and --line-candidates are for free lines; "
                        f"--form {form} sets its own")
    if form and args.coherence is not None and chained(run, sc):
        raise UserError("--coherence sets the walk of a run without a poem model; this run "
                        "draws each line's z from its poem chain (--independent walks)")
    asked = ("--tones" if args.tones else "--coherence" if args.coherence is not None
             else "--rhyme" if args.rhyme not in (None, "off") else None)
    if asked and not form:
        fits = [f for f, v in sorted(VERSE_FORMS.items()) if v.chars in run.form.lengths]
        raise UserError(f"{asked} shapes a classical form, and these poems are free lines"
                        + (f": add --form {' or '.join(fits)}" if fits else ""))
    return form, tones


def _continue(run, args):
    if args.num < 1:
        raise UserError("--num must be at least 1")
    return _write_poems(continued(run, args.lines, args.num, _sample_config(args)), args.format)


def _write_poems(stream, how, shown=None):
    """Poems as they come: JSON lists of their lines, or text, each poem as ``shown``
    makes it (poetry.couplets for a form) or line by line."""
    if how == "json":  # one JSON list of poems, written poem by poem
        sys.stdout.write("[")
        for i, poem in enumerate(stream):
            sys.stdout.write(("," if i else "") + "\n  " + json.dumps(poem, ensure_ascii=False))
        sys.stdout.write("\n]\n")
        return 0
    for i, poem in enumerate(stream):
        text = shown(poem) if shown else poem
        sys.stdout.write(("\n" if i else "") + "\n".join(text) + "\n")
    return 0


def _evaluate(run, args):
    from tqdm import tqdm
    from .evaluate import evaluate_split, format_table
    from .files import write_json
    if args.iw_samples < 0 or args.num_samples < 0 or args.max_lines < 0:
        raise UserError("--iw-samples, --num-samples and --max-lines must be >= 0")
    bar = tqdm(desc=f"IW-NLL k={args.iw_samples}", unit="line", file=sys.stderr,
               disable=args.iw_samples == 0)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)
    res = evaluate_split(run, args.split, args.max_lines, iw_samples=args.iw_samples,
                         n_samples=args.num_samples, progress=progress)
    bar.close()
    write_json(Path(args.run) / "eval.json", res)
    if args.plot:
        from .files import atomic_write_bytes
        from .plots import evaluation
        atomic_write_bytes(Path(args.run) / "eval.png",
                           evaluation(res, f"{Path(args.run).name}, {args.split} split"))
        print(f"(plot in {Path(args.run) / 'eval.png'})", file=sys.stderr)
    print(json.dumps(res, indent=2) if args.format == "json" else format_table(res))
    print(f"(written to {Path(args.run) / 'eval.json'})", file=sys.stderr)
    return 0
