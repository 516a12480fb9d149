"""Blind reading panels: do readers take a system's poems (or lines) for real ones?

    python bench/blind.py pack panels/poems-1 --kind poems --n 20 \\
        --system real=real:quatrain5 --system default=run:runs/tang5 \\
        --system lines=independent:runs/tang5 --system gru=lm:runs/bench-charlm-stanza5
    # each reader sees only panels/poems-1/pack.md and writes panels/poems-1/ratings-NAME.txt
    python bench/blind.py score panels/poems-1 [--markdown]

``pack`` draws ``--n`` items from each system, shuffles them into one numbered pack with
the rubric (pack.md: nothing in it says where an item came from) and writes the hidden
key (key.json: each item's system, and how each system's items were made). ``score``
joins every ratings-*.txt with the key and prints, for each system, the mean of each
question with its standard error over items (each item's mean over readers), the share
of ratings that took its items for real, and each reader's own means.

Sources (SYSTEM=SOURCE):
  real:RECIPE        held-out items of a prepared corpus: quatrain5's valid+test poems,
                     or a line corpus' test lines (tang5)
  run:DIR            a run's free poems (generate.py --form free), or one line of each
  independent:DIR    the same run with --independent: each line its own z ~ N(0, I),
                     read at noise 0.5 as lines alone are (the run's poems: 0.8)
  form:DIR[:FORM]    the run's classical form writer, --form FORM (wujue) --tones: on a
                     poem model of five-character lines, generate.py's default
  lm:DIR             a GRU LM anchor's samples.json (bench/charlm.py)
  file:PATH          a JSON list of poems (lists of lines) or of lines
"""
import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.poem import clauses  # noqa: E402

RUBRICS = {
    "poems": {
        "questions": ("fluency", "coherence"),
        "text": """Each item below is a five-character quatrain (four lines). Some are real
classical Chinese poems, some were written by machines; read each on its own.

For every item give three answers:
- fluency, 1-5: does each line read as grammatical, meaningful classical Chinese?
  (1: broken, nonsensical phrases; 3: readable but awkward or vague; 5: fluent, as a
  competent poet writes)
- coherence, 1-5: is the poem as a whole coherent in meaning and theme? (1: four
  unrelated lines; 3: a loose shared mood or setting; 5: one scene, story or argument
  carried from the first line to the last)
- R or G: do you think it is a real poem (R) or machine-generated (G)?

Write one line per item, in this form, and nothing else:
<item number> <fluency> <coherence> <R or G>
for example: 17 3 2 G""",
    },
    "lines": {
        "questions": ("sense",),
        "text": """Each item below is one five-character line. Some come from real classical
Chinese poems, some were written by machines; read each on its own.

For every item give two answers:
- sense, 1-5: could this stand as a line of a real classical poem? (1: broken or
  meaningless; 3: grammatical but odd or empty; 5: a line a good poet could have written)
- R or G: do you think it is from a real poem (R) or machine-generated (G)?

Write one line per item, in this form, and nothing else:
<item number> <sense> <R or G>
for example: 17 3 G""",
    },
}


# ---------------------------------------------------------------------------------------
# Items of each system

def _held_out(recipe, kind):
    from textvae.corpora import prepare
    folder = prepare(recipe)
    text = [line.strip() for s in ("valid", "test") if s == "test" or kind == "poems"
            for line in (folder / f"{s}.txt").read_text(encoding="utf-8").splitlines()]
    return [clauses(t) if kind == "poems" else t for t in text if t]


def _from_run(source, how, n, seed):
    from textvae.decoding import SampleConfig
    from textvae.run import load_run
    folder, _, form = source.partition(":")
    run = load_run(folder)
    if how == "form":
        from textvae.poetry import PoemConfig, write_poems
        from textvae.prosody import form_named
        return list(write_poems(run, PoemConfig(form_named(form or "wujue"), "pingshui", True),
                                n, SampleConfig(seed=seed)))
    return run.poems(n, seed=seed, independent=how == "independent")


def _from_lm(folder):
    samples = json.loads((Path(folder) / "samples.json").read_text(encoding="utf-8"))["samples"]
    return [clauses(s) if re.search("[，。]", s) else s for s in samples]


def items_of(source, kind, n, seed):
    """At least ``n`` items (poems: lists of lines; lines: strings) of one source, where
    it has them, in a seeded order."""
    how, _, arg = source.partition(":")
    if how == "real":
        pool = _held_out(arg, kind)
    elif how in ("run", "independent", "form"):
        pool = _from_run(arg, how, n, seed)
    elif how == "lm":
        pool = _from_lm(arg)
    elif how == "file":
        pool = json.loads(Path(arg).read_text(encoding="utf-8"))
    else:
        raise SystemExit(f"blind.py: unknown source {source!r} (see --help)")
    pool = [p for p in pool if well_formed(p, kind)] if kind == "poems" else pool
    if kind == "lines":  # one line of each poem: lines are judged alone
        rng = random.Random(seed)
        pool = [rng.choice(p) if isinstance(p, list) else p for p in pool]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def well_formed(poem, kind):
    return kind != "poems" or (isinstance(poem, list) and len(poem) == 4
                               and all(len(line) == 5 for line in poem))


# ---------------------------------------------------------------------------------------
# The pack and its key

def make_pack(folder, kind, systems, n, seed):
    """Write pack.md and key.json into ``folder``; systems: (name, source) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "key.json").exists():
        raise SystemExit(f"blind.py: {folder} already holds a panel; pick a new folder")
    items = [(name, item) for name, source in systems
             for item in items_of(source, kind, n, seed)]
    random.Random(seed).shuffle(items)
    body = "\n\n".join(f"[{i}]\n" + ("\n".join(item) if kind == "poems" else item)
                       for i, (_, item) in enumerate(items, 1))
    (folder / "pack.md").write_text(RUBRICS[kind]["text"] + "\n\n" + body + "\n",
                                    encoding="utf-8")
    key = {"kind": kind, "seed": seed, "n": n, "sources": dict(systems),
           "items": [{"item": i, "system": name, "text": item}
                     for i, (name, item) in enumerate(items, 1)]}
    (folder / "key.json").write_text(json.dumps(key, ensure_ascii=False, indent=1),
                                     encoding="utf-8")
    return len(items)


def read_ratings(path, questions):
    """{item: (scores..., took_it_for_real)} from a reader's file; lines that do not
    parse are skipped (and counted by the caller)."""
    out = {}
    pattern = re.compile(r"^\s*\[?(\d+)\]?[\s,:;]+" + r"[\s,;]+".join(["([1-5])"] * len(questions))
                         + r"[\s,;]+([RGrg])\b")
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = pattern.match(line)
        if m:
            *scores, guess = m.groups()[1:]
            out[int(m.group(1))] = (*map(int, scores), guess.upper() == "R")
    return out


def _mean_se(values):
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return mean, se


def score(folder):
    """Per system: n items, each question's (mean, se over item means), share taken for
    real, and each reader's mean of the first question."""
    folder = Path(folder)
    key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    questions = RUBRICS[key["kind"]]["questions"]
    readers = {p.stem.removeprefix("ratings-"): read_ratings(p, questions)
               for p in sorted(folder.glob("ratings-*.txt"))}
    system_of = {it["item"]: it["system"] for it in key["items"]}
    table = {}
    for system in dict.fromkeys(it["system"] for it in key["items"]):
        mine = [i for i, s in system_of.items() if s == system]
        row = {"items": len(mine)}
        for q, name in enumerate(questions):
            per_item = [statistics.fmean(r[i][q] for r in readers.values() if i in r)
                        for i in mine if any(i in r for r in readers.values())]
            row[name] = _mean_se(per_item) if per_item else (float("nan"), 0.0)
        guesses = [r[i][-1] for r in readers.values() for i in mine if i in r]
        row["real"] = sum(guesses) / len(guesses) if guesses else float("nan")
        row["by_reader"] = {name: round(statistics.fmean(r[i][0] for i in mine if i in r), 2)
                            for name, r in readers.items() if any(i in r for i in mine)}
        table[system] = row
    missing = {name: len(system_of) - len(r) for name, r in readers.items()}
    return {"kind": key["kind"], "questions": questions, "readers": list(readers),
            "unrated": missing, "systems": table, "sources": key["sources"]}


def format_scores(res, markdown=False):
    qs = res["questions"]
    head = ["system", "items", *qs, "taken for real", "by reader (" + qs[0] + ")"]
    rows = [[name, str(r["items"]), *(f"{r[q][0]:.2f} ± {r[q][1]:.2f}" for q in qs),
             f"{100 * r['real']:.0f}%", " ".join(f"{v:.2f}" for v in r["by_reader"].values())]
            for name, r in res["systems"].items()]
    if markdown:
        return "\n".join("| " + " | ".join(r) + " |"
                         for r in [head, ["---"] * len(head), *rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write a shuffled pack and its hidden key")
    a.add_argument("folder")
    a.add_argument("--kind", choices=sorted(RUBRICS), default="poems")
    a.add_argument("--system", action="append", required=True, metavar="NAME=SOURCE")
    a.add_argument("--n", type=int, default=20, help="items a system")
    a.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="join the readers' ratings with the key")
    s.add_argument("folder")
    s.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    if args.command == "pack":
        systems = [tuple(x.split("=", 1)) for x in args.system]
        if any(len(x) != 2 for x in systems):
            raise SystemExit("blind.py: --system takes NAME=SOURCE")
        total = make_pack(args.folder, args.kind, systems, args.n, args.seed)
        print(f"{total} items -> {Path(args.folder) / 'pack.md'} (key: key.json)")
        return 0
    res = score(args.folder)
    if not res["readers"]:
        raise SystemExit(f"blind.py: no ratings-*.txt in {args.folder}")
    (Path(args.folder) / "scores.json").write_text(json.dumps(res, ensure_ascii=False, indent=1))
    print(f"{args.folder}: {len(res['readers'])} readers, unrated items {res['unrated']}")
    print(format_scores(res, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
