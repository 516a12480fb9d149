"""Training and sampling speed of the default config and the su2018 baseline.

    python bench/speed.py [--steps 30]

Prints tables: lines/s of a training step for both configs (same process, same data),
the GFLOP/s the step achieves (FLOPs counted by torch's FlopCounterMode over one
forward + backward) next to this machine's matrix-product ceiling measured here (fp32
and bf16), sampling lines/s, peak memory, and how step time grows with the batch size
and with the corpus size.
"""
import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.config import TrainConfig, configs  # noqa: E402
from textvae.data import load_corpus  # noqa: E402
from textvae.model import TextVAE  # noqa: E402
from textvae.tokenizer import CharTokenizer  # noqa: E402
from textvae.trainer import resolve_device, use_amp  # noqa: E402


def matmul_ceiling(dtype, n=2048, reps=10):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def configs_for(name, tok, max_len):
    """(TrainConfig, VAEConfig) of 'default' or a preset, sized for this corpus."""
    tc, mc = configs(None if name == "default" else name)
    mc.vocab_size, mc.max_len = tok.vocab_size, max_len
    return tc, mc


def step_fn(model, opt, amp):
    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(batch, 1.0, 0.1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_steps(step, data, batch_size, steps):
    g = torch.Generator().manual_seed(0)
    batches = [data[torch.randint(0, len(data), (batch_size,), generator=g)]
               for _ in range(steps + 3)]
    for b in batches[:3]:
        step(b)  # warm-up
    t = time.perf_counter()
    for b in batches[3:]:
        step(b)
    return (time.perf_counter() - t) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--corpus", default="tang5")
    args = p.parse_args()
    torch.manual_seed(0)
    device = resolve_device("auto")
    amp = use_amp("auto", device)
    corpus = load_corpus(args.corpus)
    tok = CharTokenizer.train(corpus.train, TrainConfig().vocab_size)
    data = torch.from_numpy(tok.encode_batch(corpus.train, corpus.max_len))
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}, bf16 autocast {amp}; "
          f"{args.corpus}: {len(data)} train lines, length {corpus.max_len}, "
          f"vocab {tok.vocab_size}")
    ceil32, ceil16 = matmul_ceiling(torch.float32), matmul_ceiling(torch.bfloat16)
    print(f"matrix-product ceiling (2048^3): fp32 {ceil32:.0f} GFLOP/s, bf16 {ceil16:.0f} GFLOP/s\n")

    print(f"{'config':<10} {'batch':>5} {'ms/step':>8} {'lines/s':>9} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'of ceiling':>10} {'sample lines/s':>14} {'params':>8} {'peak RSS MB':>11}")
    rows = {}
    for name in ("default", "su2018"):
        tc, mc = configs_for(name, tok, corpus.max_len)
        model = TextVAE(mc)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        step = step_fn(model, opt, amp)
        batch = data[:tc.batch_size]
        with FlopCounterMode(display=False) as fc:
            step(batch)
        gflop = fc.get_total_flops() / 1e9
        sec = time_steps(step, data, tc.batch_size, args.steps)
        model.eval()
        with torch.no_grad():
            z = torch.randn(4096, mc.latent)
            model.decode(z).argmax(-1)
            t = time.perf_counter()
            model.decode(z).argmax(-1)
            sample_rate = 4096 / (time.perf_counter() - t)
        model.train()
        ceil = ceil16 if amp else ceil32
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows[name] = (model, opt, step)
        print(f"{name:<10} {tc.batch_size:>5} {sec * 1e3:>8.1f} {tc.batch_size / sec:>9.0f} "
              f"{gflop:>10.2f} {gflop / sec:>8.0f} {gflop / sec / ceil:>10.0%} "
              f"{sample_rate:>14.0f} {params:>7.2f}M {rss:>11.0f}")

    print("\nstep time against batch size (default config)")
    print(f"{'batch':>6} {'ms/step':>8} {'lines/s':>9}")
    _, _, step = rows["default"]
    for bs in (32, 64, 128, 256, 512, 1024):
        sec = time_steps(step, data, bs, max(5, args.steps // 2))
        print(f"{bs:>6} {sec * 1e3:>8.1f} {bs / sec:>9.0f}")

    print("\nepoch time against corpus size (default config, batch 256)")
    print(f"{'lines':>8} {'s/epoch':>8} {'lines/s':>9}")
    for n in (2_000, 8_000, 32_000):
        sub = data[:n]
        steps = (n + 255) // 256
        sec = time_steps(step, sub, 256, steps) * steps
        print(f"{n:>8} {sec:>8.1f} {n / sec:>9.0f}")
    print(f"(the full split, {len(data)} lines, takes about "
          f"{len(data) / (n / sec):.0f} s an epoch at that rate)")


if __name__ == "__main__":
    main()
