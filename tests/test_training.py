import copy
import json

import pytest
import torch

from textvae.decoding import SampleConfig
from textvae.sampling import complete, interpolate, reconstruct, sample
from textvae.judge import chars_changed
from textvae.run import load_run, save_weights

from .conftest import POEM_LINES, copy_run_files


def test_overfitting_eight_lines_reconstructs_them_exactly(overfit_run):
    assert reconstruct(overfit_run, POEM_LINES) == POEM_LINES


def test_interpolation_ends_are_the_inputs_and_the_middle_moves_between_them(overfit_run):
    a, b = "白日依山尽", "床前明月光"
    vocab = set("".join(POEM_LINES))
    for how in ("linear", "spherical"):
        path = interpolate(overfit_run, a, b, steps=6, how=how)
        assert len(path) == 6 and path[0] == a and path[-1] == b
        assert all(len(s) == 5 and set(s) <= vocab for s in path), path
        # The first step away from a is nearer a than b, the last step nearer b.
        assert chars_changed(path[1], a) <= chars_changed(path[1], b), path
        assert chars_changed(path[-2], b) <= chars_changed(path[-2], a), path


def test_save_then_load_gives_identical_outputs(overfit_run, tmp_path):
    # Weights that exist only in memory (the training run's, nudged), saved and loaded
    # back: a save that dropped or mangled a tensor would change the outputs.
    model = copy.deepcopy(overfit_run.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = copy_run_files(overfit_run.dir, tmp_path / "run")
    save_weights(folder, model)
    again = load_run(folder)
    idx = torch.tensor([overfit_run.tokenizer.encode(s, 5) for s in POEM_LINES])
    with torch.no_grad():
        mu = model.encode(idx)[0]
        assert torch.equal(again.model.encode(idx)[0], mu)
        assert torch.equal(again.model.decode(mu), model.decode(mu))
        noise, draft = torch.full((8,), 0.5), model.decoder.features(mu)
        assert torch.equal(again.model.refiner(idx, mu, noise, draft),
                           model.refiner(idx, mu, noise, draft))
    assert not torch.equal(model.decode(mu), overfit_run.model.decode(mu))


def test_samples_are_reproducible_and_well_formed(overfit_run):
    a = sample(overfit_run, 20, SampleConfig(seed=1, top_k=5))
    assert a == sample(overfit_run, 20, SampleConfig(seed=1, top_k=5))
    assert all(len(s) == 5 and "□" not in s for s in a)


@pytest.mark.parametrize("pattern,line", [("白日依山_", "白日依山尽"), ("_前明月光", "床前明月光"),
                                          ("疑是__霜", "疑是地上霜"), ("处处__鸟", "处处闻啼鸟")])
def test_complete_fills_blanks_with_the_memorised_line(overfit_run, pattern, line):
    # Only one of the eight lines fits each pattern: the search over z and the refiner
    # must find its missing characters (keeping the given ones alone would not).
    assert complete(overfit_run, pattern) == [line]


def test_run_folder_is_self_contained(overfit_run):
    names = {p.name for p in overfit_run.dir.iterdir()}
    assert {"config.json", "tokenizer.model", "model.safetensors", "metrics.jsonl",
            "checkpoints"} <= names
    config = json.loads((overfit_run.dir / "config.json").read_text())
    assert config["model"]["max_len"] == 5 and config["data"]["form"]["lengths"] == [5]


def test_long_lines_take_fewer_lines_a_step(tmp_path, monkeypatch):
    # A step holds at most batch_chars positions: lines of 20 characters, 50 positions
    # a step, so 2 lines a step where 8 lines of 5 would fit.
    from textvae.config import TrainConfig
    from textvae.model import TextVAE, VAEConfig
    from textvae.anneal import schedule_of
    from textvae.trainer import train
    from .conftest import write_corpus
    real_loss, sizes = TextVAE.loss, []

    def recording(self, idx, *args, **kwargs):
        if self.training:
            sizes.append(len(idx))
        return real_loss(self, idx, *args, **kwargs)
    monkeypatch.setattr(TextVAE, "loss", recording)
    lines = [(s * 4)[:19 + i % 2] for i, s in enumerate(POEM_LINES)]  # 19 and 20 long
    corpus = write_corpus(tmp_path / "c.txt", lines)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), epochs=1, min_steps=0,
                     batch_size=8, batch_chars=50, iw_samples=0, amp="off")
    mc = VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8, refiner_dim=8,
                   refiner_heads=2)
    train(tc, mc, log=lambda *a: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    n = config["data"]["counts"]["train"]
    assert sizes == [2] * (n // 2) + [n % 2] * (n % 2)    # one epoch, 2 lines a step
    assert schedule_of(config).total_steps == len(sizes)  # as the trainer counted
    assert TrainConfig().lines_per_step(5) == TrainConfig().lines_per_step(7) == 256
    assert TrainConfig(batch_chars=0).lines_per_step(60) == 256


def test_a_nan_loss_stops_the_run_and_the_newest_checkpoint_is_from_good_steps(
        tmp_path, monkeypatch):
    from textvae.config import TrainConfig
    from textvae.errors import UserError
    from textvae.model import TextVAE, VAEConfig
    from textvae.trainer import train
    from .conftest import write_corpus
    real_loss, calls = TextVAE.loss, []

    def loss_turning_nan_at_call_27(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) >= 27:  # NaN from step 26 (0-based), between two checkpoints
                out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(TextVAE, "loss", loss_turning_nan_at_call_27)
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), max_steps=100,
                     batch_size=4, eval_every=10, ckpt_every=10, iw_samples=0, amp="off")
    mc = VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8, refiner_dim=8,
                   refiner_heads=2)
    with pytest.raises(UserError, match="between steps 20 and 30"):
        train(tc, mc, log=lambda *a: None)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert ckpts[-1].name == "step-00000020.pt"
    state = torch.load(ckpts[-1], weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())


class _BackwardFails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("InductorError: no C++ compiler found\nmore detail")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_step_that_fails_to_compile_is_taken_plain_and_the_run_goes_on(
        tmp_path, monkeypatch, where):
    """torch.compile compiles the forward at its first call and the backward at its
    first use: a failure in either falls back to the plain step, with one warning."""
    import textvae.trainer as trainer
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from .conftest import write_corpus

    def broken_compiler(loss_fn):
        def fails(*args):
            if where == "forward":
                raise RuntimeError("InductorError: no C++ compiler found\nmore detail")
            out = loss_fn(*args)
            return {**out, "loss": _BackwardFails.apply(out["loss"])}
        return fails
    import textvae.device as device
    monkeypatch.setattr(device, "compiled", broken_compiler)
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), max_steps=12,
                     batch_size=4, eval_every=6, ckpt_every=6, iw_samples=0, amp="off",
                     compile="on", device="cpu")
    mc = VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8, refiner_dim=8,
                   refiner_heads=2)
    said = []
    out = trainer.train(tc, mc, log=said.append)
    warnings = [s for s in said if "torch.compile failed" in s]
    assert warnings == ["warning: torch.compile failed (RuntimeError: InductorError: no C++ "
                        "compiler found); training on without it (--compile off skips "
                        "the attempt)"]
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6, 12]


def test_the_run_keeps_the_weights_of_its_best_validation_record(tmp_path, monkeypatch):
    # Validation losses made up per record: the best is the second (step 20), and it
    # stays the run's weights through later, worse records and across a resume.
    from safetensors.torch import load_file
    import textvae.trainer as trainer
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.run import read_metrics, weights_step
    from .conftest import write_corpus
    real_validate, losses = trainer.validate, iter([5.0, 3.0, 4.0, 6.0])

    def made_up(*args, **kwargs):
        return {**real_validate(*args, **kwargs), "nelbo": next(losses), "ref": 0.0}
    monkeypatch.setattr(trainer, "validate", made_up)
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)
    out = tmp_path / "run"
    tc = TrainConfig(corpus=str(corpus), out=str(out), max_steps=30, batch_size=4,
                     eval_every=10, ckpt_every=10, keep_ckpts=10, iw_samples=0, amp="off")
    mc = VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8, refiner_dim=8,
                   refiner_heads=2)
    trainer.train(tc, mc, log=lambda *a: None)
    trainer.train(TrainConfig(max_steps=40), None, resume=str(out), given={"max_steps": 40},
                  log=lambda *a: None)
    records = read_metrics(out)
    assert [r["step"] for r in records if r.get("kept")] == [10, 20]
    assert weights_step(records) == 20
    kept = load_file(out / "model.safetensors")
    step20 = torch.load(out / "checkpoints" / "step-00000020.pt", weights_only=True)["model"]
    step40 = torch.load(out / "checkpoints" / "step-00000040.pt", weights_only=True)["model"]
    assert all(torch.equal(kept[k], step20[k]) for k in kept)
    assert not all(torch.equal(kept[k], step40[k]) for k in kept)


def test_without_keep_best_the_run_holds_the_last_steps_weights(tmp_path):
    from safetensors.torch import load_file
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.trainer import train
    from .conftest import write_corpus
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)
    out = tmp_path / "run"
    tc = TrainConfig(corpus=str(corpus), out=str(out), max_steps=20, batch_size=4,
                     eval_every=10, ckpt_every=10, iw_samples=0, amp="off", keep_best=False)
    train(tc, VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8, refiner_dim=8,
                        refiner_heads=2), log=lambda *a: None)
    kept = load_file(out / "model.safetensors")
    last = torch.load(out / "checkpoints" / "step-00000020.pt", weights_only=True)["model"]
    assert all(torch.equal(kept[k], last[k]) for k in kept)


@pytest.mark.parametrize("minutes, steps", [(1e-4, 1), (0, 120)])
def test_a_time_budget_the_planned_steps_overrun_trains_what_fits(tmp_path, minutes, steps):
    # 6 ms of budget is spent by the first step, long before the pace is measured: the
    # run stops there, and config.json says so; --minutes 0 trains the planned 120.
    import textvae.trainer as trainer
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from textvae.anneal import schedule_of
    from textvae.run import read_metrics, read_saved_config
    from .conftest import write_corpus
    assert trainer.BUDGET_PROBE[1] == 50
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)
    out = tmp_path / "run"
    tc = TrainConfig(corpus=str(corpus), out=str(out), min_steps=120, minutes=minutes,
                     batch_size=4, eval_every=40, ckpt_every=40, iw_samples=0, amp="off")
    said = []
    trainer.train(tc, VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8,
                                refiner_dim=8, refiner_heads=2), log=said.append)
    assert read_metrics(out)[-1]["step"] == steps
    config = read_saved_config(out)
    assert schedule_of(config).total_steps == steps
    assert config["train"]["max_steps"] == (steps if minutes else 0)
    assert any("spent at step 1, 1 of the planned 120 steps fit" in s
               for s in said) == bool(minutes)
    # a cut run keeps the planned cycle length (60 steps): 1 step holds one cycle
    assert config["train"]["kl_cycles"] == (1 if minutes else 2)


def _train_on_a_clock(tmp_path, monkeypatch, seconds_of_step, **settings):
    """A 3-minute budget on a made-up clock: each step costs ``seconds_of_step(step)``.
    Returns the run folder, the log's lines, each refit's new length, and the clock."""
    from types import SimpleNamespace
    import textvae.trainer as trainer
    from textvae.config import TrainConfig
    from textvae.model import VAEConfig
    from .conftest import write_corpus
    clock, real_step, refits = {"t": 0.0}, trainer.Trainer.train_step, []
    real_save = trainer.save_train_settings

    def timed_step(self, *args, **kwargs):
        clock["t"] += seconds_of_step(self.step)
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer.Trainer, "train_step", timed_step)
    monkeypatch.setattr(trainer, "time", SimpleNamespace(time=lambda: clock["t"]))
    monkeypatch.setattr(trainer, "save_train_settings",
                        lambda out, **kw: refits.append(kw["max_steps"]) or real_save(out, **kw))
    out = tmp_path / "run"
    tc = TrainConfig(corpus=str(write_corpus(tmp_path / "c.txt", POEM_LINES)), out=str(out),
                     minutes=3, batch_size=4, iw_samples=0, amp="off", **settings)
    said = []
    trainer.train(tc, VAEConfig(emb_dim=8, enc_hidden=8, latent=4, dec_hidden=8,
                                refiner_dim=8, refiner_heads=2), log=said.append)
    return out, said, refits, clock["t"]


def test_a_pace_that_slows_mid_run_cuts_the_run_within_its_budget(tmp_path, monkeypatch):
    # A made-up clock: 1 s a step up to step 60, then 10 s. At step 50 the 180 s budget
    # holds the planned 120 steps; five slow steps later (110 s) the median pace is 10 s
    # and the run is cut there to 71 steps, 170 s (97% of 180 is 174.6). At the next
    # record, step 80, 260 s would have gone.
    from textvae.run import read_metrics, read_saved_config
    out, said, _, t = _train_on_a_clock(tmp_path, monkeypatch,
                                        lambda step: 1.0 if step < 60 else 10.0,
                                        min_steps=120, eval_every=40, ckpt_every=40)
    assert [r["step"] for r in read_metrics(out)] == [40, 71]
    assert t == 170.0
    assert read_saved_config(out)["train"]["max_steps"] == 71
    assert [s.strip() for s in said if "--minutes" in s] == [
        "--minutes 3: at 10.00 s a step, 71 of the planned 120 steps fit, in 1 KL "
        "cycle(s) (--minutes 0 trains them all)"]


def test_steps_a_passing_slowdown_cut_are_given_back_at_the_next_record(tmp_path,
                                                                          monkeypatch):
    # 1 s a step, but 3 s for steps 60-69 (another program ran): five slow steps in,
    # the run is cut to 98 steps; at the record of step 80 the pace is 1 s again and the
    # planned 120 fit in the 180 s budget (140 s in all), so the run trains them.
    from textvae.run import read_metrics, read_saved_config
    out, said, refits, t = _train_on_a_clock(
        tmp_path, monkeypatch, lambda step: 3.0 if 60 <= step < 70 else 1.0,
        min_steps=120, eval_every=40, ckpt_every=40)
    assert [r["step"] for r in read_metrics(out)] == [40, 80, 120]
    assert t == 140.0 and read_saved_config(out)["train"]["max_steps"] == 120
    assert refits == [98, 120]
    # the log tells the cut; giving back a fifth of the run is the bar's news, not the log's
    assert [s.split(": ")[1].split(",")[1].strip() for s in said if "--minutes" in s] == [
        "98 of the planned 120 steps fit"]


def test_a_pace_that_drifts_refits_often_but_the_log_tells_only_real_news(tmp_path,
                                                                          monkeypatch):
    # From step 50 each step takes 0.01 s longer than the one before, so the pace keeps
    # overrunning the 180 s and the run is refitted many times, a few steps each; the
    # log gives the first length, none of the small refits, and its closing line the
    # length the run did train.
    from textvae.run import read_saved_config
    out, said, refits, t = _train_on_a_clock(
        tmp_path, monkeypatch, lambda step: 1.0 + 0.01 * max(step - 50, 0),
        min_steps=200, eval_every=1000, ckpt_every=1000)
    told = [int(s.split(", ")[1].split(" of ")[0]) for s in said if "--minutes" in s]
    assert len(refits) > 5 and len(told) < len(refits) / 2
    assert told[0] == refits[0] and told[-1] != refits[-1]
    assert all(abs(b - a) >= a / 4 for a, b in zip(told, told[1:]))
    assert read_saved_config(out)["train"]["max_steps"] == refits[-1]
    assert t <= 180
    assert any(s.startswith(f"trained {refits[-1]} steps") and f"({told[-1]} were last said"
               in s for s in said)


@pytest.mark.parametrize("given, saved", [(0.0, 0.5), (0.8, 0.8)])
def test_the_kl_weight_is_the_recipes_unless_given(tmp_path, monkeypatch, given, saved):
    from textvae.config import TrainConfig
    from textvae.corpora import default_beta
    from textvae.model import VAEConfig
    from textvae.run import read_saved_config
    from textvae.anneal import schedule_of
    from textvae.run import start_run
    from .conftest import write_corpus
    corpus = write_corpus(tmp_path / "c.txt", POEM_LINES)   # a user's file: 0.5
    tc = TrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), beta_max=given)
    config = read_saved_config(start_run(tc, VAEConfig())[0])
    assert config["train"]["beta_max"] == pytest.approx(saved)
    assert schedule_of(config).beta_max == pytest.approx(saved)  # the plot, a resume
    assert (default_beta("tang5"), default_beta("tang7")) == (0.5, 0.35)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tang7").write_text("".join(x + "\n" for x in POEM_LINES), encoding="utf-8")
    assert default_beta("tang7") == 0.5                     # a file named like a recipe


def test_a_cpu_trains_in_bf16_only_where_it_multiplies_bf16_much_faster():
    # The decision is timed, not read from the CPU's flags: emulated bf16 is slower.
    from textvae.device import bf16_is_faster
    for fp32, bf16, expected in ((2.0, 1.0, True), (1.0, 1.0, False), (1.0, 2.0, False)):
        assert bf16_is_faster(lambda dtype, n: {torch.float32: fp32, torch.bfloat16: bf16}[
            dtype]) == expected
    # Emulated, a small product says so: the full size, half a minute there, is not timed.
    asked = []

    def emulated(dtype, n):
        asked.append(n)
        return 250.0 if dtype == torch.bfloat16 else 1.0
    assert bf16_is_faster(emulated) is False and asked == [128, 128]


def test_the_hour_preset_gives_two_thirds_of_an_hour_to_the_poem_model_and_flags_win():
    from textvae.config import configs
    tc, mc = configs("hour")
    assert (tc.minutes, tc.epochs, tc.poem_minutes) == (60.0, 5, 40.0)
    assert mc.refiner_layers == configs()[1].refiner_layers     # the default model
    tc, _ = configs("hour", {"poem_minutes": 30.0})
    assert (tc.minutes, tc.poem_minutes) == (60.0, 30.0)


def test_the_long_preset_gives_the_poem_model_what_its_line_model_leaves_of_three_hours():
    from textvae.config import configs
    from textvae.poemfit import poem_seconds
    tc, mc = configs("long")
    assert mc.refiner_layers == configs()[1].refiner_layers     # the default model
    assert tc.line_seconds() == 90 * 60                         # at most half the budget
    settings = {"minutes": tc.minutes, "poem_minutes": tc.poem_minutes}
    assert poem_seconds(settings, [{"elapsed_s": 25 * 60}]) == 150 * 60
    assert poem_seconds(settings, [{"elapsed_s": 40 * 60}]) == 140 * 60
