"""Training, evaluation and generation speed of the default config and the su2018 baseline.

    python bench/speed.py [--steps 30] [--run runs/tang5]

Prints tables: lines/s of a training step for both configs (same process, same data),
the GFLOP/s the step achieves (FLOPs counted by torch's FlopCounterMode over one
forward + backward) next to this machine's matrix-product ceiling measured here (fp32
and bf16), sampling lines/s, peak memory, and how step time grows with the batch size
and with the corpus size; IW-NLL at k = 100, batched against the per-line loop it
replaced; and, given a trained run, `generate.py` streaming lines into a file: time to
the first poem, lines/s, peak memory at two --num. Everything runs on the device
`--device auto` picks (cuda, then mps, then cpu), with the autocast training would use.
"""
import argparse
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.config import TrainConfig, configs  # noqa: E402
from textvae.data import load_corpus  # noqa: E402
from textvae.evaluate import iw_nll, log_normal  # noqa: E402
from textvae.model import TextVAE  # noqa: E402
from textvae.tokenizer import CharTokenizer  # noqa: E402
from textvae.trainer import resolve_device, use_amp  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(dtype, device, n=2048, reps=10):
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def configs_for(name, tok, max_len):
    """(TrainConfig, VAEConfig) of 'default' or a preset, sized for this corpus."""
    tc, mc = configs(None if name == "default" else name)
    mc.vocab_size, mc.max_len = tok.vocab_size, max_len
    return tc, mc


def step_fn(model, opt, amp, device):
    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(batch, 1.0, 0.1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_steps(step, data, batch_size, steps, device):
    g = torch.Generator().manual_seed(0)
    batches = [data[torch.randint(0, len(data), (batch_size,), generator=g)].to(device)
               for _ in range(steps + 3)]
    for b in batches[:3]:
        step(b)  # warm-up
    sync(device)
    t = time.perf_counter()
    for b in batches[3:]:
        step(b)
    sync(device)
    return (time.perf_counter() - t) / steps


@torch.no_grad()
def iw_nll_per_line(model, idx, k, gen):
    """The anchor: IW-NLL as the first wave computed it, one line's k samples at a time
    (with the transposed cross-entropy it used)."""
    mu, logvar = model.encode(idx)
    out = []
    for b in range(len(idx)):
        z = mu[b] + (0.5 * logvar[b]).exp() * torch.randn(k, mu.shape[1], generator=gen).to(mu.device)
        logits = model.decode(z).float()
        px = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), idx[b].expand(k, -1),
                                                reduction="none").sum(-1)
        logw = px + log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - \
            log_normal(z, mu[b], logvar[b])
        out.append(-(torch.logsumexp(logw, 0) - math.log(k)))
    return torch.stack(out)


def time_iw(model, data, device, n=640, k=100):
    """Seconds per line of IW-NLL at k samples: (per-line loop, batched by 64 lines)."""
    idx = data[:n].to(device)
    model.eval()
    out = []
    for fn in (lambda b: iw_nll_per_line(model, b, k, torch.Generator().manual_seed(0)),
               lambda b: iw_nll(model, b, k, gen=torch.Generator().manual_seed(0))):
        sync(device)
        t = time.perf_counter()
        for batch in idx.split(64):
            fn(batch)
        sync(device)
        out.append((time.perf_counter() - t) / n)
    model.train()
    return out


def time_generation(run, num):
    """generate.py --num ``num`` into a file, as a user runs it: seconds to the first
    poem on stdout, lines written, lines/s over the whole run, peak RSS (MB)."""
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "generate.py"), "--run",
           str(run), "--num", str(num), "--format", "text"]
    t, t_first, lines = time.perf_counter(), None, 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            f.write(line)
            if line.strip():
                t_first = t_first or time.perf_counter() - t
                lines += 1
        proc.wait()
    total = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return t_first, lines, lines / total, rss


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--corpus", default="tang5")
    p.add_argument("--run", default="runs/tang5", help="a trained run, for the generation "
                   "table (skipped if missing)")
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
    ceil32, ceil16 = matmul_ceiling(torch.float32, device), matmul_ceiling(torch.bfloat16, device)
    print(f"matrix-product ceiling (2048^3): fp32 {ceil32:.0f} GFLOP/s, bf16 {ceil16:.0f} GFLOP/s\n")

    print(f"{'config':<10} {'batch':>5} {'ms/step':>8} {'lines/s':>9} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'of ceiling':>10} {'sample lines/s':>14} {'params':>8} {'peak RSS MB':>11}")
    rows = {}
    for name in ("default", "su2018"):
        tc, mc = configs_for(name, tok, corpus.max_len)
        model = TextVAE(mc).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        step = step_fn(model, opt, amp, device)
        batch = data[:tc.batch_size].to(device)
        with FlopCounterMode(display=False) as fc:
            step(batch)
        gflop = fc.get_total_flops() / 1e9
        sec = time_steps(step, data, tc.batch_size, args.steps, device)
        model.eval()
        with torch.no_grad():
            z = torch.randn(4096, mc.latent, device=device)
            model.decode(z).argmax(-1)
            sync(device)
            t = time.perf_counter()
            model.decode(z).argmax(-1)
            sync(device)
            sample_rate = 4096 / (time.perf_counter() - t)
        model.train()
        ceil = ceil16 if amp else ceil32
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host memory
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows[name] = (model, opt, step)
        print(f"{name:<10} {tc.batch_size:>5} {sec * 1e3:>8.1f} {tc.batch_size / sec:>9.0f} "
              f"{gflop:>10.2f} {gflop / sec:>8.0f} {gflop / sec / ceil:>10.0%} "
              f"{sample_rate:>14.0f} {params:>7.2f}M {rss:>11.0f}")

    print("\nstep time against batch size (default config)")
    print(f"{'batch':>6} {'ms/step':>8} {'lines/s':>9}")
    _, _, step = rows["default"]
    for bs in (32, 64, 128, 256, 512, 1024):
        sec = time_steps(step, data, bs, max(5, args.steps // 2), device)
        print(f"{bs:>6} {sec * 1e3:>8.1f} {bs / sec:>9.0f}")

    print("\nepoch time against corpus size (default config, batch 256)")
    print(f"{'lines':>8} {'s/epoch':>8} {'lines/s':>9}")
    for n in (2_000, 8_000, 32_000):
        sub = data[:n]
        steps = (n + 255) // 256
        sec = time_steps(step, sub, 256, steps, device) * steps
        print(f"{n:>8} {sec:>8.1f} {n / sec:>9.0f}")
    print(f"(the full split, {len(data)} lines, takes about "
          f"{len(data) / (n / sec):.0f} s an epoch at that rate)")

    print("\nIW-NLL, k = 100, 640 lines in batches of 64 (default config)")
    loop, batched = time_iw(rows["default"][0], data, device)
    print(f"per-line loop (first wave) {loop * 1e3:7.2f} ms/line\n"
          f"batched                    {batched * 1e3:7.2f} ms/line   {loop / batched:.1f}x")

    if not (Path(args.run) / "config.json").exists():
        print(f"\n(no run at {args.run}: generation table skipped)")
        return
    print(f"\ngenerate.py --run {args.run} --num N > file (its own process; peak RSS of the "
          "largest so far)")
    print(f"{'poems':>8} {'lines':>8} {'first poem s':>12} {'lines/s':>9} {'peak RSS MB':>11}")
    for num in (250, 2_500):
        t_first, lines, rate, rss = time_generation(args.run, num)
        print(f"{num:>8} {lines:>8} {t_first:>12.2f} {rate:>9.0f} {rss:>11.0f}")


if __name__ == "__main__":
    main()
