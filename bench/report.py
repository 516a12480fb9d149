"""Write docs/results.md from run folders and bench outputs, so no figure is copied by hand.

    python bench/report.py [--run runs/tang5] [--panels panels/poems-1 panels/lines-1]
                           [--poems-json runs/bench-poems.json] [--out docs/results.md]
                           [--readme README.md] [--compute runs/tang5 runs/tang5-hour]

Sections, each left out where its input is missing:
  the default run     its summary.json (test split) and config.json (steps, minutes, the
                      poem chain's fit)
  quality vs compute  --compute RUN ...: each run's budget, size, figures and the panels'
                      scores of its poems
  poem statistics     bench/poems.py --json
  speed               bench/speed.py's output saved to --speed (runs/bench-speed.txt)
  blind panels        a row a panel with its systems' means, then each panel's
                      scores.json (bench/blind.py score) in full, with the sources of its
                      systems and 16 items of each system verbatim, as readers saw them
The header names the date, the commit and the machine. With --readme, the block between
README.md's RESULTS markers is rewritten too: the first two panels' means, the run's training
curves (copied to docs/curves.png), and its first poems and an interpolation as
`generate.py` writes them (seed 0).
"""
import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RUN_ROWS = [  # (summary key, what it is)
    ("iw_nll", "IW-NLL (nats/line)"), ("kl", "KL (nats/line)"), ("au", "active units"),
    ("acc_mu", "char accuracy from mu"), ("exact_fit", "exact lines from fitted z"),
    ("novel", "samples novel"), ("unique", "samples unique"),
    ("distinct_2", "distinct-2 (samples)"), ("distinct_2_real", "distinct-2 (real lines)"),
    ("adjacent_repeat", "a character next to itself (samples)"),
    ("adjacent_repeat_real", "a character next to itself (real lines)"),
    ("kn_bits", "KN-3 bits/char (samples)"), ("kn_bits_real", "KN-3 bits/char (real lines)"),
    ("interp_distinct", "interpolation distinct lines / 8"),
    ("interp_changed", "interpolation chars changed / step"),
    ("interp_ends", "interpolation ends reconstructed"),
]


def git(*args):
    """What ``git args`` prints in this checkout, stripped ('' where git fails)."""
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                          text=True).stdout.strip()


def header():
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "textvae")
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    return (f"# Results\n\nWritten by `python bench/report.py` on "
            f"{datetime.date.today().isoformat()} at commit {commit}"
            f"{' (textvae/ changed since)' if dirty else ''}; machine: {cpu}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}. Every table "
            "below is read from the run folder or bench output named above it.\n")


def run_section(folder):
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    tc, fit = config["train"], config.get("chain_fit")
    lines = [f"## The default run: `{folder}`\n",
             f"`python train.py` (corpus {config['data']['corpus']}, --minutes "
             f"{tc['minutes']:g}): {summary['steps']:,} steps in {summary['train_s']:.0f} s "
             f"of training, test split ({summary.get('lines', '?')} lines).\n"]
    if fit:
        lines.append(f"Poem chain (--poems {tc.get('poems')}): {fit['stanzas']:,} stanzas "
                     f"encoded, {fit['steps']:,} steps in {fit['seconds']} s; a line's z on "
                     f"held-out stanzas {fit['valid_nll']} nats under the chain, "
                     f"{fit['valid_nll_independent']} as independent lines.\n")
    ctx = config.get("context_fit")
    if ctx:
        lines.append(f"Poem-context refiner: {ctx['steps']:,} steps in {ctx['seconds']} s; a "
                     f"held-out line read as a language model costs {ctx['valid_lm_nats']} "
                     f"nats after the lines before it, {ctx['valid_lm_nats_alone']} alone.\n")
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {what} | {_fmt(summary[key])} |" for key, what in RUN_ROWS if key in summary]
    return "\n".join(lines) + "\n"


def compute_section(runs, panels):
    """Quality against compute: each run's budget, size and figures, and the blind
    panels' scores of the poems it wrote (a panel system read from the run's folder)."""
    out = ["## Quality against compute\n",
           "Each run made by `train.py` on this machine with the settings shown; reader "
           "scores are coherence / fluency of its poems (wujue: the 五绝 generate.py wrote "
           "by default when the panel was packed, each line the best of 16 written before "
           "commit 287d654 and of all 64 since; free: its free four-line poems; else the "
           "form the panel names) and the sense of its lines, from every panel above that "
           "read this run (compare within a panel).\n",
           "| run | --minutes | of them the poem model | refiner | steps | context steps "
           "| IW-NLL | acc from mu | context nats (after / alone) | readers: coherence / "
           "fluency (panel) | readers: line sense (panel) |", "|" + " --- |" * 11]
    for folder in runs:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        config = json.loads((Path(folder) / "config.json").read_text())
        m, ctx = config["model"], config.get("context_fit") or {}
        extra = (config.get("context") or {}).get("extra_layers", 0)
        more = f" (+{extra} poem-model layers)" if extra else ""
        scores = list(_panel_scores(panels, folder))
        read = [f"{r['coherence'][0]:.2f} / {r['fluency'][0]:.2f} ({Path(p).name}, {how})"
                for p, kind, how, r in scores if kind == "poems"]
        sense = [f"{r['sense'][0]:.2f} ({Path(p).name}, {how})"
                 for p, kind, how, r in scores if kind == "lines"]
        tc = config["train"]
        out.append(f"| `{folder}` | {tc['minutes']:g} | {tc.get('poem_minutes', 0):g} | "
                   f"{m['refiner_layers']} x {m['refiner_dim']}{more} | {summary['steps']:,} | "
                   f"{ctx.get('steps', 0):,} | {summary['iw_nll']:.2f} | "
                   f"{summary['acc_mu']:.3f} | {ctx.get('valid_lm_nats', '-')} / "
                   f"{ctx.get('valid_lm_nats_alone', '-')} | {'; '.join(read) or '-'} | "
                   f"{'; '.join(sense) or '-'} |")
    return "\n".join(out) + "\n"


# A panel system's source (bench/blind.py) as the table names what it read: free
# poems, or the form after the folder (form:FOLDER:wujue).
READ_AS = {"run": "free", "form": "wujue"}


def _panel_scores(panels, folder):
    """(panel, its kind, what it read, that system's scores) for each panel system read
    from the run ``folder`` (run:FOLDER or form:FOLDER[:FORM], or a file key.json's
    ``written_by`` names as one of these); not a panel packed before
    the folder's config.json was last written, which read an earlier run of that name."""
    written = (Path(folder) / "config.json").stat().st_mtime
    for panel in panels:
        if (Path(panel) / "key.json").stat().st_mtime < written:
            continue
        res = json.loads((Path(panel) / "scores.json").read_text())
        # A file of poems says in key.json which run's writer made it, where one did.
        made = json.loads((Path(panel) / "key.json").read_text()).get("written_by", {})
        for name, src in res["sources"].items():
            how, _, rest = made.get(name, src).partition(":")
            where, _, form = rest.partition(":")
            if how in READ_AS and where == str(folder):
                yield panel, res["kind"], form or READ_AS[how], res["systems"][name]


def _fmt(v):
    return f"{v:,.3f}" if isinstance(v, float) else str(v)


def panel_index(panels):
    """One row a panel: each system's means, so the panels below can be found and
    compared at a glance."""
    out = ["## Blind panels at a glance\n",
           "Each panel's systems with their means (poems: fluency / coherence; lines: "
           "sense) and the share of ratings that took them for real; the sections below "
           "give each panel in full, with what its systems were and 16 of their items.\n",
           "| panel | systems |", "| --- | --- |"]
    for folder in panels:
        res = json.loads((Path(folder) / "scores.json").read_text())
        cells = [f"{name} {' / '.join(f'{r[q][0]:.2f}' for q in res['questions'])} "
                 f"({100 * r['real']:.0f}%)" for name, r in res["systems"].items()]
        name = Path(folder).name
        out.append(f"| [{name}](#blind-panel-{name}-{res['kind']}) | {'; '.join(cells)} |")
    return "\n".join(out) + "\n"


def panel_section(folder, shown=16):
    from blind import format_scores
    folder = Path(folder)
    res = json.loads((folder / "scores.json").read_text())
    key = json.loads((folder / "key.json").read_text())
    out = [f"## Blind panel `{folder.name}` ({res['kind']})\n",
           f"{len(res['readers'])} readers, each given only the pack and the rubric "
           f"(bench/blind.py), {key['n']} items a system; mean ± standard error over items "
           "(each item's mean over readers), 1-5.\n", format_scores(res, markdown=True), "",
           "Systems: " + "; ".join(f"{k} = `{v}`" for k, v in res["sources"].items()) + ".\n"]
    if key.get("settings"):  # written into key.json by whoever made the panel
        out.append(f"Written with: {key['settings']}.\n")
    for system in res["systems"]:
        items = [it["text"] for it in key["items"] if it["system"] == system][:shown]
        body = ("\n\n".join("\n".join(p) for p in items) if res["kind"] == "poems"
                else "  ".join(items))
        out.append(f"**{system}** (as the readers saw them):\n\n```text\n{body}\n```\n")
    return "\n".join(out)


def poems_section(path):
    data = json.loads(Path(path).read_text())
    cols = ["thread_margin", "kn_bits", "distinct_2", "novel", "unique", "overlap",
            "well_formed"]
    out = [f"## Poem statistics: `python bench/poems.py --poems {data['poems']}`\n",
           "Judges fitted on quatrain5's training poems. thread_margin: how much more a "
           "poem's lines belong together (character PMI across lines) than the same "
           "system's lines re-dealt at random. The poem model's line choice (its free poems "
           "and the default 五绝) scores candidates by a PMI table of the same kind (fitted "
           "on stanza5), so their margin is no longer an independent judge: the blind "
           "panels are.\n",
           "| system | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    out += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |"
            for name, r in data["rows"]]
    return "\n".join(out) + "\n"


def speed_section(path):
    """bench/speed.py's output as it printed it (`python bench/speed.py > FILE`)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    return (f"## Speed: `python bench/speed.py ... > {path}`\n\n{_saved_when(path)} "
            "The step's GFLOP/s beside this machine's matrix-product ceiling measured in "
            "the same run; writing lines in-process with the cached refiner beside the "
            "full-pass algorithm it replaced (both write the same lines); generate.py as "
            "a user runs it; the previous README's figures for reference.\n\n"
            f"```text\n{text}\n```\n")


def _saved_when(path):
    """When a saved bench output was written, against the last commit to textvae/: an
    older file timed code that has changed since."""
    saved = Path(path).stat().st_mtime
    last = git("log", "-1", "--format=%ct %h", "--", "textvae").split()
    when = datetime.datetime.fromtimestamp(saved).isoformat(" ", "minutes")
    if len(last) == 2 and saved < int(last[0]):
        return (f"Saved {when}, before textvae/ last changed (commit {last[1]}): these "
                "figures timed the code before it; rerun the bench for today's.")
    return f"Saved {when}, after the last change to textvae/."


MARKERS = ("<!-- RESULTS: written by bench/report.py -->", "<!-- /RESULTS -->")


def readme_block(run_dir, panels):
    """The README's results: each panel's table, then poems and a path of the run."""
    from blind import format_scores
    from textvae.decoding import SampleConfig
    from textvae.poetry import chosen_form, couplets
    from textvae.run import load_run
    out = []
    for folder in panels:
        res = json.loads((Path(folder) / "scores.json").read_text())
        out += [f"Blind panel `{Path(folder).name}`: {len(res['readers'])} readers, "
                f"{res['kind']} rated 1-5 ({', '.join(res['questions'])}):\n",
                format_scores(res, markdown=True), ""]
    shutil.copyfile(Path(run_dir) / "curves.png", ROOT / "docs" / "curves.png")
    out += [f"Training curves of `{run_dir}` (its curves.png, copied to docs/):\n",
            "![training curves](docs/curves.png)\n"]
    run = load_run(run_dir)
    form, tones = chosen_form(run, SampleConfig())  # what generate.py writes by default
    poems = run.poems(4, form=form, tones=tones, seed=0)
    poems = [couplets(p) for p in poems] if form else poems
    path = run.interpolate("白日依山尽", "床前明月光", steps=8, how="linear")
    out += [f"`python generate.py` (`{run_dir}`, seed 0):\n", "```text",
            "\n\n".join("\n".join(p) for p in poems), "```", "",
            "`python generate.py interpolate 白日依山尽 床前明月光 --how linear`:\n",
            "```text", "   linear", *(f"{i}  {line}" for i, line in enumerate(path)), "```"]
    return "\n".join(out)


def write_readme(path, block):
    text = Path(path).read_text(encoding="utf-8")
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise SystemExit(f"report.py: {path} lacks the markers {MARKERS}")
    text = text[:start + len(MARKERS[0])] + "\n" + block + "\n" + text[end:]
    Path(path).write_text(text, encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/tang5")
    p.add_argument("--panels", nargs="*", default=[])
    p.add_argument("--poems-json", default="runs/bench-poems.json")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--readme", help="also rewrite this README's RESULTS block")
    p.add_argument("--speed", default="runs/bench-speed.txt",
                   help="bench/speed.py's output, saved (left out where missing)")
    p.add_argument("--compute", nargs="*", default=[],
                   help="run folders trained for different budgets: the quality-against-"
                        "compute table")
    args = p.parse_args(argv)
    parts = [header()]
    if (Path(args.run) / "summary.json").exists():
        parts.append(run_section(args.run))
    scored = [f for f in args.panels if (Path(f) / "scores.json").exists()]
    runs = [f for f in args.compute if (Path(f) / "summary.json").exists()]
    if runs:
        parts.append(compute_section(runs, scored))
    if Path(args.poems_json).exists():
        parts.append(poems_section(args.poems_json))
    if Path(args.speed).exists():
        parts.append(speed_section(args.speed))
    if scored:  # the summaries first, then every panel in full
        parts.append(panel_index(scored))
    parts += [panel_section(f) for f in scored]
    Path(args.out).write_text("\n".join(parts), encoding="utf-8")
    print(f"{args.out}: {len(parts) - 1} sections")
    if args.readme:
        panels = [f for f in args.panels if (Path(f) / "scores.json").exists()]
        write_readme(args.readme, readme_block(args.run, panels[:2]))  # the newest two
        print(f"{args.readme}: results block rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
