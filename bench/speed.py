"""Training, evaluation and generation speed of the default config and the su2018 baseline.

    python bench/speed.py [--steps 30] [--run runs/tang5] [--sizes 100000,1000000,10000000]
                          [--smoke]

Prints tables: lines/s of a training step for both configs (same process, same data;
on a GPU also the compiled step train.py takes there), the GFLOP/s the step achieves
(FLOPs counted by torch's FlopCounterMode over one forward + backward) next to this
machine's matrix-product ceiling measured here (fp32 and bf16), sampling lines/s, peak
memory, host syncs per step on a GPU, and how step time grows with the batch size; the
scaling table: preparing and training on synthetic corpora of --sizes lines through the
uint16 token cache, each in its own process; IW-NLL at k = 100, batched against the
per-line loop it replaced; and, given a trained run, writing lines in-process (the heads
alone, the full path with the cached refiner, the same path recomputing every pass as
before, the default poems both ways) and `generate.py` streaming into a file as a user
runs it (time to the first poem, lines/s, peak memory). Everything runs on the device
`--device auto` picks (cuda, then mps, then cpu), with the autocast training would use.
--smoke runs a few of everything, to check the bench works (the test suite does).
"""
import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textvae.config import configs  # noqa: E402
from textvae.data import load_corpus  # noqa: E402
from textvae.evaluate import iw_nll, log_normal  # noqa: E402
from textvae.model import Dropout, TextVAE  # noqa: E402
from textvae.tokenizer import VOCAB, CharTokenizer  # noqa: E402
from textvae.batches import TokenIds, cache_file, epoch_order  # noqa: E402
from textvae.device import (bf16_is_faster, compiled, fused_adam, product_seconds,  # noqa: E402
                            resolve_device, use_amp)
from textvae import decoding, poem  # noqa: E402
from textvae.decoding import SampleConfig, for_run  # noqa: E402
from textvae.run import load_run  # noqa: E402

# The figures of the README before the cached refiner (commit bde3586, on the 2-core CPU
# of its time, an EPYC that multiplied bf16 natively),
# printed beside this run's for reference; the generation rows also time the old
# algorithm itself (decoding.write_ids(cached=False)) in the same run.
PREVIOUS = {"step ms": 224, "of ceiling": 0.43, "generate.py lines/s (lines)": 970}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(dtype, device, n=2048):
    """GFLOP/s of n x n products, the fastest of three rounds (product_seconds): the
    2-core EPYC's pace wanders (123-176 GFLOP/s), and a slow round would flatter the
    step's share of it."""
    return 2 * n ** 3 / product_seconds(dtype, n, reps=4, device=device) / 1e9


def configs_for(name, tok, max_len):
    """(TrainConfig, VAEConfig) of 'default' or a preset, sized for this corpus."""
    tc, mc = configs(None if name == "default" else name)
    mc.vocab_size, mc.max_len = tok.vocab_size, max_len
    return tc, mc


def step_fn(model, opt, amp, device, compile_step=False):
    """One training step as the trainer takes it (compiled, as --compile on, if asked)."""
    loss_of = compiled(model.loss) if compile_step else model.loss
    beta = torch.full((), 1.0, device=device)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(batch, beta, 0.1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def host_syncs(step, batch, device):
    """How many times one step makes the host wait for the GPU (torch's sync debug mode)."""
    if device.type != "cuda":
        return None
    step(batch)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


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
        eps = torch.randn(k, mu.shape[1], generator=gen).to(mu.device)
        z = mu[b] + (0.5 * logvar[b]).exp() * eps
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


def peak_rss_mb(pid="self", field="VmHWM"):
    """A process's own peak resident memory (VmHWM; VmRSS: now), None off Linux. Not
    getrusage's ru_maxrss: Linux carries that across fork and exec, so a child's figure
    starts at its parent's memory (this bench's children all read 1.3 GB that way)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next(int(line.split()[1]) / 1024 for line in f
                        if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def own_memory_mb(make):
    """(what ``make()`` returns, the MB of memory it added at its peak): the process's
    peak is reset first (Linux's clear_refs), so configs built earlier do not count."""
    before = peak_rss_mb(field="VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        before = None
    out = make()
    return out, None if before is None else peak_rss_mb() - before


def time_generation(run, num, device, extra=()):
    """generate.py --num ``num`` into a file, as a user runs it: seconds to the first
    poem on stdout, lines written, lines/s over the whole run, its peak RSS (MB; read
    while it writes, the last look at its end of output)."""
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "generate.py"), "--run",
           str(run), "--num", str(num), "--format", "text", "--device", str(device), *extra]
    t, t_first, lines = time.perf_counter(), None, 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        rss = 0
        for line in proc.stdout:
            f.write(line)
            if line.strip():
                t_first = t_first or time.perf_counter() - t
                lines += 1
                if lines % 1000 == 0:
                    rss = max(rss, peak_rss_mb(proc.pid) or 0)
        rss = max(rss, peak_rss_mb(proc.pid) or 0)
        proc.wait()
    total = time.perf_counter() - t
    return t_first, lines, lines / total, rss


def synthetic_corpus(path, n, tok, seed=0):
    """``n`` lines of five characters drawn uniformly from ``tok``'s vocabulary (distinct
    with near certainty: 4000^5 lines), written a million at a time."""
    chars = np.array([c for c in tok.chars if len(c) == 1 and not c.isspace()])
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 1_000_000):
            ids = rng.integers(len(chars), size=(min(1_000_000, n - start), 5))
            f.write("\n".join(chars[ids].view("<U5").ravel().tolist()) + "\n")


def child(argv):
    """One row of the scaling table in a process of its own, printing a JSON object.
    prepare FILE: read the corpus, fit the tokenizer, write the token cache (as train.py
    does). epoch IDS MAX_LEN VOCAB STEPS DEVICE: one full epoch of batch reads from the
    cache, and STEPS training steps of the default model on them."""
    kind, path = argv[0], Path(argv[1])
    t = time.perf_counter()
    if kind == "prepare":
        corpus = load_corpus(str(path))
        tok = CharTokenizer.train(corpus.train, VOCAB["chars"])
        ids = cache_file(corpus, tok, corpus.max_chars, folder=path.parent)
        out = {"ids": str(ids), "max_len": corpus.max_chars, "vocab": tok.vocab_size,
               "s": time.perf_counter() - t}
    else:
        max_len, vocab, steps, device = int(argv[2]), int(argv[3]), int(argv[4]), \
            torch.device(argv[5])
        ids = TokenIds(path, max_len, device)
        order = epoch_order(len(ids), 0, 0, device)  # the trainer's: KeyedOrder past 1M
        for b in range(0, len(ids), 256):  # the data path of one epoch
            ids.batch(order[b:b + 256])
        sync(device)
        data_s = time.perf_counter() - t
        tc, mc = configs(None)
        mc.vocab_size, mc.max_len = vocab, max_len
        model = TextVAE(mc).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=fused_adam(device))
        step = step_fn(model, opt, use_amp("auto", device), device, device.type == "cuda")
        step_s = time_steps(step, ids.batch(order[:256 * (steps + 3)]), 256, steps, device)
        out = {"data_s": data_s, "step_s": step_s,
               "epoch_s": data_s + step_s * math.ceil(len(ids) / 256)}
    out["rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def run_child(*argv):
    # The prepared corpus (split files) and the token cache go to the corpus's own
    # temporary folder, not the user's cache.
    env = {**os.environ, "TEXTVAE_CACHE": str(Path(argv[1]).parent)}
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"scaling child {argv[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling_table(tok, sizes, steps, device):
    """Seconds and peak memory against corpus size, each size's preparation and epoch
    in processes of their own, so that each peak RSS is that work's alone."""
    print(f"\ncorpus size (synthetic five-character lines, batch 256; each cell its own "
          f"process; epoch = one epoch of batch reads from the uint16 cache + its steps "
          f"at the measured step time, {device})")
    print(f"{'lines':>10} {'prepare s':>9} {'prep RSS MB':>11} {'cache MB':>8} "
          f"{'reads s':>8} {'step ms':>8} {'epoch s':>9} {'epoch RSS MB':>12}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"synthetic{n}.txt"
            synthetic_corpus(path, n, tok)
            prep = run_child("prepare", path)
            size_mb = Path(prep["ids"]).stat().st_size / 2**20
            ep = run_child("epoch", prep["ids"], prep["max_len"], prep["vocab"], steps, device)
        print(f"{n:>10,} {prep['s']:>9.1f} {prep['rss_mb']:>11.0f} {size_mb:>8.1f} "
              f"{ep['data_s']:>8.1f} {ep['step_s'] * 1e3:>8.1f} {ep['epoch_s']:>9.0f} "
              f"{ep['rss_mb']:>12.0f}")


def torch_dropout(module):
    """The step as it was before (commit 3937064): torch's own dropout in place of the
    model's CPU masks (and, in step_table, Adam a tensor at a time)."""
    for name, child in module.named_children():
        if isinstance(child, Dropout):
            setattr(module, name, torch.nn.Dropout(child.p))
        else:
            torch_dropout(child)


def build_step(name, tok, max_len, amp, device):
    """(model, opt, step, batch size) of one config of step_table."""
    tc, mc = configs_for(name.split("+")[0], tok, max_len)
    model = TextVAE(mc).to(device)
    before = name.endswith("+before")
    if before:
        torch_dropout(model)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr,
                           fused=fused_adam(device) and not before)
    return model, opt, step_fn(model, opt, amp, device,
                               compile_step=name.endswith("+compile")), tc.batch_size


# Each config's steps are timed in this many rounds taken in turn, the fastest kept: this
# VM's pace drifts by a tenth within a minute, which one round a config would credit to it.
ROUNDS = 3


def first_steps(name, tok, max_len, amp, device, data, gflops):
    """(config ``name`` built, the GFLOP of its step) after its first step."""
    model, opt, step, bs = built = build_step(name, tok, max_len, amp, device)
    batch = data[:bs].to(device)
    if name.endswith("+compile"):
        step(batch)                        # the same arithmetic as the default's; the
        return built, gflops["default"]    # counter cannot see inside a compiled graph
    with FlopCounterMode(display=False) as fc:
        step(batch)
    return built, fc.get_total_flops() / 1e9


def _mb(v):
    return "-" if v is None else f"{v:.0f}"


def step_table(tok, max_len, data, amp, device, steps, ceil, ceil32):
    """The training step of each config: time, GFLOP/s beside the ceiling of the dtype
    it multiplies in (bf16 under autocast) and beside fp32's, sampling
    speed of the heads, parameters, memory, host syncs. Returns name -> (model, opt,
    step, batch)."""
    # The compiled step is what `train.py` runs on a GPU (--compile auto); its first
    # steps compile (~30 s), which time_steps' warm-up steps absorb.
    names = ("default", "default+compile", "su2018") if device.type == "cuda" else \
        ("default", "default+before", "su2018")
    built, gflops, syncs, rss = {}, {}, {}, {}
    for name in names:
        # Each config's memory: its model, optimizer and first steps, built in turn.
        (built[name], gflops[name]), rss[name] = own_memory_mb(
            lambda: first_steps(name, tok, max_len, amp, device, data, gflops))
        model, opt, step, bs = built[name]
        syncs[name] = host_syncs(step, data[:bs].to(device), device)
    sec = {name: math.inf for name in names}
    for _ in range(ROUNDS):
        for name, (model, opt, step, bs) in built.items():
            sec[name] = min(sec[name], time_steps(step, data, bs, steps, device))
    print(f"{'config':<16} {'batch':>5} {'ms/step':>8} {'lines/s':>9} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'of ceiling':>10} {'of fp32':>7} {'sample lines/s':>14} "
          f"{'params':>8} {'own RSS MB':>11} {'syncs/step':>10}")
    for name, (model, opt, step, bs) in built.items():
        gflop, s = gflops[name], sec[name]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<16} {bs:>5} {s * 1e3:>8.1f} {bs / s:>9.0f} {gflop:>10.2f} "
              f"{gflop / s:>8.0f} {gflop / s / ceil:>10.0%} {gflop / s / ceil32:>7.0%} "
              f"{sample_rate(model, device):>14.0f} {params:>7.2f}M {_mb(rss[name]):>11} "
              f"{'-' if syncs[name] is None else syncs[name]:>10}")
    print(f"(fastest of {ROUNDS} rounds of {steps} steps, the configs taken in turn; previous "
          f"README, on its CPU: default {PREVIOUS['step ms']} ms/step, "
          f"{PREVIOUS['of ceiling']:.0%} of the fp32 ceiling)")
    return built


@torch.no_grad()
def sample_rate(model, device, n=4096):
    """Lines/s of the heads' draft (argmax) from n prior samples, the second of two runs."""
    model.eval()
    z = torch.randn(n, model.cfg.latent, device=device)
    model.decode(z).argmax(-1)
    sync(device)
    t = time.perf_counter()
    model.decode(z).argmax(-1)
    sync(device)
    model.train()
    return n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--corpus", default="tang5")
    p.add_argument("--run", default="runs/tang5", help="a trained run, for the generation "
                   "table (skipped if missing)")
    p.add_argument("--sizes", default="100000,1000000,10000000",
                   help="corpus sizes of the scaling table, comma-separated")
    p.add_argument("--smoke", action="store_true", help="a few of everything, to check "
                   "that the bench runs (the suite runs it on a tiny corpus)")
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    args = p.parse_args()
    args.sizes = [int(n) for n in args.sizes.split(",")]
    torch.manual_seed(0)
    device = resolve_device("auto")
    amp = use_amp("auto", device)
    corpus = load_corpus(args.corpus)
    tok = CharTokenizer.train(corpus.train, VOCAB["chars"])
    data = torch.from_numpy(tok.encode_batch(corpus.train, corpus.max_chars))
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}, bf16 autocast {amp}; "
          f"{args.corpus}: {len(data)} train lines, length {corpus.max_chars}, "
          f"vocab {tok.vocab_size}")
    ceil32 = matmul_ceiling(torch.float32, device)
    # Emulated bf16 (a CPU without AVX-512 BF16 or AMX) would take minutes at 2048^3.
    emulated = device.type == "cpu" and not bf16_is_faster()
    ceil16 = 0.0 if emulated else matmul_ceiling(torch.bfloat16, device)
    print(f"matrix-product ceiling (2048^3): fp32 {ceil32:.0f} GFLOP/s, bf16 "
          f"{'emulated, not timed' if emulated else f'{ceil16:.0f} GFLOP/s'}\n")

    built = step_table(tok, corpus.max_chars, data, amp, device, args.steps,
                       ceil16 if amp else ceil32, ceil32)
    fastest = "default+compile" if "default+compile" in built else "default"
    print(f"\nstep time against batch size ({fastest})")
    print(f"{'batch':>6} {'ms/step':>8} {'lines/s':>9}")
    _, _, step, _ = built[fastest]
    for bs in (32, 64) if args.smoke else (32, 64, 128, 256, 512, 1024):
        sec = time_steps(step, data, bs, max(1 if args.smoke else 5, args.steps // 2), device)
        print(f"{bs:>6} {sec * 1e3:>8.1f} {bs / sec:>9.0f}")

    scaling_table(tok, args.sizes, args.steps, device)

    n, k = (64, 10) if args.smoke else (640, 100)
    print(f"\nIW-NLL, k = {k}, {n} lines in batches of 64 (default config)")
    loop, batched = time_iw(built["default"][0], data, device, n, k)
    print(f"per-line loop (first wave) {loop * 1e3:7.2f} ms/line\n"
          f"batched                    {batched * 1e3:7.2f} ms/line   {loop / batched:.1f}x")

    if not (Path(args.run) / "config.json").exists():
        print(f"\n(no run at {args.run}: generation tables skipped)")
        return
    writing_table(load_run(args.run, device=str(device)), 256 if args.smoke else 4096, ceil32)
    user_table(args.run, device, args.smoke)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def writing_table(run, n, ceil32):
    """Lines/s of writing ``n`` prior samples in-process: the heads alone, the full path
    (heads' draft, refiner), that path with the refiner recomputing the whole line at
    every pass (its lines must be the same), both with the draw before (a Gumbel-max
    over V numbers, every line in one batch: the code before the draw, and before the
    cache), and the default poems' lines now and with the draw before. Then the
    speed-ups, the full path's FLOPs a line and the lines/s the fp32 ceiling ``ceil32``
    would allow them: what no faster code of the same arithmetic can pass."""
    sc, device = for_run(run, SampleConfig()), decoding.device_of(run)
    z = torch.randn(n, run.model.cfg.latent, generator=torch.Generator().manual_seed(0))

    def write(cached=True, chunk=None):
        return lambda: decoding.write_ids(run.model, run.lengths, z, decoding.noise_of(sc), sc,
                                          gen=torch.Generator().manual_seed(1), cached=cached,
                                          chunk=chunk)
    paths = {"heads only (draft argmax)": torch.no_grad()(
                 lambda: run.model.decode(z.to(device)).argmax(-1)),
             "full path, refiner cached": write(),
             "full path, refiner full passes": write(cached=False),
             "cached, the draw before, one batch": write(chunk=n),
             "full passes, the draw before, one batch": write(cached=False, chunk=n)}
    best, ids = {}, {}
    for _ in range(3):  # the fastest of 3 rounds, the paths taken in turn
        for name, fn in paths.items():
            with draw_before() if "draw before" in name else contextlib.nullcontext():
                ids[name], sec = timed(fn, device)
            best[name] = min(best.get(name, sec), sec)
    rate = {name: n / sec for name, sec in best.items()}
    if run.chain is not None:
        rate.update(poem_rows(run, sc, max(1, n // 256), device))
    same = torch.equal(ids["full path, refiner cached"], ids["full path, refiner full passes"])
    print(f"\nwriting lines in-process ({n} prior samples, the fastest of 3 rounds; cached "
          f"and full-pass lines {'identical' if same else 'DIFFER'})")
    print(f"{'path':<44} {'lines/s':>9}")
    for name, r in rate.items():
        print(f"{name:<44} {r:>9.0f}")
    for before in ("cached", "full passes"):
        up = rate["full path, refiner cached"] / rate[f"{before}, the draw before, one batch"]
        print(f"{f'full path speed-up over {before} before':<44} {up:>8.1f}x")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        decoding.write_ids(run.model, run.lengths, z[:256], decoding.noise_of(sc), sc,
                           gen=torch.Generator().manual_seed(1))
    mflop = fc.get_total_flops() / min(n, 256) / 1e6
    print(f"full path, counted: {mflop:.1f} MFLOP a line; at the fp32 ceiling "
          f"({ceil32:.0f} GFLOP/s) at most {ceil32 * 1e3 / mflop:.0f} lines/s")


@contextlib.contextmanager
def draw_before():
    """Draws as they were before (``decoding.gumbel_max``: noise for all V entries of a
    row), kept here to time against; with one chunk for every line, write_ids then
    writes the characters the code before wrote (with ``cached=False``, the code before
    the refiner's cache: the speed issue's baseline)."""
    real = decoding.draw_one
    decoding.draw_one = decoding.gumbel_max
    try:
        yield
    finally:
        decoding.draw_one = real


def poem_rows(run, sc, n_poems, device):
    """The default poems' lines/s (64 candidates a line): now, and with the draw before
    and all of a batch's candidates at once (full passes cannot write them: the poem
    refiner exists only as a cached writer)."""
    out, real = [], decoding.write_ids
    for now in (True, False):
        decoding.write_ids = lambda *a, **k: real(*a, **k, chunk=None if now else 2 ** 30)
        try:
            with contextlib.nullcontext() if now else draw_before():
                _, sec = timed(lambda: poem.chain_poems(run, n_poems, sc,
                                                        torch.Generator().manual_seed(2), 64),
                               device)
        finally:
            decoding.write_ids = real
        out.append((f"poems, 64 candidates a line, {'now' if now else 'the draw before'}",
                    n_poems * run.chain.cfg.lines / sec))
    return out


def user_table(run, device, smoke):
    """generate.py as a user runs it: the default poems and --independent lines."""
    print(f"\ngenerate.py --run {run} --num N --device {device} > file (its own process "
          f"and its own peak RSS; previous README: {PREVIOUS['generate.py lines/s (lines)']} "
          "lines/s for --independent lines)")
    print(f"{'command':<28} {'poems':>6} {'lines':>7} {'first poem s':>12} {'lines/s':>8} "
          f"{'peak RSS MB':>11}")
    cases = [((), 8), ((), 64), (("--independent",), 250), (("--independent",), 2_500)]
    for extra, num in cases[:1] + cases[2:3] if smoke else cases:
        t_first, lines, rate, rss = time_generation(run, num, device, extra)
        name = "generate.py " + " ".join(extra)
        rss = f"{rss:.0f}" if rss else "-"  # a run too short to be read while it wrote
        print(f"{name:<28} {num:>6} {lines:>7} {t_first:>12.2f} {rate:>8.0f} {rss:>11}")

if __name__ == "__main__":
    main()
