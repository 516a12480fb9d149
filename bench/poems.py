"""Whole poems: do the four lines of a quatrain belong together?

    python bench/poems.py [--run5 runs/tang5] [--runq runs/quatrain5 runs/stanza5]
                          [--lm runs/bench-charlm-stanza5] [--poems 500]

Systems, each writing five-character quatrains (each skipped when its run is missing):
  lines          the tang5 run's poems with --independent: four lines from four
                 independent z, read at noise 0.5 (the chain's lines: 0.8)
  poem chain     the run's free poems (`generate.py --form free`): z_t drawn from its
                 poem chain p(z_t | z_<t), each line the best of K (textvae/poem.py)
  default        `generate.py`: 五绝 with rhyme and tones on the poem chain (poetry.py)
  walk rho R     the tang5 run's form writer (`--form wujue`, rhyme off, no tones): the
                 lines' z walk, z_i = R z_(i-1) + sqrt(1 - R^2) eps, 64 candidates a line
  whole poem     the runs of `train.py --corpus quatrain5` (16,442 training quatrains)
                 and `--corpus stanza5` (295,758 four-line stanzas: quatrains and the
                 halves of longer poems): one z a poem, whose refiner writes all 24
                 positions left to right, so a line is written after the lines before it
  GRU LM         the anchor: `python bench/charlm.py --corpus stanza5 --minutes 15`, a
                 character GRU trained on the stanzas for the VAE's budget and sampled
                 at temperature 1 (its samples.json); it writes, it cannot encode
  real           the quatrain5 corpus' held-out poems (valid + test splits)
The judges are fitted on the quatrain5 training split only (its poems, their clauses),
and generation never uses them:
  thread   PoemThread (textvae/judge.py): the mean PMI, in bits, of a character of one
           line with one of another line of the poem; then the same system's lines
           re-dealt at random into poems (three deals), and the margin between the two:
           how much more a poem's lines belong together than lines of different poems
           of the same system. Independent lines score ~0 by construction.
  kn_bits  the KN character trigram of the evaluation, bits per character of a line
  overlap  share of a line's characters the line before also has (a tight walk copies)
  distinct_2, well_formed (four lines of five characters, none outside the vocabulary)
"""
import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.data import load_corpus  # noqa: E402
from textvae.decoding import SampleConfig
from textvae.sampling import poems, sample  # noqa: E402
from textvae.judge import CharKN, PoemThread, distinct_n  # noqa: E402
from textvae.poem import clauses  # noqa: E402
from textvae.poetry import PoemConfig, chosen_form, write_poems  # noqa: E402
from textvae.prosody import VERSE_FORMS  # noqa: E402
from textvae.run import load_run  # noqa: E402

HAN5 = re.compile(r"^[\u4e00-\u9fff]{5}$")


def redealt(poem_list, seed):
    """The same lines dealt into poems at random: lines of different poems."""
    lines = [line for p in poem_list for line in p]
    random.Random(seed).shuffle(lines)
    return [lines[i:i + 4] for i in range(0, len(lines) - 3, 4)]


def figures(poem_list, thread, kn, seen=frozenset()):
    ok = [p for p in poem_list if len(p) == 4 and all(HAN5.match(x) for x in p)]
    lines = [x for p in ok for x in p]
    novel = sum(x not in seen for x in lines) / max(len(lines), 1)
    own = thread.bits(ok)
    shuffled = sum(thread.bits(redealt(ok, s)) for s in range(3)) / 3
    pairs = [len(set(a) & set(b)) / len(a) for p in ok for a, b in zip(p, p[1:])]
    return {"poems": len(poem_list), "well_formed": len(ok) / max(len(poem_list), 1),
            "thread": own, "thread_shuffled": shuffled, "thread_margin": own - shuffled,
            "kn_bits": kn.bits_per_char(lines), "overlap": sum(pairs) / max(len(pairs), 1),
            "distinct_2": distinct_n(lines, 2), "novel": novel,
            "unique": len(set(lines)) / max(len(lines), 1), "shown": ok[:2]}


def systems(args, n):
    """(name, list of poems) for every system whose run exists."""
    out = []
    if (Path(args.run5) / "model.safetensors").exists():
        run = load_run(args.run5)
        out.append(("lines (independent z)",
                    list(poems(run, n, 4, SampleConfig(independent=True)))))
        for k in args.candidates if run.chain is not None else ():
            out.append((f"poem chain, best of {k}",
                        list(poems(run, n, 4, SampleConfig(line_candidates=k)))))
        for rho in args.rho:
            pc = PoemConfig(VERSE_FORMS["wujue"], rhyme="off", rho=rho)
            out.append((f"walk rho {rho}",
                        list(write_poems(run, pc, n, SampleConfig(independent=True)))))
        form, tones = chosen_form(run, SampleConfig())  # what generate.py writes
        if form:
            pc = PoemConfig(VERSE_FORMS[form], tones=tones)
            out.append((f"default: {form}, tones", list(write_poems(run, pc, n, SampleConfig()))))
    for folder in args.runq:
        if (Path(folder) / "model.safetensors").exists():
            run = load_run(folder)
            name = f"whole poem ({run.config['data']['corpus']})"
            out.append((name, [clauses(t) for t in sample(run, n)]))
    lm = Path(args.lm) / "samples.json"
    if lm.exists():
        out.append(("GRU LM (stanza5)", [clauses(t) for t in json.loads(lm.read_text())
                                          ["samples"][:n]]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run5", default="runs/tang5")
    p.add_argument("--runq", nargs="*", default=["runs/quatrain5", "runs/stanza5"])
    p.add_argument("--lm", default="runs/bench-charlm-stanza5")
    p.add_argument("--poems", type=int, default=500)
    p.add_argument("--rho", type=float, nargs="*", default=[0.1, 0.6])
    p.add_argument("--candidates", type=int, nargs="*", default=[1, 16],
                   help="the poem chain's lines drawn for each line written")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--quatrains", default="quatrain5", help="the real quatrains (a corpus "
                   "name or a file of poems): the judges' training split and held-out poems")
    p.add_argument("--seen", default="tang5", help="the lines the runs learnt from (a "
                   "corpus name or file): a sample line found in its training split is not novel")
    p.add_argument("--json", help="also write the table here (bench/report.py reads it)")
    args = p.parse_args(argv)
    corpus = load_corpus(args.quatrains, args.data_dir)
    train = [clauses(t) for t in corpus.splits["train"]]
    t = time.time()
    thread = PoemThread(train)
    kn = CharKN([x for poem in train for x in poem], 10_000)
    print(f"judges fitted on {len(train)} poems in {time.time() - t:.0f} s", flush=True)
    real = [clauses(t) for t in corpus.splits["valid"] + corpus.splits["test"]]
    # novel: lines found in no training line of tang5 (the lines the runs learnt from)
    seen = set(load_corpus(args.seen, args.data_dir).splits["train"])
    rows = [(f"real held-out ({len(real)})", figures(real, thread, kn, seen))]
    for name, poem_list in systems(args, args.poems):
        rows.append((name, figures(poem_list, thread, kn, seen)))
        print(f"{name} done", flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"poems": args.poems, "rows": [[name, {k: v for k, v in r.items() if k != "shown"}]
                                           for name, r in rows]}, ensure_ascii=False, indent=1))
    for name, r in rows:
        print(f"\n{name}:")
        print("\n\n".join("\n".join(p) for p in r["shown"]))


def print_table(rows):
    cols = ["well_formed", "thread", "thread_shuffled", "thread_margin", "kn_bits",
            "overlap", "distinct_2", "novel", "unique"]
    print(f"\n| system | {' | '.join(cols)} |")
    print("|" + "---|" * (len(cols) + 1))
    for name, r in rows:
        print(f"| {name} | {' | '.join(f'{r[c]:.3f}' for c in cols)} |")


if __name__ == "__main__":
    main()
