"""Classical forms: do our poems keep form, rhyme and tones, and at what cost in fluency?

    python bench/poetry.py [--run5 runs/tang5] [--run7 runs/tang7] [--poems 200]

For each form (五绝 wujue, 七绝 qijue, 五律 wulv, 七律 qilv; the 5-character forms from
--run5, the 7-character ones from --run7, each skipped when its run is missing):
  constrained    ``--rhyme pingshui --tones`` poems (textvae.poetry.write_poems)
  unconstrained  the same writer with rhyme off and no tones
  acrostic       constrained poems with one given character per line
  real           every Tang poem of that shape in the chinese-poetry archive: how often
                 real poets comply with the same checker
The checker below is independent of the generator: it reads the 平水韵 table
(textvae.prosody.table, the data only) and applies the rules itself, on the printed text:
  form    couplets '甲，乙。', the right number of lines and characters
  rhyme   the last characters of the even lines share a 平 rhyme group
  tones   each line's 2nd, 4th, (6th) and last characters follow the form's template
          (仄起 or 平起, whichever fits the poem better); a character with readings of
          both tones fits either; poems = every line fits, lines = share of lines
  faults  share of lines free of 孤平 and 三平尾 (``fault``), the faults of a 平-ending
          line that the key positions alone let through
Fluency: the KN trigram judge fitted on the run's training split, bits per character
(for real poems, over their lines outside that split).
Coherence: the share of a line's characters that the line before also has.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textvae.corpora import fetch_poetry, poems_of_shape, split_of  # noqa: E402
from textvae.data import corpus_of_run  # noqa: E402
from textvae.decoding import SampleConfig  # noqa: E402
from textvae.judge import CharKN  # noqa: E402
from textvae.poetry import PoemConfig, couplets, write_poems  # noqa: E402
from textvae.prosody import VERSE_FORMS, PING, table  # noqa: E402
from textvae.run import load_run  # noqa: E402

ACROSTIC = "春夏秋冬风花雪月"

# ---------------------------------------------------------------------------------------
# The independent checker: text in, verdicts out


def parse(text, form):
    """The clauses of a printed poem, or None when its form is wrong."""
    couplet_texts = text.split("\n")
    clauses = []
    for c in couplet_texts:
        if len(c) != 2 * form.chars + 2 or c[form.chars] != "，" or c[-1] != "。":
            return None
        clauses += [c[:form.chars], c[form.chars + 1:-1]]
    return clauses if len(clauses) == form.lines else None


BASE = ["仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"]


def template(form, first_pattern):
    """Lines' patterns given the first line's (a rhyming first line only changes line 1)."""
    order = {"仄仄平平仄": [0, 1, 2, 3], "平平平仄仄": [2, 3, 0, 1],
             "仄仄仄平平": [0, 1, 2, 3], "平平仄仄平": [2, 3, 0, 1]}[first_pattern]
    five = [BASE[k] for k in order] * (form.lines // 4)
    five[0] = first_pattern
    if form.chars == 7:
        other = {"平": "仄", "仄": "平"}
        return [other[p[0]] * 2 + p for p in five]
    return five


def line_fits(line, pattern, tab):
    keys = {1, 3, len(line) - 1} | ({5} if len(line) == 7 else set())
    return all(pattern[k] in tab.tones(line[k]) for k in keys)


def tone_verdict(clauses, form, tab):
    """(every line fits, share of lines that fit) under the better-fitting template."""
    best = 0
    for first in BASE:
        pats = template(form, first)
        best = max(best, sum(line_fits(c, p, tab) for c, p in zip(clauses, pats)))
    return best == form.lines, best / form.lines


def fault(line, tab):
    """'三平尾' or '孤平' for a 平-ending line that has one, else None. Readings are
    counted leniently: a character read either way (or missing from the table) counts
    as 平 for 孤平, and only characters read 平 alone make a 三平尾."""
    ping = [PING in tab.tones(c) or not tab.tones(c) for c in line]
    if not ping[-1]:
        return None
    if all(tab.tones(c) == {PING} for c in line[-3:]):
        return "三平尾"
    inner = [i for i, p in enumerate(ping[:-1]) if p]
    return "孤平" if len(inner) == 1 and inner[0] < len(line) - 2 else None


def rhymes(clauses, tab):
    groups = None
    for c in clauses[1::2]:
        g = tab.groups(c[-1], PING)
        groups = g if groups is None else groups & g
    return bool(groups)


def check(texts, form, tab):
    parsed = [parse(t, form) for t in texts]
    ok = [c for c in parsed if c is not None]
    tones = [tone_verdict(c, form, tab) for c in ok]
    n = max(len(ok), 1)
    return {"n": len(texts), "form": len(ok) / len(texts),
            "rhyme": sum(rhymes(c, tab) for c in ok) / n,
            "tone_poems": sum(t[0] for t in tones) / n,
            "tone_lines": sum(t[1] for t in tones) / n,
            "faultless": sum(fault(c, tab) is None for p in ok for c in p) / max(
                sum(len(p) for p in ok), 1),
            "overlap": overlap(ok), "clauses": ok}


def heads_ok(text, form, heads):
    clauses = parse(text, form)
    return clauses is not None and all(c[0] == h for c, h in zip(clauses, heads))


def overlap(poems):
    pairs = [len(set(a) & set(b)) / len(a) for p in poems for a, b in zip(p, p[1:])]
    return sum(pairs) / max(len(pairs), 1)


# ---------------------------------------------------------------------------------------


def ours(run, form, n, **kw):
    pc = PoemConfig(VERSE_FORMS[form], **kw)
    return ["\n".join(couplets(p)) for p in write_poems(run, pc, n, SampleConfig())]


def real_row(tgz, form, tab, judge):
    """(system name, figures) of every real Tang poem of the form's shape."""
    real = ["\n".join(f"{a}，{b}。" for a, b in zip(c[0::2], c[1::2]))
            for c in poems_of_shape(tgz, form.chars, form.lines, "tang")]
    r = check(real, form, tab)
    # Most real lines are in the judge's training split; score the held-out ones.
    r["kn_bits"] = judge.bits_per_char([c for poem in r.pop("clauses") for c in poem
                                        if split_of(c) != "train"])
    return f"real Tang ({len(real)})", r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run5", default="runs/tang5")
    p.add_argument("--run7", default="runs/tang7")
    p.add_argument("--poems", type=int, default=200)
    p.add_argument("--acrostic", default=ACROSTIC, help="the acrostic rows' head characters")
    p.add_argument("--no-real", action="store_true", help="leave out the real Tang rows "
                   "(which need the chinese-poetry archive)")
    args = p.parse_args(argv)
    tab = table("pingshui")
    tgz = None if args.no_real else fetch_poetry()
    rows, shown = [], []
    for name, form in VERSE_FORMS.items():
        folder = Path(args.run5 if form.chars == 5 else args.run7)
        if not (folder / "model.safetensors").exists():
            print(f"{name}: no run at {folder}, skipped", flush=True)
            continue
        run = load_run(str(folder))
        corpus = corpus_of_run(run)
        judge = CharKN(corpus.train, len(run.tokenizer.chars))
        systems = {
            "constrained": dict(rhyme="pingshui", tones=True),
            "unconstrained": dict(rhyme="off"),
            "acrostic": dict(rhyme="pingshui", tones=True, acrostic=args.acrostic[:form.lines]),
        }
        for sys_name, kw in systems.items():
            t = time.time()
            texts = ours(run, name, args.poems, **kw)
            r = check(texts, form, tab)
            lines = [c for poem in r.pop("clauses") for c in poem]
            r["kn_bits"] = judge.bits_per_char(lines)
            r["poems_per_s"] = len(texts) / (time.time() - t)
            if "acrostic" in kw:
                r["acrostic"] = sum(heads_ok(t, form, kw["acrostic"]) for t in texts) / len(texts)
            rows.append((name, sys_name, r))
            shown.append((name, sys_name, texts[:2]))
        if tgz is not None:
            rows.append((name, *real_row(tgz, form, tab, judge)))
        print(f"{name} done", flush=True)
    print_table(rows)
    for name, sys_name, texts in shown:
        print(f"\n{name} {sys_name}:")
        print("\n\n".join(texts))


def print_table(rows):
    cols = ["form", "rhyme", "tone_poems", "tone_lines", "faultless", "kn_bits", "overlap",
            "acrostic"]
    print(f"\n| form | system | {' | '.join(cols)} |")
    print("|" + "---|" * (len(cols) + 2))
    for name, sys_name, r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "" for c in cols]
        print(f"| {name} | {sys_name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
