"""Sample quality of the default model beside its anchors: same data, same budget.

    python bench/quality.py [--minutes 15] [--corpus tang5] [--run runs/tang5]
                            [--iw-samples 100] [--max-lines 0] [--runs runs]

Systems, each trained for ``--minutes`` of wall clock (train.py --minutes; for tang5 the
default run fits its poem chain within them too) on the same training split:
  default  the default VAE (``--run`` reuses a finished run, e.g. the README's)
  su2018   Su Jianlin's 2018 poetry VAE (``--preset su2018``)
  charlm   a one-layer GRU character LM (bench/charlm.py): what a user would pick to
           write lines if encoding, interpolation and completion did not matter
Every system's 1,000 samples are judged by the same functions (textvae.evaluate.
judge_samples): a Kneser-Ney character trigram fitted on the training split (fluency,
bits per character, beside real test lines), the reverse judge fitted on the samples,
adjacent repeats, novelty, uniqueness, distinct-2. The VAEs also get the likelihood,
latent-use, reconstruction and interpolation figures of ``generate.py evaluate``.
Run folders go to runs/bench-<system>-<corpus>; existing ones are reused.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textvae.data import load_corpus  # noqa: E402
from textvae.evaluate import evaluate_split, format_table, judge_samples  # noqa: E402
from textvae.run import load_run  # noqa: E402
from textvae.tokenizer import CharTokenizer  # noqa: E402
from textvae.device import resolve_device  # noqa: E402

VAES = {"default": [], "su2018": ["--preset", "su2018"]}


def train_vae(name, args, corpus):
    """The system's run, trained by train.py within --minutes (the budget is kept to the
    step), or reused where it exists."""
    out = Path(args.runs) / f"bench-{name}-{corpus.name}"
    if not (out / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--corpus", args.corpus,
                        "--out", str(out), "--minutes", str(args.minutes), "--iw-samples",
                        "0", *VAES[name]], check=True, cwd=ROOT)
    return out


def evaluate_vae(folder, args):
    run = load_run(folder, resolve_device("auto"))
    res = evaluate_split(run, "test", args.max_lines, iw_samples=args.iw_samples)
    hist = [json.loads(s) for s in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    res["train_steps"], res["train_s"] = hist[-1]["step"], hist[-1]["elapsed_s"]
    return res


def charlm(args, corpus, tok):
    from bench import charlm as lm
    out = Path(args.runs) / f"bench-charlm-{corpus.name}"
    if not (out / "samples.json").exists():
        lm.main(["--minutes", str(args.minutes), "--corpus", args.corpus, "--out", str(out)])
    saved = json.loads((out / "samples.json").read_text())
    test = corpus.splits["test"]
    res = judge_samples(saved["samples"], test, list(corpus.train), corpus.form, tok.vocab_size)
    res["train_steps"], res["train_s"] = saved["steps"], saved["minutes"] * 60
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per system")
    p.add_argument("--corpus", default="tang5")
    p.add_argument("--run", help="a finished default run to use instead of training one")
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--max-lines", type=int, default=0, help="evaluate N random test lines")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where the systems' runs go")
    args = p.parse_args()
    args.runs = str(Path(args.runs).resolve())  # train.py runs from the repository root
    if Path(args.corpus).is_file():
        args.corpus = str(Path(args.corpus).resolve())
    corpus = load_corpus(args.corpus)
    tok = CharTokenizer.train(corpus.train, 4000)  # the character LM's judge
    results = {}
    for name in VAES:
        t = time.time()
        folder = Path(args.run) if name == "default" and args.run else \
            train_vae(name, args, corpus)
        results[name] = evaluate_vae(folder, args)
        print(f"{name}: {folder} ready and evaluated in {(time.time() - t) / 60:.1f} min",
              flush=True)
    results["charlm"] = charlm(args, corpus, tok)
    names = list(results)
    print(f"\n{args.corpus} test split, IW-NLL with k={args.iw_samples}; training: " +
          ", ".join(f"{n} {r['train_steps']} steps in {r['train_s']:.0f} s"
                    for n, r in results.items()))
    print(format_table([results[n] for n in names], names))
    for n in names:
        print(f"\n{n}: " + " ".join(results[n]["sample_lines"]))


if __name__ == "__main__":
    main()
