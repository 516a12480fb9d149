"""The default config against the su2018 baseline, same data, same wall-clock budget.

    python bench/quality.py [--minutes 15] [--iw-samples 500] [--max-lines 0]

For each config: time a few training steps, choose --epochs so that training takes
``--minutes`` (a run cut off by a clock would stop mid-way through its KL schedule), train
it with train.py, evaluate it with `generate.py evaluate` on the same test lines, and
print both tables side by side with the ratio default / su2018 of each figure.
Run folders go to runs/bench-<config>; existing ones are reused (delete to retrain).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textvae.evaluate import format_table  # noqa: E402
from bench.speed import configs_for, step_fn, time_steps  # noqa: E402
from textvae.data import load_corpus  # noqa: E402
from textvae.model import TextVAE  # noqa: E402
from textvae.tokenizer import CharTokenizer  # noqa: E402
from textvae.trainer import pick_device, use_amp  # noqa: E402

CONFIGS = {"default": [], "su2018": ["--preset", "su2018"]}


def epochs_for(name, minutes, data, tok, max_len, amp):
    """Epochs that fit in ``minutes``, from the measured step time (plus 5% for evals)."""
    tc, mc = configs_for(name, tok, max_len)
    model = TextVAE(mc)
    step = step_fn(model, torch.optim.Adam(model.parameters(), lr=tc.lr), amp)
    sec = time_steps(step, data, tc.batch_size, 40) * 1.05
    steps = minutes * 60 / sec
    return steps * tc.batch_size / len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per config")
    p.add_argument("--corpus", default="tang5")
    p.add_argument("--iw-samples", type=int, default=500)
    p.add_argument("--max-lines", type=int, default=0, help="evaluate on the first N test lines")
    args = p.parse_args()
    corpus = load_corpus(args.corpus)
    tok = CharTokenizer.train(corpus.train, 4000)
    data = torch.from_numpy(tok.encode_batch(corpus.train, corpus.max_len))
    amp = use_amp("auto", pick_device("auto"))
    results = {}
    for name, flags in CONFIGS.items():
        out = ROOT / "runs" / f"bench-{name}"
        if not (out / "summary.json").exists():
            epochs = epochs_for(name, args.minutes, data, tok, corpus.max_len, amp)
            print(f"{name}: {epochs:.2f} epochs fit in {args.minutes:g} min", flush=True)
            t = time.time()
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--corpus", args.corpus,
                            "--out", str(out), "--epochs", f"{epochs:.3f}", "--iw-samples",
                            "0", *flags], check=True, cwd=ROOT)
            print(f"{name}: trained and summarised in {(time.time() - t) / 60:.1f} min")
        subprocess.run([sys.executable, str(ROOT / "generate.py"), "evaluate", "--run",
                        str(out), "--iw-samples", str(args.iw_samples), "--max-lines",
                        str(args.max_lines), "--format", "json"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        results[name] = json.loads((out / "eval.json").read_text())
        metrics = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
        results[name]["train_steps"] = metrics[-1]["step"]
        results[name]["train_s"] = metrics[-1]["elapsed_s"]
    d, s = results["default"], results["su2018"]
    print(f"\n{args.corpus} test split ({d['lines']} lines), IW-NLL with k={args.iw_samples}; "
          f"training: default {d['train_steps']} steps in {d['train_s']:.0f} s, "
          f"su2018 {s['train_steps']} steps in {s['train_s']:.0f} s")
    print(format_table([d, s], ["default", "su2018"]))


if __name__ == "__main__":
    main()
